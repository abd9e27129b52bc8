"""Linked checkpoints: rows whose weights stay in the user's own files (``normdyn import --link``).

A linked row records, instead of a copy, every file it is read from (absolute
resolved path, size, sha256), how its state dict is taken from them (the
reader, the entry of a torch dict that holds it, the key prefixes stripped)
and its tensor names in the run's order. :func:`open_linked` reads each file
once, checks its size and sha256 against the record, and redoes that
extraction from the verified bytes, so a read gives exactly the tensors that
were checked at import. A sharded checkpoint links every one of its shards.

Torch files are read by :func:`normdyn.core.safe_pickle.load_torch`
(``weights_only=True``); nothing in a linked file ever runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normdyn.core.checkpoint import CheckpointFile, sha256_bytes, sha256_file
from normdyn.core.errors import StoreError
from normdyn.core.safe_pickle import load_torch

if TYPE_CHECKING:  # pragma: no cover - torch loads when a linked row is read
    import torch

__all__ = [
    "LINK_SUFFIX",
    "NESTED_KEYS",
    "READERS",
    "Link",
    "LinkedFile",
    "open_linked",
    "read_linked_bytes",
    "state_dict_of",
    "strip_prefixes",
]

LINK_SUFFIX = ".link.json"
READERS = ("safetensors", "torch")
#: where a torch file's dict may hold its state dict (Lightning: ``state_dict``), tried in this order
NESTED_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class LinkedFile:
    """One file a linked row reads: its absolute resolved path, size and sha256 when it was linked."""

    path: str
    size: int  # bytes
    sha256: str

    @classmethod
    def of(cls, path: str | Path, data: bytes) -> LinkedFile:
        """The record of ``path`` holding ``data`` (the bytes just read from it)."""
        return cls(str(Path(path).resolve()), len(data), sha256_bytes(data))

    def problem(self, *, content: bool = True) -> str | None:
        """Why the file no longer holds what was linked (missing, another size, with ``content`` another
        sha256), or None. Only the size is looked at without ``content`` (a stat, no read)."""
        path = Path(self.path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{path}: linked checkpoint file does not exist"
        except OSError as exc:
            return f"{path}: cannot read the linked checkpoint file ({exc.strerror})"
        if size != self.size:
            return f"{path}: linked checkpoint file changed: {size} bytes, {self.size} when it was linked"
        if content:
            sha = sha256_file(path)
            if sha != self.sha256:
                return (
                    f"{path}: linked checkpoint file changed: sha256 {sha[:12]}..., "
                    f"{self.sha256[:12]}... when it was linked"
                )
        return None


@dataclass(frozen=True)
class Link:
    """How a linked row is read: ``files`` (one, or every shard), the ``reader`` (``safetensors`` or
    ``torch``), the torch dict ``entry`` holding the state dict (None: the file is the state dict), the
    prefixes ``strip``ped from every key, the tensor ``keys`` in the run's order, and the ``source``
    the user imported (a file or a step folder; it names the checkpoint in messages)."""

    files: tuple[LinkedFile, ...]
    reader: str
    keys: tuple[str, ...]
    entry: str | None = None
    strip: tuple[str, ...] = ()
    source: str = ""

    @property
    def sha256(self) -> str:
        """The row's sha256: the file's own, or for shards the sha256 of their hex digests joined by newlines."""
        if len(self.files) == 1:
            return self.files[0].sha256
        return sha256_bytes("\n".join(f.sha256 for f in self.files).encode())

    @property
    def bytes(self) -> int:
        """The row's size: all its files together."""
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        """The record as stored in the index's ``link`` column and the run's ``.link.json`` file."""
        return json.dumps(
            {
                "files": [{"path": f.path, "bytes": f.size, "sha256": f.sha256} for f in self.files],
                "reader": self.reader,
                "entry": self.entry,
                "strip": list(self.strip),
                "keys": list(self.keys),
                "source": self.source,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> Link:
        """The record ``text`` read from ``where``; StoreError naming it when the record is unusable."""
        try:
            obj = json.loads(text)
            files = tuple(LinkedFile(str(f["path"]), int(f["bytes"]), str(f["sha256"])) for f in obj["files"])
            link = cls(
                files,
                str(obj["reader"]),
                tuple(str(k) for k in obj["keys"]),
                None if obj.get("entry") is None else str(obj["entry"]),
                tuple(str(p) for p in obj.get("strip", [])),
                str(obj.get("source", "")),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where}: unusable link record ({type(exc).__name__}: {exc})") from None
        if link.reader not in READERS or not files:
            raise StoreError(f"{where}: unusable link record (reader {link.reader!r}, {len(files)} files)")
        return link

    def problems(self, *, content: bool = True) -> list[str]:
        """One line per file that no longer holds what was linked (see :meth:`LinkedFile.problem`)."""
        return [p for f in self.files if (p := f.problem(content=content))]

    def moved(self, new_paths: Mapping[str, str]) -> Link:
        """This record with the files named in ``new_paths`` (old path -> new path) at their new place."""
        files = tuple(replace(f, path=new_paths.get(f.path, f.path)) for f in self.files)
        return replace(self, files=files)


def strip_prefixes(tensors: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """``tensors`` with each key's leading ``prefixes`` removed, repeatedly (``model.module.x`` -> ``x``)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        name = key
        while prefix := next((p for p in prefixes if p and name.startswith(p)), None):
            name = name[len(prefix) :]
        if name in out:
            raise StoreError(f"keys {key!r} and another both become {name!r} once prefixes are stripped")
        out[name] = tensor
    return out


def state_dict_of(obj: Any, path: Path, entry: str | None | bool = True) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict in a torch file's object ``obj`` and the dict entry it was under.

    ``entry=True`` looks for it (the first of :data:`NESTED_KEYS` holding a mapping, else ``obj``
    itself); a string or None takes exactly that entry (a linked row's recorded one). StoreError
    naming ``path`` when it is not a non-empty mapping of names to tensors.
    """
    import torch

    if entry is True:
        entry = next((k for k in NESTED_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
    if isinstance(entry, str):
        if not isinstance(obj, Mapping) or not isinstance(obj.get(entry), Mapping):
            raise StoreError(f"{path}: no state dict under {entry!r}, where it was when the file was linked")
        obj = obj[entry]
    if not isinstance(obj, Mapping) or not obj:
        raise StoreError(f"{path}: expected a state dict (a mapping of names to tensors), found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise StoreError(f"{path}: entries {', '.join(bad[:5])} are not tensors; save model.state_dict() only")
    return {str(k): v for k, v in obj.items()}, entry if isinstance(entry, str) else None


def read_linked_bytes(path: Path) -> bytes:
    """The bytes of a linked file; StoreError naming it when it is missing or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path}: linked checkpoint file does not exist") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the linked checkpoint file ({exc.strerror})") from None


def _tensors_of(link: Link, file: LinkedFile, data: bytes) -> dict[str, torch.Tensor]:
    path = Path(file.path)
    if link.reader == "safetensors":
        return CheckpointFile.from_bytes(path, data).load_all()
    return state_dict_of(load_torch(path, data), path, link.entry)[0]


def open_linked(link: Link, *, verify: bool = True, hint: str = "") -> CheckpointFile:
    """The checkpoint a linked row describes, with its tensors in the recorded order.

    With ``verify`` each file's size and sha256 must be the recorded ones (the bytes checked are the
    bytes parsed). Every error is a StoreError naming the file, followed by ``hint`` (what to do).
    """
    suffix = f"; {hint}" if hint else ""
    tensors: dict[str, torch.Tensor] = {}
    where: dict[str, str] = {}
    for file in link.files:
        try:
            data = read_linked_bytes(Path(file.path))
        except StoreError as exc:
            raise StoreError(f"{exc}{suffix}") from None
        if verify and (len(data) != file.size or sha256_bytes(data) != file.sha256):
            changed = (
                f"{len(data)} bytes, {file.size} when it was linked"
                if len(data) != file.size
                else f"sha256 {sha256_bytes(data)[:12]}..., {file.sha256[:12]}... when it was linked"
            )
            raise StoreError(f"{file.path}: linked checkpoint file changed: {changed}{suffix}")
        for name, tensor in strip_prefixes(_tensors_of(link, file, data), link.strip).items():
            if name in where:
                raise StoreError(f"{file.path}: tensor {name!r} is also in {where[name]}{suffix}")
            where[name] = file.path
            tensors[name] = tensor.contiguous()
    label = link.source or link.files[0].path
    if set(tensors) != set(link.keys):
        extra = [k for k in tensors if k not in set(link.keys)]
        lacking = [k for k in link.keys if k not in tensors]
        raise StoreError(
            f"{label}: its tensors are not the linked ones (unexpected: {', '.join(extra[:5]) or '-'}; "
            f"missing: {', '.join(lacking[:5]) or '-'}){suffix}"
        )
    return CheckpointFile.from_tensors(label, {k: tensors[k] for k in link.keys})
