"""Tensor names: transformers' deepseek_v4 names <-> DeepSeek-native names (the internal naming).

The renames mirror transformers' checkpoint conversion for deepseek_v4 (conversion_mapping.py):
`.attn.` -> `.self_attn.`, `.ffn.` -> `.mlp.`, the indexer nested under the compressor
(`.indexer.compressor.` -> `.compressor.indexer.`), `ape` -> `position_bias`, compressor `norm` ->
`kv_norm`, the routed experts fused into `mlp.experts.gate_up_proj` [E, 2I, D] (w1 rows then w3 rows)
and `mlp.experts.down_proj` [E, D, I]. FP8 scales use vLLM's `weight_scale_inv` in that naming.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (native pattern, transformers replacement), applied in order to a native name.
_TO_HF: tuple[tuple[str, str], ...] = (
    (r"\.scale$", ".weight_scale_inv"),  # first: hc_*_scale becomes *_hc.scale below
    (r"^embed\.weight$", "model.embed_tokens.weight"),
    (r"^head\.weight$", "lm_head.weight"),
    (r"^norm\.weight$", "model.norm.weight"),
    (r"^hc_head_(fn|base|scale)$", r"model.hc_head.hc_\1"),
    (r"^layers\.", "model.layers."),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.hc_(attn|ffn)_(fn|base|scale)$", r".\1_hc.\2"),
    (r"\.attn\.attn_sink$", ".self_attn.sinks"),
    (r"\.attn\.indexer\.weights_proj\.", ".self_attn.compressor.indexer.scorer.weights_proj."),
    (r"\.attn\.indexer\.wq_b\.", ".self_attn.compressor.indexer.q_b_proj."),
    (r"\.attn\.indexer\.compressor\.", ".self_attn.compressor.indexer."),
    (r"\.attn\.", ".self_attn."),
    (r"\.ffn\.gate\.bias$", ".mlp.gate.e_score_correction_bias"),
    (r"\.ffn\.shared_experts\.w1\.", ".mlp.shared_experts.gate_proj."),
    (r"\.ffn\.shared_experts\.w2\.", ".mlp.shared_experts.down_proj."),
    (r"\.ffn\.shared_experts\.w3\.", ".mlp.shared_experts.up_proj."),
    (r"\.ffn\.", ".mlp."),
    (r"\.wq_a\.", ".q_a_proj."),
    (r"\.q_norm\.", ".q_a_norm."),
    (r"\.wq_b\.", ".q_b_proj."),
    (r"\.wkv\.", ".kv_proj."),
    (r"\.wgate\.", ".gate_proj."),
    (r"\.wo_a\.", ".o_a_proj."),
    (r"\.wo_b\.", ".o_b_proj."),
    (r"\.ape$", ".position_bias"),
    (r"(\.compressor(?:\.indexer)?)\.norm\.", r"\1.kv_norm."),
)

# (transformers pattern, native replacement), applied in order to a transformers name.
_TO_NATIVE: tuple[tuple[str, str], ...] = (
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^lm_head\.weight$", "head.weight"),
    (r"^model\.norm\.weight$", "norm.weight"),
    (r"^model\.hc_head\.hc_(fn|base|scale)$", r"hc_head_\1"),
    (r"^model\.layers\.", "layers."),
    (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".ffn_norm."),
    (r"\.(attn|ffn)_hc\.(fn|base|scale)$", r".hc_\1_\2"),
    (r"\.self_attn\.sinks$", ".attn.attn_sink"),
    (r"\.weight_scale_inv$", ".scale"),
    (r"(\.compressor(?:\.indexer)?)\.kv_norm\.", r"\1.norm."),
    (r"\.position_bias$", ".ape"),
    (r"\.self_attn\.compressor\.indexer\.scorer\.weights_proj\.", ".attn.indexer.weights_proj."),
    (r"\.self_attn\.compressor\.indexer\.q_b_proj\.", ".attn.indexer.wq_b."),
    (r"\.self_attn\.compressor\.indexer\.", ".attn.indexer.compressor."),
    (r"\.self_attn\.", ".attn."),
    (r"\.mlp\.gate\.e_score_correction_bias$", ".ffn.gate.bias"),
    (r"\.mlp\.shared_experts\.gate_proj\.", ".ffn.shared_experts.w1."),
    (r"\.mlp\.shared_experts\.down_proj\.", ".ffn.shared_experts.w2."),
    (r"\.mlp\.shared_experts\.up_proj\.", ".ffn.shared_experts.w3."),
    (r"\.mlp\.", ".ffn."),
    (r"\.q_a_proj\.", ".wq_a."),
    (r"\.q_a_norm\.", ".q_norm."),
    (r"\.q_b_proj\.", ".wq_b."),
    (r"\.kv_proj\.", ".wkv."),
    (r"\.gate_proj\.", ".wgate."),
    (r"\.o_a_proj\.", ".wo_a."),
    (r"\.o_b_proj\.", ".wo_b."),
)

_COMPILED_TO_HF = tuple((re.compile(p), r) for p, r in _TO_HF)
_COMPILED_TO_NATIVE = tuple((re.compile(p), r) for p, r in _TO_NATIVE)
_FUSED_RE = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_NATIVE_EXPERT_RE = re.compile(r"^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight$")


@dataclass(frozen=True)
class Slice:
    """A contiguous run inside a stored tensor: `offset` elements in, with `shape`."""

    offset: int
    shape: tuple[int, ...]


def is_transformers_name(name: str) -> bool:
    return name.startswith("model.") or name == "lm_head.weight"


def to_transformers(native: str) -> str:
    """transformers' name of a native (non-expert) tensor name."""
    for pat, rep in _COMPILED_TO_HF:
        native = pat.sub(rep, native)
    return native


def fused_expert_name(native: str) -> tuple[str, int, str] | None:
    """(fused transformers name, expert, projection) for `layers.L.ffn.experts.E.wN.weight`."""
    m = _NATIVE_EXPERT_RE.match(native)
    if not m:
        return None
    layer, expert, proj = int(m.group(1)), int(m.group(2)), m.group(3)
    fused = "down_proj" if proj == "w2" else "gate_up_proj"
    return f"model.layers.{layer}.mlp.experts.{fused}", expert, proj


def to_native(name: str, shape: tuple[int, ...] | None = None) -> list[tuple[str, Slice | None]]:
    """Native names (with the slice each occupies) stored under one transformers name.

    A fused expert tensor yields one entry per expert and projection; it needs the stored shape.
    """
    m = _FUSED_RE.match(name)
    if m:
        layer, kind = int(m.group(1)), m.group(2)
        if shape is None or len(shape) != 3:
            raise ValueError(f"{name} must be a 3-D fused expert tensor, got shape {shape}")
        e, rows, cols = shape
        out: list[tuple[str, Slice | None]] = []
        for x in range(e):
            base = f"layers.{layer}.ffn.experts.{x}"
            if kind == "down_proj":
                out.append((f"{base}.w2.weight", Slice(x * rows * cols, (rows, cols))))
            else:
                half = rows // 2
                out.append((f"{base}.w1.weight", Slice(x * rows * cols, (half, cols))))
                out.append((f"{base}.w3.weight", Slice((x * rows + half) * cols, (half, cols))))
        return out
    for pat, rep in _COMPILED_TO_NATIVE:
        name = pat.sub(rep, name)
    return [(name, None)]
