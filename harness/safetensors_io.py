"""Reading safetensors files lazily: headers parsed and validated here, tensor bytes read with pread.

The format is a little-endian u64 header length, a JSON header {name: {dtype, shape, data_offsets}},
then the data. Reading ourselves (instead of mmap through safe_open) gives three things a harness
needs: one clear error naming the file for every kind of corruption, exact accounting of the bytes a
load reads, and reads of a contiguous slice of a tensor (one expert out of a fused [E, ...] tensor).
The tests check every tensor against the safetensors library's own reader.
"""

from __future__ import annotations

import gc
import json
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from fp4check.errors import InputError

if TYPE_CHECKING:
    import torch

# safetensors dtype -> (torch dtype name, bytes per element). torch is imported only to read data,
# so commands that need headers alone (info) start without it.
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


def torch_dtype(dtype: str) -> torch.dtype:
    import torch

    return getattr(torch, DTYPES[dtype][0])


class TensorEntry(NamedTuple):
    name: str
    dtype: str  # safetensors dtype string, e.g. "F8_E4M3"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int
    path: Path

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1]


def read_header(path: Path) -> tuple[dict[str, TensorEntry], int]:
    """Entries of a safetensors file and the number of header bytes read (8 + JSON length)."""
    with gc_paused():
        return _read_header(path)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while parsing large JSON: it only allocates, never cycles,
    and collections triggered by its many small objects cost more than the parse (measured ~2x)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()  # what was parsed lives as long as the checkpoint: never scan it again
        if was:
            gc.enable()


def _read_header(path: Path) -> tuple[dict[str, TensorEntry], int]:
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
    header.pop("__metadata__", None)
    new = TensorEntry._make  # the loop runs once per tensor: 145k times for a Pro index
    for name, info in header.items():
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            want = math.prod(shape) * DTYPES[dtype][1]
        except KeyError:
            if isinstance(info, dict) and info.get("dtype") not in DTYPES and "shape" in info:
                raise InputError(
                    f"{path}: tensor {name!r} has dtype {info.get('dtype')}, which fp4check cannot read"
                ) from None
            raise InputError(
                f"{path}: header entry {name!r} is malformed: re-download or regenerate the shard"
            ) from None
        except (TypeError, ValueError):
            raise InputError(
                f"{path}: header entry {name!r} is malformed: re-download or regenerate the shard"
            ) from None
        if b - a != want or a < 0:
            raise InputError(f"{path}: tensor {name!r} has offsets that do not match its shape: the shard is corrupt")
        if data_start + b > size:
            raise InputError(f"{path} is truncated: tensor {name!r} ends past the end of the file; re-download it")
        entries[name] = new((name, dtype, shape, data_start + a, want, path))
    return entries, data_start


def read_tensor(
    entry: TensorEntry, offset_elems: int = 0, shape: tuple[int, ...] | None = None
) -> tuple[torch.Tensor, int]:
    """Read a tensor, or a contiguous run of its elements starting at offset_elems with the given shape.

    Returns (tensor, bytes read).
    """
    import torch

    item = entry.itemsize
    shape = entry.shape if shape is None else shape
    count = math.prod(shape)
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
    return data.view(torch_dtype(entry.dtype)).reshape(shape), nbytes
