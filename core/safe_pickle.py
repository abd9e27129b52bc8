"""Reading pickled numpy data without running a pickle.

Some formats researchers hand us are Python pickles: the CIFAR "python
version" batches, and ``np.save`` of a dict (the reference code's per-run
result files, an object array). ``pickle.load`` would run whatever code such a
file names, so these files are read with an unpickler that admits only numpy
arrays, dtypes and scalars, plus the dicts, lists, tuples, strings and numbers
pickle builds natively. Anything else is a DataError naming the file and the
refused global.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from normdyn.core.errors import DataError

__all__ = ["load_array_pickle", "load_npy"]

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
