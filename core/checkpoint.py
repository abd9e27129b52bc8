"""Reading and writing safetensors checkpoint files.

Writing goes through ``safetensors.torch.save`` (bytes, then an atomic write).
Reading parses the safetensors header (8-byte little-endian length + JSON) and
reads each tensor's byte range with seek/read, so reading one tensor of a
large checkpoint reads only that tensor's bytes, and every defect gets an
error that names the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save as _st_save

from normdyn.core.atomic import write_bytes_atomic
from normdyn.core.errors import StoreError

__all__ = ["CheckpointFile", "write_checkpoint", "sha256_file"]

_DTYPES: dict[str, torch.dtype] = {
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
}
_MAX_HEADER = 100 * 1024 * 1024
ORDER_KEY = "tensor_order"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_checkpoint(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, int]:
    """Atomically write ``tensors`` with string ``metadata``; return (sha256, bytes)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # safetensors lays tensors out sorted by dtype and name; keep the state-dict order
    data = _st_save(clean, metadata={**metadata, ORDER_KEY: json.dumps(list(clean))})
    write_bytes_atomic(Path(path), data)
    return hashlib.sha256(data).hexdigest(), len(data)


class CheckpointFile:
    """Lazy, validated access to one safetensors file.

    The header is read and checked on construction; tensors are read one at a
    time by :meth:`get`, or all at once (one read) by :meth:`load_all`.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: checkpoint file does not exist")
        size = self.path.stat().st_size
        with open(self.path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise StoreError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise StoreError(
                    f"{self.path}: corrupted or truncated safetensors header (header claims {n} bytes, file has {size})"
                )
            raw = fh.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{self.path}: corrupted safetensors header (not JSON: {exc})") from None
        if not isinstance(header, dict):
            raise StoreError(f"{self.path}: corrupted safetensors header (not a JSON object)")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
        end = 0
        for name, info in header.items():
            try:
                dtype = _DTYPES[info["dtype"]]
                shape = [int(s) for s in info["shape"]]
                begin, stop = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise StoreError(f"{self.path}: corrupted safetensors header entry for tensor {name!r}") from None
            numel = 1
            for s in shape:
                numel *= s
            if stop - begin != numel * dtype.itemsize or begin < 0:
                raise StoreError(f"{self.path}: tensor {name!r} has inconsistent offsets {begin}..{stop}")
            self._entries[name] = (dtype, shape, begin, stop)
            end = max(end, stop)
        if self._data_start + end > size:
            raise StoreError(
                f"{self.path}: truncated safetensors file (data needs {self._data_start + end} bytes, file has {size})"
            )

    def keys(self) -> list[str]:
        """Tensor names in the order they were saved (state-dict order); for files
        written by other tools, in data-offset order."""
        order = self.metadata.get(ORDER_KEY)
        if order is not None:
            try:
                names = json.loads(order)
            except json.JSONDecodeError:
                names = None
            if isinstance(names, list) and sorted(names) == sorted(self._entries):
                return names
        return sorted(self._entries, key=lambda k: self._entries[k][2])

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> list[int]:
        """Shape of tensor ``name`` without reading it."""
        return list(self._entry(name)[1])

    def _entry(self, name: str) -> tuple[torch.dtype, list[int], int, int]:
        try:
            return self._entries[name]
        except KeyError:
            raise StoreError(f"{self.path}: no tensor {name!r} (has: {', '.join(self.keys())})") from None

    @staticmethod
    def _tensor(buf: bytes | bytearray | memoryview, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        if len(buf) == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(buf), dtype=dtype).reshape(shape)

    def get(self, name: str) -> torch.Tensor:
        """Read only tensor ``name`` from disk."""
        dtype, shape, begin, stop = self._entry(name)
        with open(self.path, "rb") as fh:
            fh.seek(self._data_start + begin)
            buf = fh.read(stop - begin)
        if len(buf) != stop - begin:
            raise StoreError(f"{self.path}: truncated while reading tensor {name!r}")
        return self._tensor(buf, dtype, shape)

    def load_all(self) -> dict[str, torch.Tensor]:
        """All tensors, in file order, with a single read of the data region."""
        size = max((e[3] for e in self._entries.values()), default=0)
        data = bytearray(size)
        with open(self.path, "rb") as fh:
            fh.seek(self._data_start)
            if fh.readinto(data) != size:
                raise StoreError(f"{self.path}: truncated while reading tensors")
        out = {}
        for name in self.keys():
            dtype, shape, begin, stop = self._entries[name]
            if stop == begin:
                out[name] = torch.empty(shape, dtype=dtype)
            else:  # views into one buffer: no per-tensor copy
                out[name] = torch.frombuffer(
                    data, dtype=dtype, count=(stop - begin) // dtype.itemsize, offset=begin
                ).reshape(shape)
        return out

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs, read lazily one at a time."""
        for name in self.keys():
            yield name, self.get(name)
