"""How each checkpoint format stores each family (what `fp4check synth --format` writes).

- modelopt: what NVIDIA's DeepSeek-V4 NVFP4 releases contain (spec §3.5): routed experts NVFP4 with
  ModelOpt names and decode scales; attention projections, shared experts and MTP projections FP8
  e4m3 with 128x128 e8m0 block scales, as in the original release; MTP experts MXFP4 (excluded from
  the NVFP4 conversion); everything else BF16/FP32.
- compressed-tensors: NVFP4 (`weight_packed`, encode `*_global_scale`) for routed and shared experts
  and the attention projections, like community exports; the MTP block stays BF16.
- deepseek: the original release: FP8 block weights and MXFP4 routed experts (int8 + e8m0 per 32).
- bf16: every weight unquantized (fp32 parameters stay fp32).
"""

from __future__ import annotations

from typing import Any

import torch

from fp4check.layout import FamilySpec
from fp4check.references.fp8 import fp8_block_quantize
from fp4check.references.mxfp4 import mxfp4_quantize
from fp4check.references.nvfp4 import (
    finite_amax,
    global_decode_scale,
    global_encode_scale,
    nvfp4_quantize,
)

SYNTH_PRODUCER_VERSION = "synthetic"

# role -> storage, per format
_STORAGE = {
    "modelopt": {
        "expert": "nvfp4-modelopt",
        "attn-linear": "fp8",
        "shared": "fp8",
        "mtp-linear": "fp8",
        "mtp-expert": "mxfp4",
    },
    "compressed-tensors": {
        "expert": "nvfp4-ct",
        "attn-linear": "nvfp4-ct",
        "shared": "nvfp4-ct",
        "mtp-linear": "bf16",
        "mtp-expert": "bf16",
    },
    "deepseek": {"expert": "mxfp4", "attn-linear": "fp8", "shared": "fp8", "mtp-linear": "fp8", "mtp-expert": "mxfp4"},
    "bf16": {},
}


def storage_of(spec: FamilySpec, fmt: str) -> str:
    """The storage of one family in one format: nvfp4-modelopt | nvfp4-ct | fp8 | mxfp4 | bf16 | fp32 | int64.

    fp32 and int64 families are bare parameters (no `.weight` suffix); all others store `.weight`.
    """
    if spec.role in ("fp32", "int64", "bf16"):
        return spec.role
    return _STORAGE[fmt].get(spec.role, "bf16")


def encode(
    spec: FamilySpec,
    values: torch.Tensor,
    storage: str,
    input_amax: float | None,
    global_amax: float | None = None,
) -> dict[str, torch.Tensor]:
    """Stored members {suffix: tensor} of one family ('' for a bare parameter).

    global_amax overrides the amax the NVFP4 global weight scale is computed from (a valid encoding
    with a deliberately different global scale, for the w1-w3-scale-mismatch defect).
    """
    if storage == "fp32":
        return {"": values.to(torch.float32)}
    if storage == "int64":
        return {"": values.to(torch.int64)}
    if storage == "bf16":
        return {"weight": values.to(torch.bfloat16)}
    if storage == "fp8":
        w, s = fp8_block_quantize(values, "ue8m0")
        return {"weight": w, "scale": s.view(torch.float8_e8m0fnu)}
    if storage == "mxfp4":
        packed, s = mxfp4_quantize(values)
        return {"weight": packed.view(torch.int8), "scale": s.view(torch.float8_e8m0fnu)}
    amax = torch.tensor(global_amax if global_amax is not None else float(finite_amax(values)), dtype=torch.float32)
    in_amax = torch.tensor(input_amax if input_amax else 1.0, dtype=torch.float32)
    if storage == "nvfp4-modelopt":
        dec = global_decode_scale(amax)
        q = nvfp4_quantize(values, dec)
        return {
            "weight": q.packed,
            "weight_scale": q.scales,
            "weight_scale_2": dec.value.reshape(()),
            "input_scale": global_decode_scale(in_amax).value.reshape(()),
        }
    if storage == "nvfp4-ct":
        enc = global_encode_scale(amax)
        q = nvfp4_quantize(values, enc)
        return {
            "weight_packed": q.packed,
            "weight_scale": q.scales,
            "weight_global_scale": enc.value.reshape(1),
            "input_global_scale": global_encode_scale(in_amax).value.reshape(1),
        }
    raise ValueError(f"unknown storage {storage!r}")


def stored_layout(spec: FamilySpec, storage: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{member: (safetensors dtype, shape)} that `encode` writes for a family, without computing values."""
    shape = spec.shape
    if storage in ("fp32", "int64"):
        return {"": ("F32" if storage == "fp32" else "I64", shape)}
    if storage == "bf16":
        return {"weight": ("BF16", shape)}
    n, k = shape
    if storage == "fp8":
        return {"weight": ("F8_E4M3", shape), "scale": ("F8_E8M0", (-(-n // 128), -(-k // 128)))}
    if storage == "mxfp4":
        return {"weight": ("I8", (n, k // 2)), "scale": ("F8_E8M0", (n, k // 32))}
    if storage == "nvfp4-modelopt":
        return {
            "weight": ("U8", (n, k // 2)),
            "weight_scale": ("F8_E4M3", (n, k // 16)),
            "weight_scale_2": ("F32", ()),
            "input_scale": ("F32", ()),
        }
    if storage == "nvfp4-ct":
        return {
            "weight_packed": ("U8", (n, k // 2)),
            "weight_scale": ("F8_E4M3", (n, k // 16)),
            "weight_global_scale": ("F32", (1,)),
            "input_global_scale": ("F32", (1,)),
        }
    raise ValueError(f"unknown storage {storage!r}")


def quantization_config(fmt: str, num_layers: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(config.json quantization_config, hf_quant_config.json) for a format."""
    fp8 = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "scale_fmt": "ue8m0",
        "weight_block_size": [128, 128],
    }
    if fmt == "deepseek":
        return {**fp8, "expert_dtype": "fp4"}, None
    if fmt == "modelopt":
        layers = {f"layers.{i}.ffn.experts": {"quant_algo": "NVFP4", "group_size": 16} for i in range(num_layers)}
        ignore = ["*.attn.*", "*.ffn.shared_experts.*", "head", "mtp.*"]
        producer = {"name": "modelopt", "version": SYNTH_PRODUCER_VERSION}
        qc = {
            **fp8,
            "quant_algo": "MIXED_PRECISION",
            "moe_quant_algo": "NVFP4",
            "group_size": 16,
            "producer": producer,
            "quantized_layers": layers,
            "ignore": ignore,
        }
        hf = {
            "producer": producer,
            "quantization": {
                "quant_algo": "MIXED_PRECISION",
                "kv_cache_quant_algo": "FP8",
                "group_size": 16,
                "quantized_layers": layers,
                "exclude_modules": ignore,
            },
        }
        return qc, hf
    if fmt == "compressed-tensors":
        scheme = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16, "symmetric": True}
        qc = {
            "quant_method": "compressed-tensors",
            "format": "nvfp4-pack-quantized",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {**scheme, "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"},
                    "input_activations": {**scheme, "dynamic": "local"},
                }
            },
            "ignore": ["head", "re:.*compressor.*", "re:.*indexer\\.weights_proj", "re:.*ffn\\.gate$", "re:mtp\\..*"],
        }
        return qc, None
    return None, None
