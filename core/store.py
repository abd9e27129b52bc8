"""The run store (format ``normdyn-run/1``, see docs/store-format.md).

A store is a directory; each run is a subdirectory holding ``run.h5`` (the
index), ``ckpt/step-NNNNNNNNNN.safetensors`` and ``resume/latest.safetensors``.
A linked row (``normdyn import --link``) keeps its weights in the user's files:
the index's ``link`` column records them (:mod:`normdyn.core.linked`) and
``ckpt/step-NNNNNNNNNN.link.json`` holds the metadata a checkpoint file would.

Every change to ``run.h5`` is a copy-on-write under a file lock: the index is
copied to a temporary file, modified, fsynced and renamed over the original.
The index is small (one row per checkpoint), so the copy is cheap, and a crash
at any moment leaves the previous or the new index, never a torn one. Two
processes that write measures into one run serialise on the lock and each
sees the other's results.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from filelock import FileLock

from normdyn.core import __version__
from normdyn.core.atomic import replacing, write_bytes_atomic
from normdyn.core.checkpoint import (
    PAYLOAD_SHA256_KEY,
    CheckpointFile,
    ReadBuffers,
    payload_sha256,
    read_file_bytes,
    sha256_bytes,
    write_checkpoint,
)
from normdyn.core.errors import StoreError
from normdyn.core.linked import LINK_SUFFIX, Link, open_linked

if TYPE_CHECKING:  # pragma: no cover - torch loads with the tensors, so listing a store does not import it
    import torch

__all__ = [
    "PLACEMENT_KEYS",
    "LATER_KEYS",
    "config_identity",
    "group_identity",
    "FORMAT",
    "INDEX",
    "STATUSES",
    "CHECKPOINT_COLUMNS",
    "METRIC_COLUMNS",
    "Run",
    "MeasureRecord",
    "list_runs",
    "scan_runs",
    "run_dirs",
    "checkpoint_filename",
    "link_filename",
    "LINK_COLUMN",
    "write_index",
]

FORMAT = "normdyn-run/1"
INDEX = "run.h5"
LOCK = "run.h5.lock"
STATUSES = ("running", "complete", "failed")
METRIC_COLUMNS = ("train_error", "train_loss", "test_error", "test_loss")
CHECKPOINT_COLUMNS = ("step", "epoch", "samples_seen", "wall_time", "file", "sha256", "bytes", *METRIC_COLUMNS)
#: the optional column of linked rows: the link record as JSON, "" for a row stored as a copy (a run
#: without linked rows may lack it: stores written before it existed read as before)
LINK_COLUMN = "link"
_INT_COLUMNS = ("step", "samples_seen", "bytes")
_STR_COLUMNS = ("file", "sha256", LINK_COLUMN)
_JSON_ATTRS = ("config", "model_spec", "dataset")
_REQUIRED_ATTRS = ("format", "run_id", "status", *_JSON_ATTRS, "P", "seed")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_LIBVER = "v108"  # HDF5 1.8 file format: large (dense) attributes, readable everywhere
_REPAIR = "run `normdyn store fsck --repair` on its store"
_CHANGED = "the checkpoint changed after it was written; run `normdyn store fsck`"
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


#: Config keys that say where or how a run was computed, not what it computes: left out of the
#: run id (trainer) and of the groups a fit pools (analyzers), so both agree by construction.
PLACEMENT_KEYS = ("store", "data_root", "download", "device", "eval_batch_size", "ensemble")
#: Config keys added after the first store format, with the value that leaves a run as it was: at that
#: value they enter neither the run id nor a fit's groups, so runs made before they existed keep their
#: ids and pool with runs made after.
LATER_KEYS: dict[str, Any] = {"optimizer_params": {}}


def config_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a run computes, from its config: every key but :data:`PLACEMENT_KEYS` and neutral :data:`LATER_KEYS`."""
    return {k: v for k, v in config.items() if k not in PLACEMENT_KEYS and not (k in LATER_KEYS and v == LATER_KEYS[k])}


def group_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the runs of one experiment share: :func:`config_identity` without the grid's axes, seed and P
    (the groups a fit pools and the perceptron engine trains together are the same by construction)."""
    return {k: v for k, v in config_identity(config).items() if k not in ("seed", "P")}


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def checkpoint_filename(step: int) -> str:
    """``ckpt/step-0000000117.safetensors`` for step 117."""
    return f"ckpt/step-{int(step):010d}.safetensors"


def link_filename(step: int) -> str:
    """``ckpt/step-0000000117.link.json``: a linked row's metadata file, for step 117."""
    return f"ckpt/step-{int(step):010d}{LINK_SUFFIX}"


def _fill_value(name: str) -> Any:
    """What a row that lacks column ``name`` holds in it."""
    return "" if name in _STR_COLUMNS else (0 if name in _INT_COLUMNS else np.nan)


def _column_dtype(name: str) -> Any:
    if name in _INT_COLUMNS:
        return np.int64
    if name in _STR_COLUMNS:
        return h5py.string_dtype("utf-8")
    return np.float64


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class MeasureRecord:
    """One measure of one run, aligned row by row with ``/checkpoints``.

    ``values[i]`` is NaN where not computed or failed; ``sha256[i]`` is the
    checkpoint hash the value was computed on ("" if none); ``errors`` maps a
    row index to the error message of a failed computation.
    """

    values: np.ndarray
    plugin: str = ""
    version: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    sha256: list[str] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)

    @classmethod
    def empty(
        cls, n: int, *, plugin: str = "", version: str = "", params: Mapping[str, Any] | None = None
    ) -> MeasureRecord:
        """A record of ``n`` rows, nothing computed."""
        return cls(np.full(n, np.nan), plugin, version, dict(params or {}), [""] * n, {})


class Run:
    """One training run: its index ``run.h5`` and checkpoint files.

    Open an existing run with ``Run(path)``; create one with :meth:`Run.create`.
    Reads open the index briefly and close it again, so a ``Run`` object can be
    held for a long time while other processes write.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.index = self.path / INDEX
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such run directory")
        if not self.index.is_file():
            raise StoreError(
                f"{self.path}: not a normdyn run (no {INDEX}); "
                "run `normdyn store fsck --repair` on its store if checkpoints exist"
            )
        self._lock = FileLock(str(self.path / LOCK))
        # (file, sha256) of row 0 -> (its path, its tensors' dtypes and shapes)
        self._first_layout: dict[tuple[str, str], tuple[Path, dict[str, tuple[str, list[int]]]]] = {}
        attrs = self.attrs  # validates the index once
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{self.index}: format {attrs.get('format')!r} is not {FORMAT!r}")

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        store: str | os.PathLike[str],
        run_id: str,
        *,
        config: Mapping[str, Any],
        model_spec: Mapping[str, Any],
        dataset: Mapping[str, Any],
        P: int,
        seed: int,
        exist_ok: bool = False,
    ) -> Run:
        """Create run ``run_id`` in ``store`` (status ``running``) and return it.

        With ``exist_ok`` an existing run of that id is opened instead; without
        it an existing run is an error (nothing is ever overwritten).
        """
        if not _NAME_RE.match(run_id):
            raise StoreError(f"run id {run_id!r}: use letters, digits, '_', '-', '.' only")
        path = Path(store) / run_id
        if (path / INDEX).exists():
            if exist_ok:
                return cls(path)
            raise StoreError(f"{path}: run already exists (pass exist_ok or choose another id)")
        (path / "ckpt").mkdir(parents=True, exist_ok=True)
        attrs = {
            "format": FORMAT,
            "run_id": run_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            "config": json.dumps(dict(config), sort_keys=True),
            "model_spec": json.dumps(dict(model_spec), sort_keys=True),
            "dataset": json.dumps(dict(dataset), sort_keys=True),
            "P": int(P),
            "seed": int(seed),
            "normdyn_version": __version__,
            "torch_version": _torch_version(),
            "python_version": platform.python_version(),
        }
        write_index(path, attrs, rows=[])
        return cls(path)

    # ------------------------------------------------------------------ access
    @contextmanager
    def _read(self) -> Iterator[h5py.File]:
        try:
            f = h5py.File(self.index, "r")
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.index}: damaged index ({exc}); run `normdyn store fsck --repair`") from None
        try:
            yield f
        except (KeyError, OSError, ValueError) as exc:
            raise StoreError(f"{self.index}: damaged index ({exc}); run `normdyn store fsck --repair`") from None
        finally:
            f.close()

    @contextmanager
    def _mutate(self) -> Iterator[h5py.File]:
        """Copy-on-write update of the index under the run's file lock."""
        with self._lock:
            with replacing(self.index, copy_existing=True) as tmp:
                with h5py.File(tmp, "r+", libver=_LIBVER) as f:
                    yield f

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes, JSON ones (config, model_spec, dataset) decoded."""
        with self._read() as f:
            return self._decoded_attrs(f)

    def _decoded_attrs(self, f: h5py.File) -> dict[str, Any]:
        raw = {k: _decode(v) for k, v in f.attrs.items()}
        for key in _JSON_ATTRS:
            if key in raw:
                try:
                    raw[key] = json.loads(raw[key])
                except (TypeError, json.JSONDecodeError):
                    raise StoreError(f"{self.index}: attribute {key!r} is not valid JSON") from None
        return raw

    def attribute_problems(self) -> dict[str, str]:
        """Root attribute -> message, for each one that is missing or has the wrong type or value."""
        attrs = self.attrs
        return {key: msg for key in _REQUIRED_ATTRS if (msg := self._attr_problem(attrs, key))}

    def _attr_problem(self, attrs: Mapping[str, Any], key: str) -> str | None:
        if key not in attrs:
            return f"{self.index}: attribute {key!r} is missing; {_REPAIR}"
        value = attrs[key]
        if key in _JSON_ATTRS and not isinstance(value, dict):
            kind = _JSON_TYPES.get(type(value), "null")
            return f"{self.index}: attribute {key!r} is a JSON {kind}, not an object; {_REPAIR}"
        if key in ("P", "seed") and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{self.index}: attribute {key!r} is {value!r}, not an integer; {_REPAIR}"
        if key == "run_id" and not isinstance(value, str):
            return f"{self.index}: attribute 'run_id' is {value!r}, not a string; {_REPAIR}"
        if key == "status" and value not in STATUSES:
            return f"{self.index}: attribute 'status' is {value!r}, not one of {', '.join(STATUSES)}; {_REPAIR}"
        return None

    def _attr(self, key: str) -> Any:
        attrs = self.attrs
        problem = self._attr_problem(attrs, key)
        if problem:
            raise StoreError(problem)
        return attrs[key]

    @property
    def run_id(self) -> str:
        return str(self._attr("run_id"))

    @property
    def status(self) -> str:
        return str(self._attr("status"))

    @property
    def P(self) -> int:
        return int(self._attr("P"))

    @property
    def seed(self) -> int:
        return int(self._attr("seed"))

    @property
    def config(self) -> dict[str, Any]:
        """The training config (a JSON object; anything else is a StoreError naming the attribute)."""
        value: dict[str, Any] = self._attr("config")
        return value

    @property
    def model_spec(self) -> dict[str, Any]:
        value: dict[str, Any] = self._attr("model_spec")
        return value

    @property
    def dataset(self) -> dict[str, Any]:
        value: dict[str, Any] = self._attr("dataset")
        return value

    def set_attrs(self, values: Mapping[str, Any]) -> None:
        """Overwrite root attributes (JSON ones given as dicts are encoded); used by repairs."""
        with self._mutate() as f:
            for key, value in values.items():
                f.attrs[key] = json.dumps(value, sort_keys=True) if key in _JSON_ATTRS else value

    def set_status(self, status: str) -> None:
        """Mark the run ``running``, ``complete`` or ``failed``."""
        if status not in STATUSES:
            raise StoreError(f"status {status!r}: use one of {', '.join(STATUSES)}")
        with self._mutate() as f:
            f.attrs["status"] = status

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ------------------------------------------------------------- checkpoints
    def checkpoints(self) -> dict[str, np.ndarray]:
        """The ``/checkpoints`` table as numpy arrays (strings as ``str``).

        A table with a standard column missing, or columns of unequal length,
        is a StoreError: no reader ever sees a partial row.
        """
        with self._read() as f:
            if "checkpoints" not in f or not isinstance(f["checkpoints"], h5py.Group):
                raise StoreError(f"{self.index}: no /checkpoints group; the index is damaged: {_REPAIR}")
            g = f["checkpoints"]
            missing = [c for c in CHECKPOINT_COLUMNS if c not in g]
            if missing:
                raise StoreError(
                    f"{self.index}: /checkpoints lacks column(s) {', '.join(missing)}; the index is damaged: {_REPAIR}"
                )
            out = {}
            for name in g:
                arr = g[name][()]
                if name in _STR_COLUMNS:
                    arr = np.array([_decode(v) for v in arr], dtype=object)
                out[name] = arr
        lengths = {name: len(arr) for name, arr in out.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
            raise StoreError(
                f"{self.index}: /checkpoints columns have unequal lengths ({shown}); the index is damaged: {_REPAIR}"
            )
        return out

    def __len__(self) -> int:
        with self._read() as f:
            return int(f["checkpoints/step"].shape[0])

    def append_checkpoint(
        self,
        state_dict: Mapping[str, torch.Tensor],
        *,
        step: int,
        epoch: float,
        samples_seen: int = 0,
        metrics: Mapping[str, float] | None = None,
    ) -> int:
        """Save ``state_dict`` as the checkpoint of ``step``; return its row index.

        The safetensors file is written atomically first (its metadata holds
        the metrics row and the run attributes, enough to rebuild the index),
        then the row is appended to the index. ``metrics`` may hold the four
        standard columns and any extra float columns (created on first use,
        NaN for earlier rows). Measures get a NaN row.
        """

        def write(path: Path, meta: dict[str, str]) -> dict[str, Any]:
            sha, nbytes = write_checkpoint(path, state_dict, meta)
            return {"sha256": sha, "bytes": nbytes}

        return self._append(
            checkpoint_filename(step), write, step=step, epoch=epoch, samples_seen=samples_seen, metrics=metrics
        )

    def append_linked(
        self,
        link: Link,
        *,
        step: int,
        epoch: float,
        samples_seen: int = 0,
        metrics: Mapping[str, float] | None = None,
    ) -> int:
        """Add the checkpoint of ``step`` by reference to the user's files ``link`` records; return its row.

        Nothing of the weights is copied: the row's ``sha256`` and ``bytes`` are the linked files' (see
        :class:`normdyn.core.linked.Link`), its ``link`` column the record. As for a copy, a metadata file
        (``ckpt/step-N.link.json``: the metadata a checkpoint file carries, plus the record) is written
        atomically before the row, so fsck can rebuild a lost index.
        """

        def write(path: Path, meta: dict[str, str]) -> dict[str, Any]:
            write_bytes_atomic(path, json.dumps({**meta, LINK_COLUMN: link.to_json()}, sort_keys=True).encode())
            return {"sha256": link.sha256, "bytes": link.bytes, LINK_COLUMN: link.to_json()}

        return self._append(
            link_filename(step), write, step=step, epoch=epoch, samples_seen=samples_seen, metrics=metrics
        )

    def _append(
        self,
        file: str,
        write: Callable[[Path, dict[str, str]], dict[str, Any]],
        *,
        step: int,
        epoch: float,
        samples_seen: int,
        metrics: Mapping[str, float] | None,
    ) -> int:
        """Append the row of ``step``: ``write(path, metadata)`` writes its file and returns its columns."""
        with self._read() as f:  # one open for the order check and the attributes: this runs at every point
            steps = f["checkpoints/step"]
            last = int(steps[-1]) if steps.shape[0] else None
            attrs = self._decoded_attrs(f)
        if last is not None and int(step) <= last:
            raise StoreError(f"{self.path}: step {step} is not after the last checkpoint (step {last})")
        row = {
            "step": int(step),
            "epoch": float(epoch),
            "samples_seen": int(samples_seen),
            "wall_time": time.time(),
            "file": file,
        }
        row.update({k: float("nan") for k in METRIC_COLUMNS})
        row.update({k: float(v) for k, v in (metrics or {}).items()})
        meta = {
            "format": FORMAT,
            "run_id": str(attrs["run_id"]),
            "step": str(int(step)),
            "epoch": repr(float(epoch)),
            "metrics": json.dumps({k: v for k, v in row.items() if k not in ("step", "epoch", "file")}),
            "run": json.dumps(_run_attrs_for_metadata(attrs)),
        }
        (self.path / "ckpt").mkdir(exist_ok=True)
        row.update(write(self.path / file, meta))
        with self._mutate() as f:
            _append_row(f, row)
            return int(f["checkpoints/step"].shape[0]) - 1

    def checkpoint(self, i: int, *, verify: bool = True, buffers: ReadBuffers | None = None) -> CheckpointFile:
        """The checkpoint of row ``i`` (negative counts from the end).

        With ``verify`` (the default) the file is read once, its size and
        sha256 are checked against the index, the tensors are parsed from
        those same bytes, and each tensor's dtype and shape must be those of
        the run's first checkpoint; any difference is a StoreError. Without
        it only the header is read and tensors are read lazily, unchecked.

        A linked row (``normdyn import --link``) is read from the user's files, each checked the same
        way against the size and sha256 recorded when it was linked; a missing or changed file is a
        StoreError naming it and saying how to relink it.

        ``buffers``: where a verified read of a stored copy reads its bytes (a reader's
        :class:`~normdyn.core.checkpoint.ReadBuffers`, reused once the previous checkpoint's tensors
        are gone); by default a fresh buffer.
        """
        table = self.checkpoints()
        files = table["file"]
        if not -len(files) <= i < len(files):
            raise StoreError(f"{self.path}: no checkpoint row {i} (run has {len(files)})")
        ck = self._open_row(table, i, verify, buffers)
        if verify and i % len(files):
            self._check_like_first(ck, table)
        return ck

    def links(self) -> list[Link | None]:
        """Per row its link record, or None for a row stored as a copy (every row of a run without
        linked rows); a malformed record is a StoreError naming the index and the row."""
        table = self.checkpoints()
        return [self._link_of(table, i) for i in range(len(table["file"]))]

    def _link_of(self, table: Mapping[str, np.ndarray], i: int) -> Link | None:
        text = str(table[LINK_COLUMN][i]) if LINK_COLUMN in table else ""
        return Link.from_json(text, f"{self.index} row {i % len(table['file'])}") if text else None

    def link_hint(self, step: int) -> str:
        """What to do about a linked file of step ``step`` that moved or changed (appended to errors)."""
        return (
            f"step {step} of run {self.path} reads it (the store holds no copy): if it moved, "
            f"`normdyn store relink {self.path} NEW_FOLDER`; if it changed, put the original back or import "
            "the new file into another run (`normdyn import FOLDER --store STORE --run-id NEW_ID`)"
        )

    def _open_row(
        self, table: Mapping[str, np.ndarray], i: int, verify: bool, buffers: ReadBuffers | None = None
    ) -> CheckpointFile:
        link = self._link_of(table, i)
        expected_bytes, expected_sha = int(table["bytes"][i]), str(table["sha256"][i])
        if link is not None:
            if (link.bytes, link.sha256) != (expected_bytes, expected_sha):
                raise StoreError(f"{self.index}: row {i} disagrees with its own link record; {_REPAIR}")
            return open_linked(link, verify=verify, hint=self.link_hint(int(table["step"][i])))
        path = self.path / table["file"][i]
        if not verify:
            return self._opened(lambda: CheckpointFile(path))
        data = read_file_bytes(path, buffers)
        if len(data) != expected_bytes:
            raise StoreError(f"{path}: size {len(data)} bytes differs from the index ({expected_bytes}); {_CHANGED}")
        sha = sha256_bytes(data)
        if sha != expected_sha:
            raise StoreError(f"{path}: sha256 mismatch (index {expected_sha[:12]}..., file {sha[:12]}...); {_CHANGED}")
        return self._opened(lambda: CheckpointFile.from_bytes(path, data))

    @staticmethod
    def _opened(open_file: Callable[[], CheckpointFile]) -> CheckpointFile:
        try:
            return open_file()
        except StoreError as exc:
            raise StoreError(f"{exc}; run `normdyn store fsck` on its store to check the others") from None

    def _check_like_first(self, ck: CheckpointFile, table: Mapping[str, np.ndarray]) -> None:
        """Refuse a checkpoint whose tensors (names, dtypes, shapes) differ from the first one's."""
        first_key = (str(table["file"][0]), str(table["sha256"][0]))
        if first_key not in self._first_layout:
            ref = self._open_row(table, 0, verify=False)
            self._first_layout = {first_key: (ref.path, {k: (ref.dtype(k), ref.shape(k)) for k in ref.keys()})}
        first_path, first = self._first_layout[first_key]
        names = ck.keys()
        extra = [k for k in names if k not in first]
        lacking = [k for k in first if k not in ck]
        if extra or lacking:
            raise StoreError(
                f"{ck.path}: its tensors differ from the run's first checkpoint {first_path} "
                f"(not in the first: {', '.join(extra) or '-'}; missing: {', '.join(lacking) or '-'}); {_CHANGED}"
            )
        for name in names:
            dtype, shape = ck.dtype(name), ck.shape(name)
            if (dtype, shape) != first[name]:
                raise StoreError(
                    f"{ck.path}: tensor {name!r} is {dtype} {shape}, but {first[name][0]} {first[name][1]} "
                    f"in the run's first checkpoint {first_path}; {_CHANGED}"
                )

    def replace_links(self, links: Mapping[int, Link]) -> None:
        """Record linked rows' files at new places (``normdyn store relink``), in one atomic update.

        Each new record must describe the same content (sha256 and size) as the row's; the row's
        metadata file is rewritten first, then the index.
        """
        table = self.checkpoints()
        for i, link in links.items():
            if self._link_of(table, i) is None or (link.sha256, link.bytes) != (table["sha256"][i], table["bytes"][i]):
                raise StoreError(f"{self.index}: row {i} is not a linked row of this content; nothing relinked")
        for i, link in links.items():
            path = self.path / str(table["file"][i])
            try:
                meta = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # fsck reports the metadata file; the index is what reads use
            write_bytes_atomic(path, json.dumps({**meta, LINK_COLUMN: link.to_json()}, sort_keys=True).encode())
        with self._mutate() as f:
            column = f[f"checkpoints/{LINK_COLUMN}"]
            for i, link in links.items():
                column[i] = link.to_json()

    def load_state_dict(self, i: int, *, verify: bool = True) -> dict[str, torch.Tensor]:
        """All tensors of checkpoint row ``i``, hash-verified as :meth:`checkpoint` does."""
        return self.checkpoint(i, verify=verify).load_all()

    # ----------------------------------------------------------------- resume
    def save_resume(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Atomically store the resume state (tensors plus a JSON-able dict).

        The index does not record this file (it is replaced at every point), so it carries the sha256 of
        its own tensor data, which :meth:`load_resume` verifies.
        """
        (self.path / "resume").mkdir(exist_ok=True)
        write_checkpoint(
            self.path / "resume" / "latest.safetensors",
            tensors,
            {"format": FORMAT, "resume": json.dumps(meta)},
            self_hash=True,
        )

    def load_resume(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The resume state saved last (its tensor data verified against its sha256), or None if there is none.

        A file written before resume states carried their hash is read unverified.
        """
        path = self.path / "resume" / "latest.safetensors"
        if not path.exists():
            return None
        data = read_file_bytes(path)
        ck = CheckpointFile.from_bytes(path, data)
        expected = ck.metadata.get(PAYLOAD_SHA256_KEY)
        if expected is not None and payload_sha256(data) != expected:
            raise StoreError(
                f"{path}: the resume state is damaged (its tensors' sha256 differs from the one written with "
                "them); the run cannot continue from it: remove the file to restart the run from step 0 (its "
                "stored checkpoints are kept), or train the config again into another store"
            )
        try:
            meta = json.loads(ck.metadata["resume"])
        except (KeyError, json.JSONDecodeError):
            raise StoreError(f"{path}: resume metadata missing or not JSON") from None
        return ck.load_all(), meta

    # --------------------------------------------------------------- measures
    def measures(self) -> list[str]:
        """Names of the measures stored for this run."""
        with self._read() as f:
            return sorted(f["measures"]) if "measures" in f else []

    def read_measure(self, name: str) -> MeasureRecord | None:
        """The stored record of measure ``name``, or None if never computed."""
        with self._read() as f:
            if f"measures/{name}" not in f:
                return None
            d = f[f"measures/{name}"]
            values = np.asarray(d[()], dtype=np.float64)
            n = int(f["checkpoints/step"].shape[0])
            if values.shape != (n,):
                raise StoreError(
                    f"{self.index}: measure {name!r} has {values.size} values for {n} checkpoints; "
                    f"{_REPAIR} (it sets the measure aside, to be recomputed)"
                )
            at = d.attrs
            sha = [_decode(s) for s in at.get("sha256", [])]
            return MeasureRecord(
                values=values,
                plugin=str(_decode(at.get("plugin", ""))),
                version=str(_decode(at.get("version", ""))),
                params=json.loads(_decode(at.get("params", "{}"))),
                sha256=sha + [""] * (len(values) - len(sha)),
                errors={int(k): v for k, v in json.loads(_decode(at.get("errors", "{}"))).items()},
            )

    def write_measure(self, name: str, record: MeasureRecord) -> None:
        """Store ``record`` as ``/measures/name`` (replacing an older record).

        The record must have one row per checkpoint. Only this measure's
        dataset is touched; other measures written concurrently are kept.
        """
        if not _NAME_RE.match(name):
            raise StoreError(f"measure name {name!r}: use letters, digits, '_', '-', '.' only")
        with self._mutate() as f:
            n = int(f["checkpoints/step"].shape[0])
            if len(record.values) != n or len(record.sha256) != n:
                raise StoreError(
                    f"{self.index}: measure {name!r} has {len(record.values)} values and "
                    f"{len(record.sha256)} hashes for {n} checkpoints"
                )
            _put_measure(f, name, record)

    def table_rows(self) -> list[dict[str, Any]]:
        """The ``/checkpoints`` table as one dict per row (python scalars)."""
        table = self.checkpoints()
        n = len(table["step"])
        return [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in table.items()} for i in range(n)]

    def replace_table(self, rows: Sequence[Mapping[str, Any]], measures: Mapping[str, MeasureRecord]) -> None:
        """Replace ``/checkpoints`` by ``rows`` and write ``measures`` (aligned with them), in one atomic
        update; used by fsck to index orphan checkpoints. Measures not named are left as they are."""
        with self._mutate() as f:
            _fill_checkpoints(f, rows)
            for name, record in measures.items():
                _put_measure(f, name, record)

    def delete_measures(self, names: list[str]) -> None:
        """Remove the stored records of measures ``names`` in one atomic update (fsck's repair of a
        record that no longer fits the table; the caller keeps a copy of the old index)."""
        with self._mutate() as f:
            for name in names:
                if f"measures/{name}" in f:
                    del f[f"measures/{name}"]


def _put_measure(f: h5py.File, name: str, record: MeasureRecord) -> None:
    g = f.require_group("measures")
    if name in g:
        del g[name]
    d = g.create_dataset(name, data=np.asarray(record.values, dtype=np.float64), maxshape=(None,))
    d.attrs["plugin"] = record.plugin
    d.attrs["version"] = record.version
    d.attrs["params"] = json.dumps(record.params, sort_keys=True)
    d.attrs["sha256"] = np.array(record.sha256, dtype=h5py.string_dtype("utf-8"))
    d.attrs["errors"] = json.dumps({str(k): v for k, v in sorted(record.errors.items())})


def _run_attrs_for_metadata(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The run attributes copied into every checkpoint (for index rebuilds)."""
    return {k: v for k, v in attrs.items() if k != "status"}


def _append_row(f: h5py.File, row: Mapping[str, Any]) -> None:
    g = f["checkpoints"]
    n = int(g["step"].shape[0])
    for name in set(row) - set(g):
        g.create_dataset(name, data=_column(name, [_fill_value(name)] * n), maxshape=(None,), chunks=True)
    for name in g:
        d = g[name]
        d.resize((n + 1,))
        d[n] = row.get(name, _fill_value(name))
    if "measures" in f:
        for d in f["measures"].values():
            d.resize((n + 1,))
            d[n] = np.nan
            sha = list(d.attrs.get("sha256", []))
            d.attrs["sha256"] = np.array([_decode(s) for s in sha] + [""], dtype=h5py.string_dtype("utf-8"))


def _fill_checkpoints(f: h5py.File, rows: Sequence[Mapping[str, Any]]) -> None:
    """(Re)create ``/checkpoints`` holding ``rows``; extra keys become float columns."""
    if "checkpoints" in f:
        del f["checkpoints"]
    columns = list(CHECKPOINT_COLUMNS) + sorted({k for r in rows for k in r} - set(CHECKPOINT_COLUMNS))
    g = f.create_group("checkpoints")
    for name in columns:
        data = _column(name, [r.get(name, _fill_value(name)) for r in rows])
        g.create_dataset(name, data=data, maxshape=(None,), chunks=True)


def _column(name: str, values: Sequence[Any]) -> np.ndarray:
    return np.array(values, dtype=_column_dtype(name))


def write_index(run_dir: str | os.PathLike[str], attrs: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write a fresh ``run.h5`` in ``run_dir`` with root ``attrs`` and checkpoint ``rows``, atomically,
    under the run's lock (creation, and fsck's rebuild from the checkpoint files)."""
    run_dir = Path(run_dir)
    with FileLock(str(run_dir / LOCK)), replacing(run_dir / INDEX) as tmp:
        with h5py.File(tmp, "w", libver=_LIBVER) as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            _fill_checkpoints(f, rows)


def run_dirs(store: str | os.PathLike[str]) -> list[Path]:
    """Subdirectories of ``store`` that hold a run (an index or checkpoints), sorted."""
    root = Path(store)
    if not root.exists():
        raise StoreError(f"{root}: no such store directory")
    if not root.is_dir():
        raise StoreError(f"{root}: not a directory (a store is a directory of runs)")
    if (root / INDEX).exists():
        raise StoreError(f"{root}: this is a run directory, not a store; pass its parent")
    return [p for p in sorted(root.iterdir()) if (p / INDEX).is_file() or (p / "ckpt").is_dir()]


def scan_runs(store: str | os.PathLike[str]) -> tuple[list[Run], list[StoreError]]:
    """The readable runs of ``store``, and one error per run that cannot be opened.

    Batch commands use this to report a damaged run and carry on with the rest.
    """
    runs: list[Run] = []
    errors: list[StoreError] = []
    for path in run_dirs(store):
        try:
            runs.append(Run(path))
        except StoreError as exc:
            errors.append(exc)
    return runs, errors


def list_runs(store: str | os.PathLike[str]) -> list[Run]:
    """The runs of ``store``, sorted by id; raises on the first damaged run."""
    runs, errors = scan_runs(store)
    if errors:
        raise errors[0]
    return runs
