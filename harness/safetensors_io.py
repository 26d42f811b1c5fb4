"""Reading safetensors files lazily: headers parsed and validated here, tensor bytes read with pread.

The format is a little-endian u64 header length, a JSON header {name: {dtype, shape, data_offsets}},
then the data. Reading ourselves (instead of mmap through safe_open) gives three things a harness
needs: one clear error naming the file for every kind of corruption, exact accounting of the bytes a
load reads, and reads of a contiguous slice of a tensor (one expert out of a fused [E, ...] tensor).
The tests check every tensor against the safetensors library's own reader.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from fp4check.errors import InputError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype string, e.g. "F8_E4M3"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int
    path: Path

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: Path) -> tuple[dict[str, TensorEntry], int]:
    """Entries of a safetensors file and the number of header bytes read (8 + JSON length)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{path} is not a safetensors file (only {size} bytes): re-download or regenerate it")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise InputError(f"{path} has a corrupt or truncated safetensors header: re-download or regenerate it")
            raw = f.read(n)
    except FileNotFoundError:
        raise InputError(f"{path} is missing: the index names it; restore the shard or fix the index") from None
    except PermissionError:
        raise InputError(f"{path} is not readable: fix its permissions") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a safetensors shard") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path} has a corrupt safetensors header (not JSON): re-download or regenerate it") from None
    data_start = 8 + n
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"{path}: header entry {name!r} is malformed: re-download or regenerate the shard"
            ) from None
        if dtype not in DTYPES:
            raise InputError(f"{path}: tensor {name!r} has dtype {dtype}, which fp4check cannot read")
        entry = TensorEntry(name, dtype, shape, data_start + int(a), int(b) - int(a), path)
        if entry.nbytes != entry.numel * DTYPES[dtype].itemsize or a < 0:
            raise InputError(f"{path}: tensor {name!r} has offsets that do not match its shape: the shard is corrupt")
        if entry.start + entry.nbytes > size:
            raise InputError(f"{path} is truncated: tensor {name!r} ends past the end of the file; re-download it")
        entries[name] = entry
    return entries, data_start


def read_tensor(
    entry: TensorEntry, offset_elems: int = 0, shape: tuple[int, ...] | None = None
) -> tuple[torch.Tensor, int]:
    """Read a tensor, or a contiguous run of its elements starting at offset_elems with the given shape.

    Returns (tensor, bytes read).
    """
    item = entry.torch_dtype.itemsize
    shape = entry.shape if shape is None else shape
    count = 1
    for s in shape:
        count *= s
    if offset_elems + count > entry.numel:
        raise InputError(f"{entry.path}: tensor {entry.name!r} is smaller than the slice requested")
    nbytes = count * item
    try:
        fd = os.open(entry.path, os.O_RDONLY)
    except OSError as e:
        raise InputError(f"cannot open {entry.path}: {e.strerror}") from None
    try:
        buf = bytearray(nbytes)
        view, done = memoryview(buf), 0
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], entry.start + offset_elems * item + done)
            if got <= 0:
                raise InputError(f"{entry.path} is truncated while reading {entry.name!r}: re-download it")
            done += got
    finally:
        os.close(fd)
    data = torch.frombuffer(buf, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
    return data.view(entry.torch_dtype).reshape(shape), nbytes
