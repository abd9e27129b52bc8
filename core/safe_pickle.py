"""Reading pickled numpy data without running a pickle.

Some formats researchers hand us are Python pickles: the CIFAR "python
version" batches, and ``np.save`` of a dict (the reference code's per-run
result files, an object array). ``pickle.load`` would run whatever code such a
file names, so these files are read with an unpickler that admits only numpy
arrays, dtypes and scalars, plus the dicts, lists, tuples, strings and numbers
pickle builds natively. Anything else is a DataError naming the file and the
refused global.

Torch files (``.pt``, ``.bin``, Lightning's ``.ckpt``) are read by
:func:`load_torch`: ``torch.load(weights_only=True)``, torch's own restricted
unpickler, with a short allow-list of plain-data types that real Lightning
checkpoints carry in ``hyper_parameters`` (``argparse.Namespace``, pathlib
paths, Lightning's ``AttributeDict``). Lightning is never imported: its
``AttributeDict`` is admitted under its pickled names as a stand-in that builds
a plain dict, and paths are built as pure paths, which never touch the file
system. Anything else (a function, a class with its own ``__reduce__``) is a
StoreError naming the file and the refused type; nothing in the file runs.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pathlib
import pickle
import re
import threading
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from normdyn.core.errors import DataError, StoreError

__all__ = ["load_array_pickle", "load_npy", "load_torch", "TORCH_ALLOWED"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 carry raw bytes as latin-1 text
}


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, fh: BinaryIO, path: Path, what: str):
        super().__init__(fh, encoding="latin1")
        self.path = path
        self.what = what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DataError(
                f"{self.path}: refused to load {module}.{name} (only numpy arrays, dicts, lists and numbers "
                f"are allowed in {self.what}; the file may carry code)"
            )
        return super().find_class(module, name)


def _unpickle(fh: BinaryIO, path: Path, what: str) -> Any:
    try:
        return _ArrayUnpickler(fh, path, what).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a readable pickle of numpy data ({exc})") from None


def load_array_pickle(path: str | os.PathLike[str], what: str = "this file") -> Any:
    """The object pickled in ``path``, built from numpy arrays and plain containers only."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _unpickle(fh, path, what)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def load_npy(path: str | os.PathLike[str], what: str = "this file") -> Any:
    """The contents of a ``.npy`` file: a plain array read with ``allow_pickle=False``, or, for an
    object array (``np.save`` of a dict or list), the object rebuilt by the restricted unpickler;
    a 0-d object array gives back the object it holds."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            try:
                version = npy_format.read_magic(fh)
                if version == (1, 0):
                    _, _, dtype = npy_format.read_array_header_1_0(fh)
                else:
                    _, _, dtype = npy_format.read_array_header_2_0(fh)
            except ValueError as exc:
                raise DataError(f"{path}: not a .npy file ({exc})") from None
            if not dtype.hasobject:
                fh.seek(0)
                return np.load(fh, allow_pickle=False)
            obj = _unpickle(fh, path, what)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.ndim == 0:
        return obj.item()
    return obj


class _AttributeDict:
    """Stands in for Lightning's ``AttributeDict`` (a dict subclass): what torch's unpickler creates
    for it is a plain dict, which the unpickler then fills."""

    def __new__(cls, *args: Any) -> Any:  # the unpickler's NEWOBJ calls cls.__new__(cls, *args)
        return {}


_ATTRIBUTE_DICT_NAMES = (
    "lightning.fabric.utilities.data.AttributeDict",  # lightning >= 2.0
    "lightning_fabric.utilities.data.AttributeDict",  # the standalone lightning_fabric / pytorch_lightning 2.x
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",  # pytorch_lightning 1.x
)
_PATHS = {"PosixPath": pathlib.PurePosixPath, "WindowsPath": pathlib.PureWindowsPath}
_PATHS.update({"PurePosixPath": pathlib.PurePosixPath, "PureWindowsPath": pathlib.PureWindowsPath})

#: (object, pickled name) pairs torch.load may build beyond tensors, dicts, lists and numbers
TORCH_ALLOWED: tuple[tuple[Any, str], ...] = (
    (argparse.Namespace, "argparse.Namespace"),
    (collections.OrderedDict, "collections.OrderedDict"),
    *((_AttributeDict, name) for name in _ATTRIBUTE_DICT_NAMES),
    *((cls, f"{module}.{name}") for name, cls in _PATHS.items() for module in ("pathlib", "pathlib._local")),
)

_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
#: torch's safe_globals adds to, and on exit restores, one process-wide set: two loads at once on two
#: threads (analyze reads the next checkpoint on a reader thread) would each drop the other's admission
_TORCH_LOAD = threading.Lock()


def load_torch(path: str | os.PathLike[str], data: bytes) -> Any:
    """The object ``torch.save``d in ``data`` (the bytes of ``path``), unpickled by
    ``torch.load(weights_only=True)`` with :data:`TORCH_ALLOWED` admitted; StoreError naming the file
    and the refused type for anything else, or for bytes that are not a torch file."""
    import torch

    try:
        with _TORCH_LOAD, torch.serialization.safe_globals(list(TORCH_ALLOWED)):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = _GLOBAL_RE.search(text)
        if found:
            what = (
                f"holds a pickled {found.group(1)}, which is not a tensor, a plain container or a known-harmless "
                "type (argparse.Namespace, pathlib paths, OrderedDict, Lightning's AttributeDict)"
            )
        else:
            after = text.split("WeightsUnpickler error:", 1)[-1]
            detail = next((line.strip() for line in after.splitlines() if line.strip()), "unreadable content")
            what = f"is not a torch file of tensors and plain data (torch's weights-only reader: {detail})"
        raise StoreError(
            f"{path}: refused: the file {what}; nothing in it was run. Re-save the weights as a plain state "
            "dict (torch.save(model.state_dict(), ...)) or as safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise StoreError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from None
