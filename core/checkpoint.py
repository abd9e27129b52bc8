"""Reading and writing safetensors checkpoint files.

Writing goes through ``safetensors.torch.save`` (bytes, then an atomic write).
Reading goes through safetensors' own API: :class:`CheckpointFile` opens a
file with ``safetensors.safe_open`` (the header is parsed and validated once,
each tensor is read only when asked for), or parses bytes already in memory
with ``safetensors.torch.load`` or, for a buffer whose header passes the same
checks, as views into it without a copy (:meth:`CheckpointFile.from_bytes`:
the verified read, which hashes the bytes it parses). Every dtype safetensors
knows is supported; its errors become :class:`StoreError` naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import struct
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from normdyn.core.atomic import write_bytes_atomic
from normdyn.core.errors import StoreError

if TYPE_CHECKING:  # pragma: no cover - torch loads when a tensor is read or written, not with the store
    import torch

__all__ = ["CheckpointFile", "ReadBuffers", "write_checkpoint", "sha256_file", "sha256_bytes", "ORDER_KEY"]

ORDER_KEY = "tensor_order"


@functools.cache
def _dtype_names() -> dict[torch.dtype, str]:
    """safetensors' dtype names, as its header and ``get_slice(...).get_dtype()`` spell them."""
    import torch

    return {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
        torch.complex64: "C64",
        **{
            getattr(torch, attr): name
            for attr, name in (
                ("float8_e4m3fn", "F8_E4M3"),
                ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
                ("float8_e5m2", "F8_E5M2"),
                ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
                ("float8_e8m0fnu", "F8_E8M0"),
                ("uint64", "U64"),
                ("uint32", "U32"),
                ("uint16", "U16"),
            )
            if hasattr(torch, attr)
        },
    }


_SAFETENSORS_PREFIXES = ("Error while deserializing header: ", "Error while deserializing: ")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes | bytearray) -> str:
    """Hex sha256 of bytes in memory (the same digest :func:`sha256_file` gives for a file of them)."""
    return hashlib.sha256(data).hexdigest()


#: Metadata key of a file that carries the sha256 of its own tensor data (the bytes after the header,
#: which do not depend on the header), for files that no index records (the resume state).
PAYLOAD_SHA256_KEY = "payload_sha256"


def payload_sha256(data: bytes | bytearray) -> str:
    """The sha256 of a safetensors file's tensor data: everything after its 8-byte length and JSON header."""
    header = int.from_bytes(data[:8], "little")
    return hashlib.sha256(memoryview(data)[8 + header :]).hexdigest()


def write_checkpoint(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], *, self_hash: bool = False
) -> tuple[str, int]:
    """Atomically write ``tensors`` with string ``metadata``; return (sha256, bytes).

    With ``self_hash`` the header also records :func:`payload_sha256` (key :data:`PAYLOAD_SHA256_KEY`),
    so a reader can verify the tensors without an index.
    """
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # safetensors lays tensors out sorted by dtype and name; keep the state-dict order
    from safetensors.torch import save as _st_save

    meta = {**metadata, ORDER_KEY: json.dumps(list(clean))}
    data = _st_save(clean, metadata=meta)
    if self_hash:  # the data section does not depend on the header: serialise again with its hash
        data = _st_save(clean, metadata={**meta, PAYLOAD_SHA256_KEY: payload_sha256(data)})
    write_bytes_atomic(Path(path), data)
    return sha256_bytes(data), len(data)


def _damaged(path: Path, exc: BaseException, size: int, head: bytes) -> StoreError:
    """safetensors' error about ``path`` (``size`` bytes, starting with ``head``) in plain words."""
    detail = str(exc)
    for prefix in _SAFETENSORS_PREFIXES:
        detail = detail.removeprefix(prefix)
    if detail == "header too small":
        return StoreError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    if detail in ("invalid header length", "header too large"):
        claimed = struct.unpack("<Q", head[:8])[0]
        return StoreError(
            f"{path}: corrupted or truncated safetensors header (header claims {claimed} bytes, file has {size})"
        )
    if detail.startswith("incomplete metadata"):
        return StoreError(
            f"{path}: truncated safetensors file, or bytes after its data (the tensors in its header "
            f"do not cover its {size} bytes exactly)"
        )
    if re.search(r"integer `-\d+`, expected usize", detail):
        detail = f"a negative shape or offset: {detail}"
    return StoreError(f"{path}: corrupted safetensors header ({detail})")


class ReadBuffers:
    """Buffers that successive verified reads of one reader reuse (:func:`read_file_bytes`): a buffer
    is handed out again once nothing but this pool refers to it, i.e. no tensor of the checkpoint
    read into it is alive (``torch.frombuffer`` views hold a reference to the buffer, not a buffer
    export, so the test is the reference count, compared with that of a sentinel held the same
    way, whatever the interpreter's counting of temporaries).

    A fresh buffer per checkpoint is a fresh mapping whose pages fault in as the file is read and
    whose release unmaps them; beside a thread that computes, those faults and unmappings contend
    for the process's memory map with the computing thread's own allocations: a 128 x 576 float64
    product took 7.8 ms on average instead of 0.49 ms (p90 48 ms) while another thread allocated
    and touched 64 MiB buffers in a loop (2 CPU cores). At most ``keep`` buffers are held."""

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._buffers: list[bytearray] = []
        self._sentinel: list[bytearray] = [bytearray()]

    def _free(self, i: int) -> bool:
        return sys.getrefcount(self._buffers[i]) <= sys.getrefcount(self._sentinel[0])

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes, reused where one is free (its old contents remain)."""
        for i in range(len(self._buffers)):
            if self._free(i):
                buf = self._buffers[i]
                if len(buf) > size:
                    del buf[size:]  # within the allocation: CPython keeps it
                elif len(buf) < size:
                    buf.extend(bytes(size - len(buf)))
                return buf
        buf = bytearray(size)
        if len(self._buffers) < self.keep:
            self._buffers.append(buf)
        return buf


def read_file_bytes(path: Path, buffers: ReadBuffers | None = None) -> bytearray:
    """The bytes of ``path`` in one read, into a writable buffer (tensors can then be views of it,
    :meth:`CheckpointFile.from_bytes`), one of ``buffers`` where given; a missing or unreadable file
    is a StoreError naming it."""
    try:
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            data = bytearray(size) if buffers is None else buffers.take(size)
            view, got = memoryview(data), 0
            while got < size and (n := fh.readinto(view[got:])):
                got += n
            view.release()
            if got < size:  # the file shrank while being read
                del data[got:]
            data += fh.read()  # or grew
            return data
    except FileNotFoundError:
        raise StoreError(f"{path}: checkpoint file does not exist") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the checkpoint file ({exc.strerror}); check its permissions") from None


def _buffer_views(data: bytearray) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]] | None:
    """The tensors of the safetensors file in ``data`` as views into it, its metadata and its names in
    data-offset order; None where safetensors' own parser must decide (any check failing, a big-endian
    host, a bool or empty tensor, a tensor not aligned to its dtype).

    The checks are safetensors': an 8-byte little-endian header length within the data, a JSON object
    header, string metadata, each tensor's known dtype, non-negative integer shape and offsets whose
    span is exactly its size, and offsets that tile the data section with no gap, overlap or tail.
    """
    import torch

    if sys.byteorder != "little" or len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    start = 8 + n
    if start > len(data):
        return None
    try:
        header = json.loads(bytes(data[8:start]))
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        return None
    dtypes = {name: dtype for dtype, name in _dtype_names().items() if dtype is not torch.bool}
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict) or info.get("dtype") not in dtypes:
            return None
        dtype, shape, offsets = dtypes[info["dtype"]], info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            return None
        numel, (begin, end) = math.prod(shape), offsets
        if numel == 0 or end - begin != numel * dtype.itemsize or (start + begin) % dtype.itemsize:
            return None
        entries.append((begin, end, name, dtype, shape, numel))
    entries.sort(key=lambda e: e[0])
    position = 0
    for begin, end, *_ in entries:
        if begin != position:
            return None
        position = end
    if start + position != len(data):
        return None
    tensors = {
        name: torch.frombuffer(data, dtype=dtype, count=numel, offset=start + begin).reshape(shape)
        for begin, _, name, dtype, shape, numel in entries
    }
    return tensors, dict(meta or {}), [e[2] for e in entries]


def _header_of(data: bytes | bytearray) -> tuple[dict[str, str], list[str]]:
    """The ``__metadata__`` and the tensor names in data-offset order (``safe_open``'s file order)."""
    # safetensors.torch.load returns the tensors only, in an order of its own; the header it
    # has just validated (length prefix, JSON object, string metadata) holds both
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    return dict(meta or {}), sorted(header, key=lambda k: header[k]["data_offsets"][0])


class CheckpointFile:
    """Validated access to one safetensors file.

    ``CheckpointFile(path)`` reads and checks the header only; :meth:`get`
    then reads one tensor, :meth:`load_all` all of them.
    ``CheckpointFile.from_bytes(path, data)`` serves the tensors parsed from
    ``data`` (bytes already read, e.g. to check their hash) without touching
    the file again.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: checkpoint file does not exist")
        if not os.access(self.path, os.R_OK):
            raise StoreError(f"{self.path}: cannot read the checkpoint file (permission denied); check its permissions")
        try:
            self._handle: Any = safe_open(str(self.path), framework="pt")
            self.metadata: dict[str, str] = dict(self._handle.metadata() or {})
            names = list(self._handle.offset_keys())
            self._specs = {name: self._slice_spec(self._handle.get_slice(name)) for name in names}
        except SafetensorError as exc:
            raise self._damaged(exc) from None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the checkpoint file ({exc.strerror})") from None
        self._file_order = names
        self._tensors: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_bytes(cls, path: str | os.PathLike[str], data: bytes | bytearray) -> CheckpointFile:
        """The checkpoint held in ``data`` (the bytes of ``path``).

        A writable buffer (``bytearray``, as :func:`read_file_bytes` returns) whose header passes the
        checks safetensors makes, with every tensor aligned to its dtype, is served as views into
        ``data``, without a copy (:func:`_buffer_views`); anything else is parsed by safetensors,
        whose error then names what is wrong.
        """
        if isinstance(data, bytearray):
            views = _buffer_views(data)
            if views is not None:
                tensors, metadata, file_order = views
                return cls.from_tensors(path, {k: tensors[k] for k in file_order}, metadata)
        try:
            from safetensors.torch import load as _st_load

            tensors = _st_load(bytes(data))
        except SafetensorError as exc:
            raise _damaged(Path(path), exc, len(data), bytes(data[:8])) from None
        metadata, file_order = _header_of(data)
        return cls.from_tensors(path, {k: tensors[k] for k in file_order}, metadata)

    @classmethod
    def from_tensors(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str] | None = None,
    ) -> CheckpointFile:
        """The checkpoint of ``tensors`` already in memory (read from ``path``, which names it in errors),
        in their order unless ``metadata`` gives a ``tensor_order``."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self._handle = None
        self.metadata = dict(metadata or {})
        self._tensors = dict(tensors)
        self._file_order = list(tensors)
        self._specs = {k: (_dtype_names().get(v.dtype, str(v.dtype)), list(v.shape)) for k, v in tensors.items()}
        return self

    def _damaged(self, exc: BaseException) -> StoreError:
        with open(self.path, "rb") as fh:
            head = fh.read(8)
        return _damaged(self.path, exc, self.path.stat().st_size, head)

    @staticmethod
    def _slice_spec(view: Any) -> tuple[str, list[int]]:
        return str(view.get_dtype()), [int(s) for s in view.get_shape()]

    def keys(self) -> list[str]:
        """Tensor names in the order they were saved (state-dict order); for files
        written by other tools, in data-offset order."""
        order = self.metadata.get(ORDER_KEY)
        if order is not None:
            try:
                names = json.loads(order)
            except json.JSONDecodeError:
                names = None
            if isinstance(names, list) and sorted(names) == sorted(self._specs):
                return names
        return list(self._file_order)

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def _spec(self, name: str) -> tuple[str, list[int]]:
        try:
            return self._specs[name]
        except KeyError:
            raise StoreError(f"{self.path}: no tensor {name!r} (has: {', '.join(self.keys())})") from None

    def shape(self, name: str) -> list[int]:
        """Shape of tensor ``name`` without reading it."""
        return list(self._spec(name)[1])

    def dtype(self, name: str) -> str:
        """safetensors dtype name of tensor ``name`` (``F32``, ``BF16``, ``F8_E4M3``...) without reading it."""
        return self._spec(name)[0]

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name``; from a file opened lazily, only its bytes are read."""
        self._spec(name)
        if self._tensors is not None:
            return self._tensors[name]
        try:
            tensor: torch.Tensor = self._handle.get_tensor(name)
        except SafetensorError as exc:
            raise self._damaged(exc) from None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read tensor {name!r} ({exc.strerror})") from None
        return tensor

    def load_all(self) -> dict[str, torch.Tensor]:
        """All tensors, in :meth:`keys` order."""
        return {name: self.get(name) for name in self.keys()}

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs, read lazily one at a time."""
        for name in self.keys():
            yield name, self.get(name)
