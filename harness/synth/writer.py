"""`fp4check synth`: write a synthetic DeepSeek-V4 checkpoint, sharded with an index like the releases.

Families are generated, calibrated and encoded one block at a time (one expert at a time inside a
block) and shards are flushed as they fill, so memory stays near one shard whatever the preset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from fp4check import __version__
from fp4check.config import parse_config
from fp4check.errors import InputError
from fp4check.layout import FamilySpec, expert_of, layer_of, model_families
from fp4check.names import fused_expert_name, to_transformers
from fp4check.references.common import clamped_swiglu, rms_norm
from fp4check.synth import defects as defect_mod
from fp4check.synth.catalog import FORMATS, NAMINGS
from fp4check.synth.formats import encode, quantization_config, storage_of
from fp4check.synth.presets import CALIBRATION_TOKENS, PRESETS, SHARD_BYTES, preset_config
from fp4check.synth.values import family_values, generator

# Bump when the bytes a preset produces change: the cached built-in checkpoint is then regenerated.
GENERATOR_VERSION = 1
STAMP_FILE = "fp4check-synth.json"


@dataclass
class SynthResult:
    path: Path
    tensors: int
    bytes: int
    shards: int
    stamp: dict = field(default_factory=dict)


def _block_key(family: str) -> str:
    layer = layer_of(family)
    return "" if layer is None else (f"layers.{layer}." if isinstance(layer, int) else f"{layer}.")


def _attention_amax(cfg, p: str, v: dict[str, torch.Tensor], h: torch.Tensor) -> dict[str, float]:
    """Input amax of a block's attention (and MTP) projections on the calibration batch h.

    The batch is the embeddings of random token ids; each block sees them through its own norms and
    projections: wq_a/wkv meet attn_norm(h); wq_b and the indexer's wq_b meet q_norm(wq_a(.)). wo_a
    meets the attention output, which is bounded by max |kv| because attention averages kv rows, so
    kv stands in for it; wo_b meets wo_a of that. The residual updates of attention and MoE are not
    applied between blocks (ModelOpt calibrates on the real residual stream).
    """
    eps, a, t = cfg.rms_norm_eps, f"{p}attn.", h.shape[0]
    x = rms_norm(h, v[f"{p}attn_norm"], eps)
    qr = rms_norm(x @ v[f"{a}wq_a"].t(), v[f"{a}q_norm"], eps)
    kv = rms_norm(x @ v[f"{a}wkv"].t(), v[f"{a}kv_norm"], eps)
    o = kv.repeat(1, cfg.num_attention_heads).view(t, cfg.o_groups, -1)
    z = torch.einsum("tgd,grd->tgr", o, v[f"{a}wo_a"].view(cfg.o_groups, cfg.o_lora_rank, -1))
    out = {f"{a}wq_a": x, f"{a}wkv": x, f"{a}wq_b": qr, f"{a}indexer.wq_b": qr, f"{a}wo_a": kv, f"{a}wo_b": z}
    if p.startswith("mtp."):
        out[f"{p}e_proj"] = rms_norm(h, v[f"{p}enorm"], eps)
        out[f"{p}h_proj"] = rms_norm(h, v[f"{p}hnorm"], eps)
    return {k: float(x.abs().amax()) for k, x in out.items()}


def _mlp_amax(cfg, base: str, w1: torch.Tensor, w3: torch.Tensor, xf: torch.Tensor) -> dict[str, float]:
    """Input amax of an expert: w1/w3 meet ffn_norm(h), w2 meets that expert's clamped SwiGLU output."""
    hidden = clamped_swiglu(xf @ w1.t(), xf @ w3.t(), cfg.swiglu_limit)
    a = float(xf.abs().amax())
    return {f"{base}w1": a, f"{base}w3": a, f"{base}w2": float(hidden.abs().amax())}


class _ShardWriter:
    def __init__(self, out: Path, limit: int):
        self.out, self.limit = out, limit
        self.buffer: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[list[str]] = []
        self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        t = t.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if self.buffer and self.size + nbytes > self.limit:
            self.flush()
        self.buffer[name] = t
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        if self.buffer:
            save_file(self.buffer, str(self.out / f"part-{len(self.parts):05d}.tmp"), metadata={"format": "pt"})
            self.parts.append(list(self.buffer))
            self.buffer, self.size = {}, 0

    def finish(self) -> int:
        self.flush()
        n = len(self.parts)
        weight_map = {}
        for i, names in enumerate(self.parts):
            shard = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out / f"part-{i:05d}.tmp", self.out / shard)
            weight_map.update({k: shard for k in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return n


def _stream(
    cfg,
    specs: dict[str, FamilySpec],
    fmt: str,
    seed: int,
    defects: dict[str, defect_mod.Defect],
    tokens: int,
    device: str = "cpu",
) -> Iterator[tuple[FamilySpec, str, dict[str, torch.Tensor]]]:
    """(spec, storage, stored members) for every family, in storage order; values drawn and encoded on
    `device` (a GPU makes a full-size layer in seconds; its random streams differ from the CPU's)."""
    blocks: dict[str, list[FamilySpec]] = {}
    for s in specs.values():
        blocks.setdefault(_block_key(s.name), []).append(s)
    embed = family_values(specs["embed"], cfg, seed, device)
    g = generator(seed, "calibration")
    ids = torch.randint(0, cfg.vocab_size, (tokens,), generator=g, device="cpu").to(device)
    h = embed[ids]
    for key, fams in blocks.items():
        small = {
            s.name: (embed if s.name == "embed" else family_values(s, cfg, seed, device))
            for s in fams
            if expert_of(s.name) is None
        }
        amax: dict[str, float] = {}
        xf = None
        if key:
            amax.update(_attention_amax(cfg, key, small, h))
            xf = rms_norm(h, small[f"{key}ffn_norm"], cfg.rms_norm_eps)
            sh = f"{key}ffn.shared_experts."
            amax.update(_mlp_amax(cfg, sh, small[f"{sh}w1"], small[f"{sh}w3"], xf))
        expert_cache: dict[str, torch.Tensor] = {}
        for s in fams:
            ex = expert_of(s.name)
            if ex is None:
                values = small.pop(s.name)
            else:
                if s.name not in expert_cache:
                    base = s.name.rsplit(".", 1)[0] + "."
                    trio = {
                        f"{base}{w}": family_values(specs[f"{base}{w}"], cfg, seed, device) for w in ("w1", "w2", "w3")
                    }
                    amax.update(_mlp_amax(cfg, base, trio[f"{base}w1"], trio[f"{base}w3"], xf))
                    expert_cache.update(trio)
                values = expert_cache.pop(s.name)
            storage = storage_of(s, fmt)
            d = defects.get(s.name)
            global_amax = None
            if d is not None and d.name in defect_mod.PRE_ENCODE and defect_mod.acts_before_encoding(d, storage):
                if d.name == "w1-w3-scale-mismatch" and not storage.startswith("nvfp4"):
                    raise InputError(
                        f"w1-w3-scale-mismatch needs NVFP4 weights; {s.name} is stored as {storage} in format {fmt}"
                    )
                values, global_amax = defect_mod.apply_pre_encode(d, values)
            members = encode(s, values, storage, amax.get(s.name), global_amax)
            if d is not None:
                members = defect_mod.apply_post_encode(d, storage, members)
            yield s, storage, members


def synthesize(
    out: str | Path,
    preset: str = "tiny",
    fmt: str = "modelopt",
    seed: int = 0,
    defects: list[str] | tuple[str, ...] = (),
    names: str = "deepseek",
    progress: Callable[[int, int, str], None] | None = None,
    device: str = "cpu",
) -> SynthResult:
    """Write a synthetic checkpoint into `out` (created; must not hold a checkpoint already)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if names not in NAMINGS:
        raise InputError(f"unknown naming {names!r}: use one of {', '.join(NAMINGS)}")
    if names == "transformers" and fmt != "bf16":
        raise InputError("transformers' deepseek_v4 names are written for --format bf16 only (its port is BF16)")
    out = Path(out)
    if (out / "config.json").exists():
        raise InputError(f"{out} already holds a checkpoint: pick an empty --out directory")
    cfg_dict = preset_config(preset)
    n_layers = cfg_dict["num_hidden_layers"]
    qc, hf = quantization_config(fmt, n_layers)
    if qc is not None:
        cfg_dict["quantization_config"] = qc
    cfg = parse_config(cfg_dict, hf)
    specs = model_families(cfg)
    parsed = [one for d in defects for one in defect_mod.parse_defects(d, set(specs))]
    by_family = {}
    for d in parsed:
        if d.family in by_family:
            raise InputError(f"two defects target {d.family}: give each family one defect")
        by_family[d.family] = d
    out.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out, SHARD_BYTES[preset])
    fused: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    count = 0
    try:
        stream = _stream(cfg, specs, fmt, seed, by_family, CALIBRATION_TOKENS[preset], device)
        for i, (spec, _storage, members) in enumerate(_on(device, stream)):
            if progress:
                progress(i + 1, len(specs), spec.name)
            for member, t in members.items():
                native = f"{spec.name}.{member}" if member else spec.name
                if names == "transformers":
                    hit = fused_expert_name(native)
                    if hit:
                        fused.setdefault(hit[0], {}).setdefault(hit[1], {})[hit[2]] = t
                        if _fused_complete(hit[0], fused[hit[0]], cfg.n_routed_experts):
                            writer.add(hit[0], _fuse(hit[0], fused.pop(hit[0])))
                            count += 1
                        continue
                    native = to_transformers(native)
                writer.add(native, t)
                count += 1
        shards = writer.finish()
    except BaseException:
        for p in out.glob("part-*.tmp"):
            p.unlink()
        raise
    (out / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    if hf is not None:
        (out / "hf_quant_config.json").write_text(json.dumps(hf, indent=2) + "\n")
    stamp = {
        "generator": "fp4check synth",
        "generator_version": GENERATOR_VERSION,
        "fp4check_version": __version__,
        "torch_version": torch.__version__,
        "preset": preset,
        "format": fmt,
        "names": names,
        "seed": seed,
        "device": device,
        "defects": [str(d) for d in parsed],
    }
    (out / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    return SynthResult(out, count, writer.total, shards, stamp)


def _on(device: str, items: Iterator):
    """Iterate with `device` as torch's default device (the encoders make tensors without naming one)."""
    while True:
        with torch.device(device):
            item = next(items, None)
        if item is None:
            return
        yield item


def _fused_complete(name: str, per_expert: dict[int, dict[str, torch.Tensor]], n: int) -> bool:
    want = {"w2"} if name.endswith("down_proj") else {"w1", "w3"}
    return len(per_expert) == n and all(want <= set(v) for v in per_expert.values())


def _fuse(name: str, per_expert: dict[int, dict[str, torch.Tensor]]) -> torch.Tensor:
    """gate_up_proj [E, 2I, D] (w1 rows then w3 rows) or down_proj [E, D, I]."""
    order = sorted(per_expert)
    if name.endswith("down_proj"):
        return torch.stack([per_expert[e]["w2"] for e in order])
    return torch.stack([torch.cat([per_expert[e]["w1"], per_expert[e]["w3"]]) for e in order])
