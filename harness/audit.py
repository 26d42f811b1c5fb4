"""Checkpoint scale audit: what in a checkpoint's scales will break an NVFP4 runner, before any kernel runs.

For every quantized family: NaN/Inf values or e4m3 NaN codes in block scales, zero/non-finite global
scales, e8m0 NaN bytes and exponents far out of range, NaN in the weights themselves, w1/w3 global
scales far apart. For every NVFP4 family with an activation input scale: the activations it meets on a
calibration batch (the MoE input ffn_norm(h) for w1/w3, each expert's clamped SwiGLU for w2), the
overflow factor amax(act) / (input_scale x 2688) and the predicted fraction of saturated blocks. The
seeds' checkpoint input_scale caused a 3977x overflow and NaN: that is a critical finding here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fp4check.checkpoint import FP8_BLOCK, MXFP4, NVFP4_CT, NVFP4_MODELOPT, Checkpoint
from fp4check.layout import layer_of
from fp4check.references.fp8 import E4M3_MAX, e8m0_bytes
from fp4check.references.nvfp4 import GLOBAL_SCALE_NUMERATOR, NVFP4_BLOCK

SEVERITY = {"critical": 0, "warning": 1, "info": 2}
OVERFLOW_CRITICAL = 4.0  # beyond this many x the calibrated range, blocks saturate hard (or NaN unclamped)
OVERFLOW_WARNING = 1.5  # a fresh batch a little past the calibration batch's amax is normal
W1_W3_RATIO_WARNING = 4.0
E8M0_EXPONENT_RANGE = (-60, 30)


@dataclass
class Finding:
    severity: str
    family: str
    kind: str
    detail: str
    value: float = math.nan

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "family": self.family,
            "kind": self.kind,
            "detail": self.detail,
            "value": None if math.isnan(self.value) else self.value,
        }


def _scale_findings(fam: str, w) -> list[Finding]:
    out = []
    p = w.parts
    if w.format in (NVFP4_MODELOPT, NVFP4_CT):
        raw = p["weight_scale"].view(torch.uint8)
        nan_codes = int(((raw & 0x7F) == 0x7F).sum())
        if nan_codes:
            out.append(
                Finding(
                    "critical",
                    fam,
                    "e4m3 NaN code",
                    f"{nan_codes} block scale(s) hold 0x7F/0xFF: those blocks decode to NaN",
                )
            )
        g = w.nvfp4.global_scale
        v = float(g.value)
        kind = "weight_scale_2" if w.format == NVFP4_MODELOPT else "weight_global_scale"
        if not math.isfinite(v) or v == 0:
            out.append(
                Finding(
                    "critical",
                    fam,
                    "global scale",
                    f"{kind} = {v}: every weight decodes to "
                    f"{'0' if (v == 0) == (w.format == NVFP4_MODELOPT) else 'inf/NaN'}",
                    v,
                )
            )
    elif w.format in (FP8_BLOCK, MXFP4):
        scale = p.get("scale", p.get("weight_scale_inv"))
        if scale.dtype in (torch.uint8, torch.float8_e8m0fnu):
            b = e8m0_bytes(scale).to(torch.int32)
            if int((b == 255).sum()):
                out.append(Finding("critical", fam, "e8m0 NaN", f"{int((b == 255).sum())} scale byte(s) are 255 (NaN)"))
            e = b[b != 255] - 127
            lo, hi = E8M0_EXPONENT_RANGE
            if e.numel() and (int(e.min()) < lo or int(e.max()) > hi):
                out.append(
                    Finding(
                        "warning",
                        fam,
                        "e8m0 range",
                        f"exponents span 2^{int(e.min())}..2^{int(e.max())}: outside any plausible weight scale",
                    )
                )
        elif not bool(torch.isfinite(scale).all()):
            out.append(Finding("critical", fam, "scale non-finite", "the FP8 block scales hold NaN or Inf"))
        if w.format == FP8_BLOCK:
            raw = p["weight"].view(torch.uint8)
            n = int(((raw & 0x7F) == 0x7F).sum())
            if n:
                out.append(Finding("critical", fam, "NaN weight", f"{n} e4m3 weight byte(s) are NaN codes"))
    elif w.format in ("bf16", "fp32", "fp16"):
        t = next(iter(p.values()))
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            out.append(Finding("critical", fam, "NaN weight", f"{int((~torch.isfinite(t)).sum())} non-finite value(s)"))
    return out


def _input_finding(fam: str, w, act: torch.Tensor) -> Finding | None:
    """Overflow factor and predicted saturated fraction of an NVFP4 input scale against real activations."""
    if w.input_scale is None:
        return None
    dec = float(w.input_scale.to_decode().value)
    amax = float(act.abs().max())
    if not math.isfinite(dec) or dec <= 0:
        return Finding("critical", fam, "input scale", f"input scale decodes to {dec}", dec)
    factor = amax / (dec * GLOBAL_SCALE_NUMERATOR)
    blocks = act.float().abs().reshape(act.shape[0], -1, NVFP4_BLOCK).amax(-1)
    saturated = float(((blocks / 6.0) / dec > E4M3_MAX).float().mean())
    detail = (
        f"activations reach {factor:.3g}x the input scale's range (amax {amax:.4g} vs {dec * 2688:.4g}); "
        f"{saturated:.1%} of blocks would saturate"
    )
    if factor > OVERFLOW_CRITICAL:
        return Finding("critical", fam, "input scale overflow", detail, factor)
    if factor > OVERFLOW_WARNING:
        return Finding("warning", fam, "input scale overflow", detail, factor)
    if factor < 1 / 64:
        return Finding(
            "info", fam, "input scale too large", detail + "; the activations use a sliver of the range", factor
        )
    return None


def audit(ckpt: Checkpoint, layers: list[int], tokens: int = 256, seed: int = 0) -> list[Finding]:
    from fp4check.references.moe import expert_mlp
    from fp4check.scenarios import make_inputs

    cfg = ckpt.config
    findings: list[Finding] = []
    wanted = set(layers)
    families = [f for f in ckpt.families() if (layer_of(f) in wanted) or layer_of(f) is None]
    cache = {}
    for fam in families:
        try:
            w = ckpt.weight(fam)
        except Exception as e:  # an unreadable family is itself a finding
            findings.append(Finding("critical", fam, "unreadable", str(e)))
            continue
        findings += _scale_findings(fam, w)
        cache[fam] = w
    for layer in layers:
        x = make_inputs(ckpt, "natural", layer, tokens, seed).x.float()
        p = f"layers.{layer}.ffn."
        for e in range(cfg.n_routed_experts):
            base = f"{p}experts.{e}."
            w1, w3, w2 = (cache.get(base + s) for s in ("w1", "w3", "w2"))
            if w1 is None or w3 is None or w2 is None:
                continue
            for fam, w in ((base + "w1", w1), (base + "w3", w3)):
                f = _input_finding(fam, w, x)
                if f:
                    findings.append(f)
            if w2.input_scale is not None:
                act = expert_mlp(x, w1.dequantize(), w3.dequantize(), w2.dequantize(), cfg.swiglu_limit)["act"]
                f = _input_finding(base + "w2", w2, act)
                if f:
                    findings.append(f)
            if w1.nvfp4 is not None and w3.nvfp4 is not None:
                g1 = float(w1.nvfp4.global_scale.to_decode().value)
                g3 = float(w3.nvfp4.global_scale.to_decode().value)
                finite = all(math.isfinite(g) and g > 0 for g in (g1, g3))
                if finite and max(g1 / g3, g3 / g1) > W1_W3_RATIO_WARNING:
                    findings.append(
                        Finding(
                            "warning",
                            base + "w1/w3",
                            "w1/w3 global scales",
                            f"w3's global scale is {g3 / g1:.3g}x w1's: a runner that shares one "
                            "scale (Marlin, a gate-only clamp limit) is off by that much",
                            max(g1 / g3, g3 / g1),
                        )
                    )
    findings.sort(key=lambda f: (SEVERITY[f.severity], -(f.value if not math.isnan(f.value) else 0)))
    return findings
