"""Pass/fail gates: one table of per-stage defaults, overridable in fp4check.toml and on the command line.

A gate is "<stage>.<compared_to>" -> (metric, minimum). vs reference asks the quality question (the
seeds' bar: cosine >= 0.98 for NVFP4 GEMM stages); vs emulated asks conformance with the exact NVFP4
pipeline: code for code for quantized stages (ties allowed), accumulation-order noise for GEMMs.

fp4check.toml (in the working directory, or --config):

    [thresholds]
    "l1.reference" = 0.97          # minimum of the stage's metric
    "quant_l1.emulated" = 0.995

On the command line: --threshold l1.reference=0.97 (repeatable).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from fp4check.errors import InputError

DEFAULTS: dict[str, tuple[str, float]] = {
    "route.reference": ("overlap", 0.99),
    "route.emulated": ("overlap", 1.0),
    "quant_l1.reference": ("cosine", 0.98),
    "quant_l1.emulated": ("code_match", 0.999),
    "l1.reference": ("cosine", 0.98),
    "l1.emulated": ("cosine", 0.9999),
    "act.reference": ("cosine", 0.98),
    "act.emulated": ("cosine", 0.9999),
    "quant_l2.reference": ("cosine", 0.98),
    "quant_l2.emulated": ("code_match", 0.999),
    "l2.reference": ("cosine", 0.98),
    "l2.emulated": ("cosine", 0.9999),
    "combine.reference": ("cosine", 0.98),
    "combine.emulated": ("cosine", 0.9999),
    "shared.reference": ("cosine", 0.98),
    "shared.emulated": ("cosine", 0.9999),
    "out.reference": ("cosine", 0.98),
    "out.emulated": ("cosine", 0.9999),
    "swizzle.emulated": ("scale_match", 1.0),
    "ep_sum.single_rank": ("cosine", 0.99999),
    # attention: FP8-block projections with 1x128 activation quantization, the FP8 KV cache
    "attn.q.reference": ("cosine", 0.995),
    "attn.q.emulated": ("cosine", 0.9999),
    "attn.kv.reference": ("cosine", 0.995),
    "attn.kv.emulated": ("cosine", 0.9999),
    "attn.compress.reference": ("cosine", 0.999),
    "attn.compress.emulated": ("cosine", 0.9999),
    "attn.indexer.reference": ("overlap", 0.8),
    "attn.indexer.emulated": ("overlap", 0.99),
    "attn.kv_write.reference": ("code_match", 1.0),
    "attn.kv_write.emulated": ("code_match", 1.0),
    "attn.kv_read.reference": ("code_match", 1.0),
    "attn.kv_read.emulated": ("code_match", 1.0),
    "attn.kv_cache.reference": ("cosine", 0.995),  # propagated kv_read: the backend's own kv, FP8-cached
    "attn.core.reference": ("cosine", 0.99),
    "attn.core.emulated": ("cosine", 0.9999),
    "attn.out.reference": ("cosine", 0.99),
    "attn.out.emulated": ("cosine", 0.9999),
    "attn.decode.reference": ("cosine", 0.99),
    "attn.decode.prefill": ("cosine", 0.9999),
    # mHC and the whole layer (the residual streams carry most of the signal: tight)
    "hc.attn_pre.reference": ("cosine", 0.9999),
    "hc.attn_pre.emulated": ("cosine", 0.9999),
    "hc.attn_post.reference": ("cosine", 0.999),
    "hc.attn_post.emulated": ("cosine", 0.9999),
    "hc.ffn_pre.reference": ("cosine", 0.999),
    "hc.ffn_pre.emulated": ("cosine", 0.9999),
    "hc.ffn_post.reference": ("cosine", 0.9999),
    "layer.out.reference": ("cosine", 0.98),
    "layer.out.emulated": ("cosine", 0.9999),
    # the chain: every side on its own upstream, error compounding along depth (random tiny weights
    # compound far faster than a trained model's); the isolated per-layer rows use layer.out
    "chain.hc.reference": ("cosine", 0.9),
    "chain.hc.emulated": ("cosine", 0.9999),
    "chain.attn_out.reference": ("cosine", 0.9),
    "chain.attn_out.emulated": ("cosine", 0.9999),
    "chain.moe_out.reference": ("cosine", 0.85),
    "chain.moe_out.emulated": ("cosine", 0.9999),
    "chain.out.reference": ("cosine", 0.9),
    "chain.out.emulated": ("cosine", 0.9999),
    "head.h.reference": ("cosine", 0.9),
    "head.h.emulated": ("cosine", 0.9999),
    "head.logits.reference": ("cosine", 0.9),
    "head.logits.emulated": ("cosine", 0.9999),
}
CONFIG_FILE = "fp4check.toml"


class Thresholds:
    def __init__(self, overrides: dict[str, float] | None = None):
        self.table = dict(DEFAULTS)
        for key, value in (overrides or {}).items():
            if key not in self.table:
                raise InputError(f"unknown threshold {key!r}: use <stage>.<reference|emulated>, e.g. l1.reference")
            self.table[key] = (self.table[key][0], float(value))

    def gate(self, stage: str, compared_to: str) -> tuple[str, float]:
        return self.table[f"{stage}.{compared_to}"]

    @classmethod
    def load(cls, cli: tuple[str, ...] = (), config: Path | None = None) -> Thresholds:
        overrides: dict[str, float] = {}
        path = config or Path(CONFIG_FILE)
        if config is not None and not path.is_file():
            raise InputError(f"config file {path} does not exist")
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as e:
                raise InputError(f"{path} is not valid TOML: {e}") from None
            overrides.update({k: float(v) for k, v in (data.get("thresholds") or {}).items()})
        for item in cli:
            key, eq, value = item.partition("=")
            try:
                overrides[key] = float(value)
            except ValueError:
                raise InputError(f"--threshold takes STAGE.COMPARED_TO=VALUE, got {item!r}") from None
            if not eq:
                raise InputError(f"--threshold takes STAGE.COMPARED_TO=VALUE, got {item!r}")
        return cls(overrides)
