"""Reading pickled numpy data (the CIFAR "python version" batches) safely.

The official CIFAR files are Python pickles. ``pickle.load`` on a file under
a user-supplied data root would run whatever code the file names, so these
files are read with an unpickler that admits only numpy arrays and dtypes
(plus the plain dicts, lists, strings and numbers pickle builds natively).
Anything else is a DataError naming the file and the refused global.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from normdyn.core.errors import DataError

__all__ = ["load_array_pickle"]

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
    def __init__(self, fh: Any, path: Path):
        super().__init__(fh, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DataError(
                f"{self.path}: refused to load {module}.{name} (only numpy arrays are allowed in "
                f"this file; is it really a CIFAR batch?)"
            )
        return super().find_class(module, name)


def load_array_pickle(path: Path) -> Any:
    """The object pickled in ``path``, built from numpy arrays and plain containers only."""
    try:
        with open(path, "rb") as fh:
            return _ArrayUnpickler(fh, path).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable pickle of numpy data ({exc})") from None
