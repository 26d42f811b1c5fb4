"""The tensors a DeepSeek-V4 checkpoint holds, by family, with logical shapes (shared/spec/deepseek_v4.md §3).

A family is a weight and the tensors that describe it: `layers.2.ffn.experts.5.w1` holds `.weight`
and, by format, `.scale`, `.weight_scale`, `.weight_scale_2`, `.input_scale`, ... Names are
DeepSeek-native; harness/names.py maps transformers' names onto them. The synthetic generator writes
these families and the checkpoint reader checks loaded shapes against them.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from fp4check.config import ModelConfig

# Roles: "attn-linear", "expert", "shared", "mtp-linear", "mtp-expert" are linear weights that a format may
# quantize (harness/synth/formats.py says how); "bf16", "fp32", "int64" are stored as they are.


class FamilySpec(NamedTuple):
    name: str
    shape: tuple[int, ...]  # logical shape: [N, K] for linears (K = input features)
    role: str


_LAYER_RE = re.compile(r"^(?:layers\.(\d+)|mtp\.(\d+))\.")
_EXPERT_RE = re.compile(r"\.ffn\.experts\.(\d+)\.(w[123])$")


def layer_of(family: str) -> int | str | None:
    """Trunk layer index of a family name, "mtp.N" for an MTP block, None for embed/head/norm."""
    m = _LAYER_RE.match(family)
    if not m:
        return None
    return int(m.group(1)) if m.group(1) is not None else f"mtp.{m.group(2)}"


def expert_of(family: str) -> tuple[int, str] | None:
    m = _EXPERT_RE.search(family)
    return (int(m.group(1)), m.group(2)) if m else None


def _block(cfg: ModelConfig, prefix: str, ratio: int, hash_routed: bool, mtp: bool) -> list[FamilySpec]:
    d, h, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    hc = cfg.hc_mult
    mix = (2 + hc) * hc
    linear = "mtp-linear" if mtp else "attn-linear"
    out = [
        FamilySpec(f"{prefix}attn_norm", (d,), "bf16"),
        FamilySpec(f"{prefix}ffn_norm", (d,), "bf16"),
    ]
    for sub in ("attn", "ffn"):
        out += [
            FamilySpec(f"{prefix}hc_{sub}_fn", (mix, hc * d), "fp32"),
            FamilySpec(f"{prefix}hc_{sub}_base", (mix,), "fp32"),
            FamilySpec(f"{prefix}hc_{sub}_scale", (3,), "fp32"),
        ]
    a = f"{prefix}attn."
    out += [
        FamilySpec(f"{a}attn_sink", (h,), "fp32"),
        FamilySpec(f"{a}wq_a", (cfg.q_lora_rank, d), linear),
        FamilySpec(f"{a}q_norm", (cfg.q_lora_rank,), "bf16"),
        FamilySpec(f"{a}wq_b", (h * hd, cfg.q_lora_rank), linear),
        FamilySpec(f"{a}wkv", (hd, d), linear),
        FamilySpec(f"{a}kv_norm", (hd,), "bf16"),
        FamilySpec(f"{a}wo_a", (cfg.o_groups * cfg.o_lora_rank, h * hd // cfg.o_groups), linear),
        FamilySpec(f"{a}wo_b", (d, cfg.o_groups * cfg.o_lora_rank), linear),
    ]
    if ratio > 0:
        c = 2 if ratio == 4 else 1
        out += [
            FamilySpec(f"{a}compressor.wkv", (c * hd, d), "bf16"),
            FamilySpec(f"{a}compressor.wgate", (c * hd, d), "bf16"),
            FamilySpec(f"{a}compressor.ape", (ratio, c * hd), "fp32"),
            FamilySpec(f"{a}compressor.norm", (hd,), "bf16"),
        ]
    if ratio == 4:
        ih, ihd = cfg.index_n_heads, cfg.index_head_dim
        out += [
            FamilySpec(f"{a}indexer.wq_b", (ih * ihd, cfg.q_lora_rank), linear),
            FamilySpec(f"{a}indexer.weights_proj", (ih, d), "bf16"),
            FamilySpec(f"{a}indexer.compressor.wkv", (2 * ihd, d), "bf16"),
            FamilySpec(f"{a}indexer.compressor.wgate", (2 * ihd, d), "bf16"),
            FamilySpec(f"{a}indexer.compressor.ape", (4, 2 * ihd), "fp32"),
            FamilySpec(f"{a}indexer.compressor.norm", (ihd,), "bf16"),
        ]
    f = f"{prefix}ffn."
    e, i = cfg.n_routed_experts, cfg.moe_intermediate_size
    out.append(FamilySpec(f"{f}gate", (e, d), "bf16"))
    if hash_routed:
        out.append(FamilySpec(f"{f}gate.tid2eid", (cfg.vocab_size, cfg.num_experts_per_tok), "int64"))
    else:
        out.append(FamilySpec(f"{f}gate.bias", (e,), "fp32"))
    expert = "mtp-expert" if mtp else "expert"
    for x in range(e):
        out += [
            FamilySpec(f"{f}experts.{x}.w1", (i, d), expert),
            FamilySpec(f"{f}experts.{x}.w2", (d, i), expert),
            FamilySpec(f"{f}experts.{x}.w3", (i, d), expert),
        ]
    si = i * cfg.n_shared_experts
    out += [
        FamilySpec(f"{f}shared_experts.w1", (si, d), linear if mtp else "shared"),
        FamilySpec(f"{f}shared_experts.w2", (d, si), linear if mtp else "shared"),
        FamilySpec(f"{f}shared_experts.w3", (si, d), linear if mtp else "shared"),
    ]
    return out


def model_families(cfg: ModelConfig, include_mtp: bool = True) -> dict[str, FamilySpec]:
    """Every family of the model in storage order: embed, trunk layers, MTP blocks, head."""
    d, hc = cfg.hidden_size, cfg.hc_mult
    fams = [FamilySpec("embed", (cfg.vocab_size, d), "bf16")]
    for li in cfg.layers:
        fams += _block(cfg, f"layers.{li.index}.", li.compress_ratio, li.routing == "hash", mtp=False)
    if include_mtp:
        for m in range(cfg.num_nextn_predict_layers):
            p = f"mtp.{m}."
            fams += _block(cfg, p, 0, hash_routed=False, mtp=True)
            fams += [
                FamilySpec(f"{p}e_proj", (d, d), "mtp-linear"),
                FamilySpec(f"{p}h_proj", (d, d), "mtp-linear"),
                FamilySpec(f"{p}enorm", (d,), "bf16"),
                FamilySpec(f"{p}hnorm", (d,), "bf16"),
                FamilySpec(f"{p}norm", (d,), "bf16"),
                FamilySpec(f"{p}hc_head_fn", (hc, hc * d), "fp32"),
                FamilySpec(f"{p}hc_head_base", (hc,), "fp32"),
                FamilySpec(f"{p}hc_head_scale", (1,), "fp32"),
            ]
    fams += [
        FamilySpec("norm", (d,), "bf16"),
        FamilySpec("hc_head_fn", (hc, hc * d), "fp32"),
        FamilySpec("hc_head_base", (hc,), "fp32"),
        FamilySpec("hc_head_scale", (1,), "fp32"),
        FamilySpec("head", (cfg.vocab_size, d), "bf16"),
    ]
    return {f.name: f for f in fams}


# Suffixes that name a member of a family; anything else is a family of its own (bare parameters).
MEMBER_SUFFIXES = (
    "weight",
    "scale",
    "weight_scale",
    "weight_scale_2",
    "weight_scale_inv",
    "weight_packed",
    "weight_global_scale",
    "input_scale",
    "input_global_scale",
)


def split_member(name: str) -> tuple[str, str]:
    """("layers.0.attn.wq_a", "weight") for "layers.0.attn.wq_a.weight"; (name, "") for bare parameters."""
    head, _, tail = name.rpartition(".")
    if head and tail in MEMBER_SUFFIXES:
        return head, tail
    return name, ""
