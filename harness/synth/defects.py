"""Checkpoint defects that reproduce real failures (`fp4check synth --defect NAME@WHERE`).

WHERE names one tensor family: `L2.E3.w1` (routed expert 3 of layer 2), `L2.shared.w2`, `L1.wq_a`
(attention projection), `L1.indexer.wq_b`, or a full native family name (`layers.2.ffn.experts.3.w1`).
`L2.E*.w1` names that projection of every routed expert of the layer (a runtime that reduces per-expert
input scales to their max only feels an input-scale defect when every expert has it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from fp4check.errors import InputError
from fp4check.references.fp8 import E4M3_NAN_BYTE
from fp4check.synth.catalog import DEFECTS

BAD_INPUT_SCALE_FACTOR = 3977.6  # the amplification a checkpoint input_scale caused in the seeds
W1_W3_MISMATCH_FACTOR = 16.0

# Defects applied to the float values before the family is encoded.
PRE_ENCODE = ("nan-weight", "w1-w3-scale-mismatch")

_SHORTHAND = (
    (re.compile(r"^L(\d+)\.E(\d+|\*)\.(w[123])$"), "layers.{0}.ffn.experts.{1}.{2}"),
    (re.compile(r"^L(\d+)\.shared\.(w[123])$"), "layers.{0}.ffn.shared_experts.{1}"),
    (re.compile(r"^L(\d+)\.indexer\.wq_b$"), "layers.{0}.attn.indexer.wq_b"),
    (re.compile(r"^L(\d+)\.(wq_a|wq_b|wkv|wo_a|wo_b)$"), "layers.{0}.attn.{1}"),
)


@dataclass(frozen=True)
class Defect:
    name: str
    family: str

    def __str__(self) -> str:
        return f"{self.name}@{self.family}"


def parse_defects(text: str, families: set[str]) -> list[Defect]:
    """The defects one NAME@WHERE names (several where WHERE has the expert wildcard E*)."""
    name, at, where = text.partition("@")
    if "*" in where:
        pattern = re.escape(_expand(where)).replace(r"\*", r"\d+")
        found = sorted((f for f in families if re.fullmatch(pattern, f)), key=lambda f: int(f.split(".")[4]))
        if not found:
            raise InputError(f"defect location {where!r} names no tensor family of this preset")
        return [parse_defect(f"{name}@{f}", families) for f in found]
    return [parse_defect(text, families)]


def _expand(where: str) -> str:
    for pat, template in _SHORTHAND:
        m = pat.match(where)
        if m:
            return template.format(*m.groups())
    return where


def parse_defect(text: str, families: set[str]) -> Defect:
    name, at, where = text.partition("@")
    if name not in DEFECTS:
        raise InputError(f"unknown defect {name!r}: use one of {', '.join(DEFECTS)} (as NAME@WHERE)")
    if not at or not where:
        raise InputError(f"defect {name} needs a location: {name}@L2.E3.w1, {name}@L1.wq_a or a family name")
    family = where
    for pat, template in _SHORTHAND:
        m = pat.match(where)
        if m:
            family = template.format(*m.groups())
            break
    if family not in families:
        raise InputError(f"defect location {where!r} names no tensor family of this preset (e.g. L1.E0.w1, L1.wq_a)")
    if name == "w1-w3-scale-mismatch":
        if not re.search(r"\.(experts\.\d+|shared_experts)\.w[13]$", family):
            raise InputError(f"w1-w3-scale-mismatch needs an expert's w1 or w3 (e.g. L1.E0.w3), not {where}")
        family = family[:-2] + "w3"
    return Defect(name, family)


def acts_before_encoding(defect: Defect, storage: str) -> bool:
    """nan-weight goes into the float values only where the format cannot store a NaN element (NVFP4,
    MXFP4: the codec turns it into that block's NaN scale); BF16 and FP8 store it as written."""
    return defect.name != "nan-weight" or storage not in ("bf16", "fp8")


def apply_pre_encode(defect: Defect, values: torch.Tensor) -> tuple[torch.Tensor, float | None]:
    """(values, global amax override) for the defects that act before encoding."""
    if defect.name == "nan-weight":
        v = values.clone()
        v[0, 0] = float("nan")
        return v, None
    from fp4check.references.nvfp4 import finite_amax

    return values, float(finite_amax(values)) * W1_W3_MISMATCH_FACTOR


def apply_post_encode(defect: Defect, storage: str, members: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stored members with the defect written into them."""
    m = dict(members)
    nvfp4 = storage in ("nvfp4-modelopt", "nvfp4-ct")
    gkey = "weight_scale_2" if storage == "nvfp4-modelopt" else "weight_global_scale"
    ikey = "input_scale" if storage == "nvfp4-modelopt" else "input_global_scale"
    if defect.name == "bad-input-scale" and nvfp4:
        # decode scales (ModelOpt) shrink, encode scales (compressed-tensors) grow: both amplify activations
        factor = 1 / BAD_INPUT_SCALE_FACTOR if storage == "nvfp4-modelopt" else BAD_INPUT_SCALE_FACTOR
        m[ikey] = m[ikey] * factor
    elif defect.name in ("inf-scale", "zero-global-scale") and nvfp4:
        m[gkey] = torch.full_like(m[gkey], float("inf") if defect.name == "inf-scale" else 0.0)
    elif defect.name == "e4m3-nan-code" and (nvfp4 or storage == "fp8"):
        key = "weight_scale" if nvfp4 else "weight"
        raw = m[key].view(torch.uint8).clone()
        raw[0, 0] = E4M3_NAN_BYTE
        m[key] = raw.view(torch.float8_e4m3fn)
    elif defect.name == "nan-weight" and storage in ("bf16", "fp8"):
        if storage == "bf16":
            m["weight"] = m["weight"].clone()
            m["weight"][0, 0] = float("nan")
        else:
            raw = m["weight"].view(torch.uint8).clone()
            raw[0, 0] = E4M3_NAN_BYTE
            m["weight"] = raw.view(torch.float8_e4m3fn)
    elif (defect.name not in PRE_ENCODE or (defect.name == "w1-w3-scale-mismatch" and not nvfp4)) and not (
        defect.name == "nan-weight"
    ):
        raise InputError(
            f"defect {defect.name} does not apply to {defect.family}, stored as {storage} in this format: "
            "pick an NVFP4 family (e.g. a routed expert in --format modelopt)"
        )
    return m
