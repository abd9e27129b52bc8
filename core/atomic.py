"""Atomic file replacement: temporary file in the same directory, fsync,
os.replace, fsync of the directory. A reader, or a crash at any moment, sees
either the old file or the new one, never a half-written file under the final
name. Temporary names are ``.tmp-PID-NAME``: fsck recognises leftovers by the
prefix, and a writer removes those of dead processes (a SIGKILL mid-write
leaves one) before it writes into the same directory."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"
_TMP_RE = re.compile(rf"^{re.escape(TMP_PREFIX)}(\d+)-")


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


def temp_owner(path: Path) -> int | None:
    """The PID in a temporary file's name (``.tmp-PID-NAME``), None for other names."""
    m = _TMP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process of another user counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def stale_temps(directory: Path) -> list[Path]:
    """Temporary files in ``directory`` whose writer is dead (never those of a live process), sorted."""
    if not Path(directory).is_dir():
        return []
    found = []
    for p in Path(directory).iterdir():
        pid = temp_owner(p)
        if pid is not None and not pid_alive(pid):
            found.append(p)
    return sorted(found)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary files of dead writers in ``directory``; return what was removed."""
    removed = []
    for p in stale_temps(directory):
        try:
            p.unlink()
        except FileNotFoundError:  # another writer removed it first
            continue
        removed.append(p)
    return removed


@contextmanager
def replacing(path: Path, *, copy_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on clean exit it atomically becomes ``path``.

    With ``copy_existing`` the temporary file starts as a copy of ``path``
    (copy-on-write update of a small file such as the run index).
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    remove_stale_temps(path.parent)
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
