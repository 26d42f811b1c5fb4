"""DeepSeek-V4 model configuration, read from config.json in DeepSeek's form or transformers' form.

DeepSeek's form (the release's config.json) gives `compress_ratios` with one entry per trunk layer plus
a trailing entry for the MTP layer, and `num_hash_layers`. transformers' `deepseek_v4` form gives
`layer_types` ("sliding_attention" | "compressed_sparse_attention" | "heavily_compressed_attention"),
`compress_rates`, `mlp_layer_types` ("hash_moe" | "moe") and `rope_parameters` {"main", "compress"}.
Both map to one ModelConfig. Where neither schedule is given, transformers builds a default schedule
phase-shifted against the real Pro config (layer 2 = HCA); fp4check refuses to guess instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fp4check.errors import InputError

LAYER_TYPE_BY_RATIO = {128: "C128A", 4: "C4A", 0: "SWA"}
RATIO_BY_LAYER_TYPE = {v: k for k, v in LAYER_TYPE_BY_RATIO.items()}
HF_LAYER_TYPES = {
    "heavily_compressed_attention": "C128A",
    "compressed_sparse_attention": "C4A",
    "sliding_attention": "SWA",
}
LAYER_TYPES = ("C4A", "C128A", "SWA")


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    yarn: bool
    factor: float = 1.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0


@dataclass(frozen=True)
class QuantConfig:
    """The checkpoint's declared quantization (config.json quantization_config + hf_quant_config.json).

    Declared, not trusted: tensor formats are detected per tensor family from the tensors themselves.
    """

    quant_method: str | None = None
    quant_algo: str | None = None
    moe_quant_algo: str | None = None
    fmt: str | None = None
    scale_fmt: str | None = None
    weight_block_size: tuple[int, int] | None = None
    group_size: int | None = None
    producer: str | None = None
    expert_dtype: str | None = None
    ignore: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class LayerInfo:
    index: int
    layer_type: str  # C4A | C128A | SWA
    compress_ratio: int
    routing: str  # hash | bias


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    qk_rope_head_dim: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    vocab_size: int
    max_position_embeddings: int
    sliding_window: int
    compress_ratios: tuple[int, ...]  # trunk layers only
    mtp_compress_ratios: tuple[int, ...]  # the trailing MTP slots of DeepSeek's list
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    routed_scaling_factor: float
    scoring_func: str
    topk_method: str
    norm_topk_prob: bool
    num_hash_layers: int
    swiglu_limit: float
    hc_mult: int
    hc_sinkhorn_iters: int
    hc_eps: float
    rms_norm_eps: float
    num_nextn_predict_layers: int
    rope_main: RopeConfig
    rope_compress: RopeConfig
    quant: QuantConfig
    source_form: str  # "deepseek" | "transformers"

    @property
    def layers(self) -> list[LayerInfo]:
        return [
            LayerInfo(i, LAYER_TYPE_BY_RATIO[r], r, "hash" if i < self.num_hash_layers else "bias")
            for i, r in enumerate(self.compress_ratios)
        ]

    def layer(self, index: int) -> LayerInfo:
        if not 0 <= index < self.num_hidden_layers:
            raise InputError(
                f"layer {index} is out of range: this checkpoint has layers 0..{self.num_hidden_layers - 1}"
            )
        return self.layers[index]

    def layers_of_type(self, layer_type: str) -> list[int]:
        if layer_type not in LAYER_TYPES:
            raise InputError(f"unknown layer type {layer_type!r}: use one of {', '.join(LAYER_TYPES)}")
        return [li.index for li in self.layers if li.layer_type == layer_type]

    def rope_for_layer(self, index: int) -> RopeConfig:
        """Compressed layers use compress theta + YaRN; SWA layers base theta without YaRN (spec §2.6)."""
        return self.rope_compress if self.compress_ratios[index] > 0 else self.rope_main

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quant"].pop("raw", None)
        d["layers"] = [asdict(li) for li in self.layers]
        return d


def _require(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise InputError(f"{where} has no {key!r}: a DeepSeek-V4 config.json must define it")
    return d[key]


def _rope_from_deepseek(d: dict) -> tuple[RopeConfig, RopeConfig]:
    main = RopeConfig(theta=float(d.get("rope_theta", 10000.0)), yarn=False)
    rs = d.get("rope_scaling") or {}
    yarn = (rs.get("type") or rs.get("rope_type")) == "yarn"
    compress = RopeConfig(
        theta=float(d.get("compress_rope_theta", 160000.0)),
        yarn=yarn,
        factor=float(rs.get("factor", 1.0)),
        original_max_position_embeddings=int(rs.get("original_max_position_embeddings", 0)),
        beta_fast=float(rs.get("beta_fast", 32.0)),
        beta_slow=float(rs.get("beta_slow", 1.0)),
    )
    return main, compress


def _rope_from_transformers(d: dict) -> tuple[RopeConfig, RopeConfig]:
    rp = d.get("rope_parameters") or {}
    if not (isinstance(rp.get("main"), dict) and isinstance(rp.get("compress"), dict)):
        # flat form: yarn keys at top level, thetas from rope_theta / compress_rope_theta
        flat = {k: v for k, v in rp.items() if k not in ("main", "compress")}
        return _rope_from_deepseek({**d, "rope_scaling": flat or d.get("rope_scaling")})
    m, c = rp["main"], rp["compress"]
    main = RopeConfig(theta=float(m.get("rope_theta", d.get("rope_theta", 10000.0))), yarn=False)
    yarn = c.get("rope_type", c.get("type")) == "yarn"
    compress = RopeConfig(
        theta=float(c.get("rope_theta", d.get("compress_rope_theta", 160000.0))),
        yarn=yarn,
        factor=float(c.get("factor", 1.0)),
        original_max_position_embeddings=int(c.get("original_max_position_embeddings", 0)),
        beta_fast=float(c.get("beta_fast", 32.0)),
        beta_slow=float(c.get("beta_slow", 1.0)),
    )
    return main, compress


def _schedule(d: dict, n_layers: int, where: str) -> tuple[tuple[int, ...], tuple[int, ...], int, str]:
    """(trunk compress ratios, MTP ratios, num_hash_layers, form)."""
    if "compress_ratios" in d:
        ratios = [int(r) for r in d["compress_ratios"]]
        if len(ratios) < n_layers:
            raise InputError(f"{where}: compress_ratios has {len(ratios)} entries for {n_layers} layers")
        bad = sorted({r for r in ratios if r not in LAYER_TYPE_BY_RATIO})
        if bad:
            raise InputError(f"{where}: compress_ratios holds {bad}; DeepSeek-V4 layers use 0, 4 or 128")
        n_hash = int(d.get("num_hash_layers", d.get("n_hash_layers", 0)))
        return tuple(ratios[:n_layers]), tuple(ratios[n_layers:]), n_hash, "deepseek"
    if "layer_types" in d:
        types = list(d["layer_types"])[:n_layers]
        bad = sorted({t for t in types if t not in HF_LAYER_TYPES})
        if bad or len(types) != n_layers:
            raise InputError(
                f"{where}: layer_types must list {n_layers} of {sorted(HF_LAYER_TYPES)}, got {bad or len(types)}"
            )
        rates = {
            "compressed_sparse_attention": 4,
            "heavily_compressed_attention": 128,
            **(d.get("compress_rates") or {}),
        }
        ratios = tuple(0 if t == "sliding_attention" else int(rates[t]) for t in types)
        mlp = d.get("mlp_layer_types")
        if mlp is not None:
            n_hash = sum(1 for t in list(mlp)[:n_layers] if t == "hash_moe")
        else:
            n_hash = int(d.get("num_hash_layers", 3))
        return ratios, (0,) * int(d.get("num_nextn_predict_layers", 0)), n_hash, "transformers"
    raise InputError(
        f"{where} defines neither compress_ratios nor layer_types: the layer schedule would be a guess "
        "(transformers' default is phase-shifted against the real Pro schedule); add one of them"
    )


def _quant(d: dict, hf_quant: dict | None) -> QuantConfig:
    q = dict(d.get("quantization_config") or {})
    hq = (hf_quant or {}).get("quantization") or {}
    producer = q.get("producer") or (hf_quant or {}).get("producer") or {}
    wbs = q.get("weight_block_size")
    return QuantConfig(
        quant_method=q.get("quant_method"),
        quant_algo=q.get("quant_algo") or hq.get("quant_algo"),
        moe_quant_algo=q.get("moe_quant_algo"),
        fmt=q.get("fmt") or q.get("format"),
        scale_fmt=q.get("scale_fmt"),
        weight_block_size=tuple(wbs) if wbs else None,
        group_size=q.get("group_size") or hq.get("group_size"),
        producer=producer.get("name") if isinstance(producer, dict) else producer,
        expert_dtype=q.get("expert_dtype") or d.get("expert_dtype"),
        ignore=tuple(q.get("ignore") or hq.get("exclude_modules") or ()),
        raw={"quantization_config": q, "hf_quant_config": hf_quant or {}},
    )


def parse_config(d: dict, hf_quant: dict | None = None, where: str = "config.json") -> ModelConfig:
    """ModelConfig from a parsed config.json (either form) and an optional hf_quant_config.json."""
    if not isinstance(d, dict):
        raise InputError(f"{where} must hold a JSON object")
    model_type = d.get("model_type")
    if model_type not in (None, "deepseek_v4"):
        raise InputError(f"{where}: model_type is {model_type!r}; fp4check reads DeepSeek-V4 (deepseek_v4) checkpoints")
    n_layers = int(_require(d, "num_hidden_layers", where))
    ratios, mtp, n_hash, form = _schedule(d, n_layers, where)
    if form == "deepseek":
        main, compress = _rope_from_deepseek(d)
    else:
        main, compress = _rope_from_transformers(d)
    head_dim = int(d.get("head_dim", 512))
    rope_dim = d.get("qk_rope_head_dim")
    if rope_dim is None and d.get("partial_rotary_factor"):
        rope_dim = int(head_dim * float(d["partial_rotary_factor"]))
    try:
        return ModelConfig(
            hidden_size=int(_require(d, "hidden_size", where)),
            num_hidden_layers=n_layers,
            num_attention_heads=int(_require(d, "num_attention_heads", where)),
            num_key_value_heads=int(d.get("num_key_value_heads", 1)),
            head_dim=head_dim,
            qk_rope_head_dim=int(rope_dim if rope_dim is not None else 64),
            q_lora_rank=int(_require(d, "q_lora_rank", where)),
            o_groups=int(_require(d, "o_groups", where)),
            o_lora_rank=int(_require(d, "o_lora_rank", where)),
            vocab_size=int(_require(d, "vocab_size", where)),
            max_position_embeddings=int(d.get("max_position_embeddings", 0)),
            sliding_window=int(d.get("sliding_window", 128)),
            compress_ratios=ratios,
            mtp_compress_ratios=mtp,
            index_n_heads=int(d.get("index_n_heads", 64)),
            index_head_dim=int(d.get("index_head_dim", 128)),
            index_topk=int(d.get("index_topk", 512)),
            n_routed_experts=int(_require(d, "n_routed_experts", where)),
            n_shared_experts=int(d.get("n_shared_experts", 1)),
            num_experts_per_tok=int(_require(d, "num_experts_per_tok", where)),
            moe_intermediate_size=int(_require(d, "moe_intermediate_size", where)),
            routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)),
            scoring_func=str(d.get("scoring_func", "sqrtsoftplus")),
            topk_method=str(d.get("topk_method", "noaux_tc")),
            norm_topk_prob=bool(d.get("norm_topk_prob", True)),
            num_hash_layers=n_hash,
            swiglu_limit=float(d.get("swiglu_limit", 10.0)),
            hc_mult=int(d.get("hc_mult", 4)),
            hc_sinkhorn_iters=int(d.get("hc_sinkhorn_iters", 20)),
            hc_eps=float(d.get("hc_eps", 1e-6)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            num_nextn_predict_layers=int(d.get("num_nextn_predict_layers", len(mtp))),
            rope_main=main,
            rope_compress=compress,
            quant=_quant(d, hf_quant),
            source_form=form,
        )
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: a field has the wrong type ({e}); compare with the release's config.json") from None


def read_json(path: Path) -> dict:
    """Parse a JSON file, turning every failure into an InputError naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path} is missing") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}): fix or re-download it"
        ) from None


def load_config(directory: Path) -> ModelConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise InputError(f"{directory} has no config.json: point --checkpoint at a DeepSeek-V4 checkpoint directory")
    hf_path = directory / "hf_quant_config.json"
    hf_quant = read_json(hf_path) if hf_path.is_file() else None
    return parse_config(read_json(path), hf_quant, where=str(path))
