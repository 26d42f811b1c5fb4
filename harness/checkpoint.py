"""A DeepSeek-V4 checkpoint directory, opened lazily.

`config.json`, then `model.safetensors.index.json` (or a single `model.safetensors`), and optionally
`hf_quant_config.json`. Opening reads the config and the index only; a shard's header is read the first
time one of its tensors is needed, and a shard that holds nothing needed is never opened. Every byte
read is counted (`bytes_read`).

Tensor formats are detected per family from the member names and dtypes found in the shard headers,
never from file names and never from the declared quantization config alone (a release can mix
formats: NVIDIA's NVFP4 DeepSeek-V4 keeps MTP experts in MXFP4, vllm#49133).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from fp4check.config import ModelConfig, load_config, read_json
from fp4check.errors import InputError
from fp4check.layout import FamilySpec, layer_of, model_families, split_member
from fp4check.names import Slice, is_transformers_name, to_native
from fp4check.safetensors_io import TensorEntry, gc_paused, read_header, read_tensor

if TYPE_CHECKING:  # torch and the codecs load with the first tensor, so header-only commands start fast
    import torch

    from fp4check.references.nvfp4 import GlobalScale, NVFP4Tensor

NVFP4_BLOCK = 16  # == references.nvfp4.NVFP4_BLOCK
MXFP4_BLOCK = 32  # == references.mxfp4.MXFP4_BLOCK

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

NVFP4_MODELOPT = "nvfp4-modelopt"
NVFP4_CT = "nvfp4-ct"
FP8_BLOCK = "fp8-block"
MXFP4 = "mxfp4"
DENSE_FORMATS = {"BF16": "bf16", "F32": "fp32", "F16": "fp16", "I64": "int64", "I32": "int32"}
FORMAT_NAMES = {
    NVFP4_MODELOPT: "NVFP4 (ModelOpt: weight, weight_scale, weight_scale_2 and input_scale decode scales)",
    NVFP4_CT: "NVFP4 (compressed-tensors: weight_packed, weight_scale, *_global_scale encode scales)",
    FP8_BLOCK: "FP8 e4m3 with 128x128 block scales",
    MXFP4: "MXFP4 (e2m1 + e8m0 per 32)",
}


class Source(NamedTuple):
    key: str  # the stored tensor name
    shard: str  # shard file name, relative to the checkpoint directory
    slice: Slice | None = None


def detect_format(members: dict[str, TensorEntry]) -> str:
    """The storage format of one family from its members' names and dtypes ("unknown" if none fits)."""
    m = {k: v.dtype for k, v in members.items()}
    if "weight_packed" in m and "weight_global_scale" in m:
        return NVFP4_CT
    if "weight_scale_2" in m and m.get("weight") == "U8" and m.get("weight_scale") == "F8_E4M3":
        return NVFP4_MODELOPT
    scale = m.get("scale", m.get("weight_scale_inv"))
    if m.get("weight") == "F8_E4M3" and scale in ("F8_E8M0", "U8", "F32"):
        return FP8_BLOCK
    if m.get("weight") in ("I8", "U8") and m.get("scale") in ("F8_E8M0", "U8"):
        return MXFP4
    if set(m) <= {"weight", ""} and len(m) == 1:
        return DENSE_FORMATS.get(next(iter(m.values())), "unknown")
    return "unknown"


@dataclass
class Weight:
    """One family loaded: the stored members, and the format-aware view of them."""

    family: str
    format: str
    shape: tuple[int, ...]  # logical shape
    parts: dict[str, torch.Tensor]
    nvfp4: NVFP4Tensor | None = None
    input_scale: GlobalScale | None = None  # the activation global scale, in the convention stored
    nbytes: int = field(default=0)

    def dequantize(self) -> torch.Tensor:
        """float32 values with the logical shape (bf16/fp32 params are returned as float32)."""
        from fp4check.references.fp8 import fp8_block_dequantize
        from fp4check.references.mxfp4 import mxfp4_dequantize

        p = self.parts
        if self.nvfp4 is not None:
            return self.nvfp4.dequantize()
        if self.format == FP8_BLOCK:
            return fp8_block_dequantize(p["weight"], p.get("scale", p.get("weight_scale_inv")))
        if self.format == MXFP4:
            return mxfp4_dequantize(p["weight"], p["scale"])
        return next(iter(p.values())).float()


def _scalar_fp32(t: torch.Tensor, key: str) -> torch.Tensor:
    import torch

    if t.dtype != torch.float32 or t.numel() != 1:
        raise InputError(f"{key} must be one float32 value, got {t.dtype} of shape {tuple(t.shape)}")
    return t.reshape(())


class Checkpoint:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(
                f"checkpoint directory {self.path} does not exist: pass --checkpoint DIR, "
                "or omit it to use the built-in tiny checkpoint"
            )
        if not self.path.is_dir():
            raise InputError(f"{self.path} is not a directory: --checkpoint takes the checkpoint directory")
        self.config: ModelConfig = load_config(self.path)
        self.device: str | None = None  # where tensors go once read ("cuda": packed, before any decode)
        self.bytes_read = 0
        self.shards_opened: list[str] = []
        self._headers: dict[str, dict[str, TensorEntry]] = {}
        index_path, single = self.path / INDEX_FILE, self.path / SINGLE_FILE
        if index_path.is_file():
            with gc_paused():
                index = read_json(index_path)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise InputError(f"{index_path} has no weight_map: re-download the index")
            for shard in sorted(set(weight_map.values())):
                if not (self.path / shard).is_file():
                    raise InputError(
                        f"{index_path} names shard {shard}, which is missing: download it or fix the index"
                    )
            stored = weight_map
            self.index_file = index_path
        elif single.is_file():
            stored = {k: SINGLE_FILE for k in self._header(SINGLE_FILE)}
            self.index_file = None
        else:
            raise InputError(f"{self.path} has neither {INDEX_FILE} nor {SINGLE_FILE}: not a safetensors checkpoint")
        self.shard_files = sorted(set(stored.values()))
        self.naming = "transformers" if any(is_transformers_name(k) for k in stored) else "deepseek"
        with gc_paused():
            self._sources = self._map_names(stored)
            self._members: dict[str, dict[str, str]] = defaultdict(dict)
            for native in self._sources:
                fam, member = split_member(native)
                self._members[fam][member] = native
        self._specs: dict[str, FamilySpec] | None = None

    # --- names and headers ----------------------------------------------------------------------

    def _map_names(self, stored: dict[str, str]) -> dict[str, Source]:
        if self.naming == "deepseek":
            return {k: (k, shard, None) for k, shard in stored.items()}  # Source fields, built as plain tuples
        cfg = self.config
        fused_shapes = {
            "gate_up_proj": (cfg.n_routed_experts, 2 * cfg.moe_intermediate_size, cfg.hidden_size),
            "down_proj": (cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size),
        }
        out = {}
        for key, shard in stored.items():
            shape = fused_shapes.get(key.rsplit(".", 1)[-1]) if ".mlp.experts." in key else None
            for native, sl in to_native(key, shape):
                out[native] = Source(key, shard, sl)
        return out

    def _header(self, shard: str) -> dict[str, TensorEntry]:
        if shard not in self._headers:
            entries, header_bytes = read_header(self.path / shard)
            self._headers[shard] = entries
            self.bytes_read += header_bytes
            self.shards_opened.append(shard)
        return self._headers[shard]

    def names(self) -> list[str]:
        """Every native tensor name in the checkpoint."""
        return list(self._sources)

    def families(self) -> list[str]:
        return list(self._members)

    def spec(self, family: str) -> FamilySpec | None:
        if self._specs is None:
            self._specs = model_families(self.config)
        return self._specs.get(family)

    def entry(self, name: str) -> tuple[TensorEntry, Slice | None]:
        src = self._sources.get(name)
        if src is None:
            raise InputError(
                f"tensor {name} is missing from {self.path}: the checkpoint is incomplete for this model config"
            )
        key, shard, sl = src
        header = self._header(shard)
        if key not in header:
            raise InputError(f"{shard} does not hold {key}, though the index says so: fix the index")
        return header[key], sl

    def tensor(self, name: str) -> torch.Tensor:
        entry, sl = self.entry(name)
        if sl is None:
            t, n = read_tensor(entry)
        else:
            t, n = read_tensor(entry, sl.offset, sl.shape)
        self.bytes_read += n
        return t if self.device is None else t.to(self.device)

    def member_entries(self, family: str) -> dict[str, TensorEntry]:
        members = self._members.get(family)
        if not members:
            raise InputError(
                f"tensor family {family} is missing from {self.path}: "
                "the checkpoint is incomplete for this model config"
            )
        out = {}
        for member, native in members.items():
            key, shard, sl = self._sources[native]
            header = self._headers.get(shard) or self._header(shard)
            entry = header.get(key)
            if entry is None:
                raise InputError(f"{shard} does not hold {key}, though the index says so: fix the index")
            if sl is not None:  # a slice of a fused tensor: report the slice's shape and size
                nbytes = math.prod(sl.shape) * entry.itemsize
                entry = TensorEntry(
                    entry.name, entry.dtype, sl.shape, entry.start + sl.offset * entry.itemsize, nbytes, entry.path
                )
            out[member] = entry
        return out

    def family_format(self, family: str) -> str:
        return detect_format(self.member_entries(family))

    def check_family(self, family: str, entries: dict[str, TensorEntry] | None = None) -> tuple[str, tuple[int, ...]]:
        """(format, logical shape) of a family, checked against the format and the model config (headers only)."""
        entries = self.member_entries(family) if entries is None else entries
        fmt = detect_format(entries)
        if fmt == "unknown":
            found = ", ".join(f"{k or '(bare)'}:{v.dtype}" for k, v in sorted(entries.items()))
            raise InputError(
                f"tensor family {family} ({found}) matches no known format (ModelOpt NVFP4, compressed-tensors "
                "NVFP4, FP8 block, MXFP4, BF16/FP32): the checkpoint is corrupt or of an unsupported kind"
            )
        shape = _logical_shape(family, fmt, {m: e.shape for m, e in entries.items()})
        spec = self.spec(family)
        if spec is not None and spec.shape != shape:
            raise InputError(
                f"{family} has logical shape {list(shape)} but config.json implies {list(spec.shape)}: "
                "the checkpoint does not match its config"
            )
        return fmt, shape

    def survey(self) -> Iterator[tuple[str, dict[str, TensorEntry], str, tuple[int, ...]]]:
        """(family, member entries, format, logical shape) of every family, each checked; headers only.

        A check depends only on the members' dtypes and shapes and on the shape the config implies, so
        its result is shared by every family with the same signature (the 384 experts of a layer).
        """
        self.check_complete()
        checked: dict[tuple, tuple[str, tuple[int, ...]]] = {}
        for fam in self._members:
            entries = self.member_entries(fam)
            spec = self._specs.get(fam)
            sig = (spec.shape if spec else None, *((m, e.dtype, e.shape) for m, e in entries.items()))
            hit = checked.get(sig)
            if hit is None:
                hit = checked[sig] = self.check_family(fam, entries)
            yield fam, entries, *hit

    def check_complete(self) -> None:
        """Every family the config implies is present (the MTP block is optional: transformers drops it)."""
        if self._specs is None:
            self._specs = model_families(self.config)
        missing = [f for f in self._specs if f not in self._members and not f.startswith("mtp.")]
        if missing:
            where = layer_of(missing[0])
            need = f"layer {where} needs it" if where is not None else "the model needs it"
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(
                f"tensor family {missing[0]} is missing from {self.path} ({need}){more}: "
                "the checkpoint is incomplete or does not match its config.json"
            )

    # --- loading --------------------------------------------------------------------------------

    def weight(self, family: str) -> Weight:
        """Load one family, checking dtypes and shapes against its format and the model config."""
        import torch

        from fp4check.references.nvfp4 import DecodeScale, EncodeScale, NVFP4Tensor

        entries = self.member_entries(family)
        fmt, shape = self.check_family(family, entries)
        parts = {m: self.tensor(self._members[family][m]) for m in entries}
        w = Weight(family, fmt, shape, parts, nbytes=sum(t.numel() * t.element_size() for t in parts.values()))
        if fmt == NVFP4_MODELOPT:
            w.nvfp4 = NVFP4Tensor(
                parts["weight"],
                parts["weight_scale"],
                DecodeScale(_scalar_fp32(parts["weight_scale_2"], f"{family}.weight_scale_2")),
            )
            if "input_scale" in parts:
                w.input_scale = DecodeScale(_scalar_fp32(parts["input_scale"], f"{family}.input_scale"))
        elif fmt == NVFP4_CT:
            _expect_dtype(family, "weight_scale", parts, torch.float8_e4m3fn)
            _expect_dtype(family, "weight_packed", parts, torch.uint8)
            w.nvfp4 = NVFP4Tensor(
                parts["weight_packed"],
                parts["weight_scale"],
                EncodeScale(_scalar_fp32(parts["weight_global_scale"], f"{family}.weight_global_scale")),
            )
            if "input_global_scale" in parts:
                w.input_scale = EncodeScale(_scalar_fp32(parts["input_global_scale"], f"{family}.input_global_scale"))
        return w

    def layer(self, index: int) -> dict[str, Weight]:
        """Every family of trunk layer `index`, loaded; reads only the shards that hold them."""
        self.config.layer(index)
        expected = [f for f in model_families(self.config) if layer_of(f) == index]
        return {f: self.weight(f) for f in expected}

    def fingerprint(self) -> str:
        """sha256 of config.json and the index (or the single file's header): identifies the checkpoint."""
        h = hashlib.sha256((self.path / "config.json").read_bytes())
        if self.index_file is not None:
            h.update(self.index_file.read_bytes())
        else:
            h.update(repr(sorted((e.name, e.dtype, e.shape) for e in self._header(SINGLE_FILE).values())).encode())
        return h.hexdigest()[:16]


def _expect_dtype(family: str, member: str, parts: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    if parts[member].dtype != dtype:
        raise InputError(f"{family}.{member} has dtype {parts[member].dtype}; its format needs {dtype}")


def _logical_shape(family: str, fmt: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Logical [N, K] of a family, checking that the scale shapes agree with the data."""
    if fmt in (NVFP4_MODELOPT, NVFP4_CT):
        data = shapes["weight" if fmt == NVFP4_MODELOPT else "weight_packed"]
        n, k = data[0], data[-1] * 2
        want = (n, k // NVFP4_BLOCK)
        if tuple(shapes["weight_scale"]) != want:
            raise InputError(
                f"{family}.weight_scale has shape {list(shapes['weight_scale'])}; NVFP4 data {n}x{k} needs {list(want)}"
            )
        return (n, k)
    if fmt == MXFP4:
        data, scale = shapes["weight"], shapes["scale"]
        n, k = data[0], data[-1] * 2
        if tuple(scale) != (n, k // MXFP4_BLOCK):
            raise InputError(
                f"{family}.scale has shape {list(scale)}; MXFP4 data {n}x{k} needs {[n, k // MXFP4_BLOCK]}"
            )
        return (n, k)
    if fmt == FP8_BLOCK:
        data = shapes["weight"]
        scale = shapes.get("scale", shapes.get("weight_scale_inv"))
        want = (-(-data[0] // 128), -(-data[1] // 128))
        if tuple(scale) != want:
            raise InputError(
                f"{family} FP8 block scale has shape {list(scale)}; weight {list(data)} needs {list(want)}"
            )
        return tuple(data)
    return tuple(next(iter(shapes.values())))
