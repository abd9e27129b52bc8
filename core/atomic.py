"""Atomic file replacement: temporary file in the same directory, fsync,
os.replace, fsync of the directory. A reader, or a crash at any moment, sees
either the old file or the new one, never a half-written file under the final
name. Temporary names start with ``.tmp-`` so fsck can recognise leftovers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A temporary sibling of ``path``, unique to this process."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")


@contextmanager
def replacing(path: Path, *, copy_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on clean exit it atomically becomes ``path``.

    With ``copy_existing`` the temporary file starts as a copy of ``path``
    (copy-on-write update of a small file such as the run index).
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        if copy_existing:
            shutil.copyfile(path, tmp)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
