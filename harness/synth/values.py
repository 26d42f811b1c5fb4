"""Deterministic, realistic float values for every family of a synthetic model.

Realistic means the scales matter: linear weights are heavy-tailed (Student-t, 5 degrees of freedom)
with a log-normal spread per output row, per input column and per expert, so block scales and global
scales differ across blocks, rows, experts, and between w1 and w3; embeddings carry a few outlier
channels, as LLM hidden states do, so activation amax sits far above the typical value.

Every family draws from its own generator seeded by (seed, family name): the same seed gives the same
bytes, and adding a family changes no other.
"""

from __future__ import annotations

import math
import zlib

import torch

from fp4check.config import ModelConfig
from fp4check.layout import FamilySpec

OUTLIER_CHANNELS = 4
OUTLIER_GAIN = 24.0


def generator(seed: int, family: str, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + zlib.crc32(family.encode())) % (1 << 63))


def _student_t(shape: tuple[int, ...], g: torch.Generator, device: str, df: int = 5) -> torch.Tensor:
    z = torch.randn(shape, generator=g, device=device)
    chi2 = sum(torch.randn(shape, generator=g, device=device) ** 2 for _ in range(df))
    return z / torch.sqrt(chi2 / df)


def _linear(shape: tuple[int, ...], g: torch.Generator, device: str) -> torch.Tensor:
    n, k = shape
    rows = torch.exp(0.3 * torch.randn(n, 1, generator=g, device=device))
    cols = torch.exp(0.3 * torch.randn(1, k, generator=g, device=device))
    family_gain = math.exp(0.5 * float(torch.randn(1, generator=g, device=device)))
    return _student_t(shape, g, device) * rows * cols * (family_gain / math.sqrt(k))


def family_values(spec: FamilySpec, cfg: ModelConfig, seed: int, device: str = "cpu") -> torch.Tensor:
    """float32 (int64 for tid2eid) values of one family, before any storage format is applied."""
    g = generator(seed, spec.name, device)
    name, shape = spec.name, spec.shape
    if spec.role == "int64":  # tid2eid: num_experts_per_tok distinct experts per token id
        keys = torch.rand(shape[0], cfg.n_routed_experts, generator=g, device=device)
        return keys.argsort(dim=1)[:, : shape[1]].to(torch.int64)
    if name == "embed":
        gain = torch.ones(shape[1], device=device)
        gain[torch.randperm(shape[1], generator=g, device=device)[:OUTLIER_CHANNELS]] = OUTLIER_GAIN
        return torch.randn(shape, generator=g, device=device) * gain
    if len(shape) == 1 and spec.role == "bf16":  # RMSNorm weights around 1
        return torch.exp(0.2 * torch.randn(shape, generator=g, device=device))
    if spec.role == "fp32":
        tail = name.rsplit(".", 1)[-1]
        if tail.endswith("_fn"):
            return torch.randn(shape, generator=g, device=device) / math.sqrt(shape[-1])
        if tail.endswith("_scale"):
            return 0.5 + 0.1 * torch.rand(shape, generator=g, device=device)
        if tail.endswith("_base"):
            return 0.5 * torch.randn(shape, generator=g, device=device)
        if tail == "ape":
            return 0.1 * torch.randn(shape, generator=g, device=device)
        if tail == "bias":  # router correction bias: selection only
            return 0.5 * torch.randn(shape, generator=g, device=device)
        return torch.randn(shape, generator=g, device=device)  # attn_sink
    return _linear(shape, g, device)
