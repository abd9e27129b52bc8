"""Store verification and repair (``normdyn store fsck [--repair]``).

Checks per run: the index opens and has the right format; every indexed
checkpoint exists, has the recorded size and sha256, and its metadata names
this run and step; no checkpoint file is missing from the index (an orphan is
what a crash between writing a checkpoint and indexing it leaves behind); no
stale temporary files.

Repair never deletes or rewrites a checkpoint file. A damaged index is moved
aside (``run.h5.damaged-TIMESTAMP``) and rebuilt from the checkpoints'
metadata; orphans are indexed (measures are kept, matched by step); stale
temporary files of dead writers (never complete, never under a final name)
are removed, those of live writers left alone; root attributes with a wrong
type or value are restored from the newest checkpoint's metadata; a measure
record that does not fit the table is removed after a copy of the index is
kept (``run.h5.damaged-TIMESTAMP``). A run directory that cannot be written
is one problem line; the other runs are still checked.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normdyn.core.atomic import stale_temps
from normdyn.core.checkpoint import CheckpointFile, sha256_file
from normdyn.core.errors import StoreError
from normdyn.core.store import (
    FORMAT,
    INDEX,
    MeasureRecord,
    Run,
    checkpoint_filename,
    run_dirs,
    write_index,
)

__all__ = ["FsckReport", "fsck_run", "fsck_store"]


@dataclass
class FsckReport:
    """What fsck found in one run and what it repaired."""

    path: Path
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem is left unrepaired."""
        return not self.problems


@dataclass
class _Found:
    """A readable checkpoint file and the row its metadata describes."""

    file: str
    row: dict[str, Any]
    run_attrs: dict[str, Any]
    layout: dict[str, tuple[str, list[int]]]


def _read_checkpoint(run_dir: Path, rel: str) -> _Found:
    ck = CheckpointFile(run_dir / rel)
    meta = ck.metadata
    try:
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        step = int(meta["step"])
        row = {"step": step, "epoch": float(meta["epoch"]), "file": rel}
        row.update(json.loads(meta["metrics"]))
        run_attrs = json.loads(meta["run"])
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise StoreError(f"{ck.path}: checkpoint metadata unusable ({exc})") from None
    if rel != checkpoint_filename(step):
        raise StoreError(f"{ck.path}: metadata says step {step}, file name disagrees")
    path = run_dir / rel
    row["sha256"] = sha256_file(path)
    row["bytes"] = path.stat().st_size
    return _Found(rel, row, run_attrs, {k: (ck.dtype(k), ck.shape(k)) for k in ck.keys()})


def _index_attrs(run_attrs: dict[str, Any]) -> dict[str, Any]:
    attrs = dict(run_attrs)
    for key in ("config", "model_spec", "dataset"):
        if not isinstance(attrs.get(key), str):
            attrs[key] = json.dumps(attrs.get(key, {}), sort_keys=True)
    attrs["status"] = "failed"  # unknown after a rebuild: resumable, never claimed complete
    return attrs


def _stale_temps(run_dir: Path) -> list[Path]:
    return [p for d in (run_dir, run_dir / "ckpt", run_dir / "resume") for p in stale_temps(d)]


def _scan_files(run_dir: Path, report: FsckReport) -> dict[str, _Found]:
    found: dict[str, _Found] = {}
    ckpt = run_dir / "ckpt"
    for path in sorted(ckpt.glob("step-*.safetensors")) if ckpt.is_dir() else []:
        rel = f"ckpt/{path.name}"
        try:
            found[rel] = _read_checkpoint(run_dir, rel)
        except StoreError as exc:
            report.problems.append(str(exc))
    return found


def _rebuild_index(run_dir: Path, found: dict[str, _Found], report: FsckReport) -> None:
    """Move a damaged index aside and write a new one from the checkpoint files."""
    if not found:
        report.problems.append(f"{run_dir}: no readable checkpoint to rebuild the index from")
        return
    index = run_dir / INDEX
    if index.exists():
        aside = run_dir / f"{INDEX}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(index, aside)
        report.repaired.append(f"{index}: damaged index moved to {aside.name}")
    rows = sorted((f.row for f in found.values()), key=lambda r: r["step"])
    newest = max(found.values(), key=lambda f: f.row["step"])
    write_index(run_dir, _index_attrs(newest.run_attrs), rows)
    report.repaired.append(f"{index}: rebuilt from {len(rows)} checkpoint files")


def _index_orphans(run: Run, orphans: list[_Found], report: FsckReport) -> None:
    """Add orphan checkpoints to a healthy index in one atomic update; every
    measure is kept, its rows matched by step, the new rows NaN."""
    old_rows = run.table_rows()
    rows = sorted(old_rows + [o.row for o in orphans], key=lambda r: r["step"])
    new_pos = {int(r["step"]): j for j, r in enumerate(rows)}
    moved = [new_pos[int(r["step"])] for r in old_rows]
    measures = {}
    for name in run.measures():
        rec = run.read_measure(name)
        if rec is None:
            continue
        new = MeasureRecord.empty(len(rows), plugin=rec.plugin, version=rec.version, params=rec.params)
        for i, j in enumerate(moved):
            new.values[j], new.sha256[j] = rec.values[i], rec.sha256[i]
            if i in rec.errors:
                new.errors[j] = rec.errors[i]
        measures[name] = new
    run.replace_table(rows, measures)
    report.repaired.append(
        f"{run.index}: indexed {len(orphans)} orphan checkpoint(s): " + ", ".join(o.file for o in orphans)
    )


def _check_attrs(run: Run, found: dict[str, _Found], report: FsckReport, repair: bool) -> bool:
    """Report (and with ``repair`` restore from the newest checkpoint) bad root attributes; True if all are fine."""
    problems = run.attribute_problems()
    if not problems:
        return True
    if not repair or not found:
        report.problems.extend(problems.values())
        return False
    newest = max(found.values(), key=lambda f: f.row["step"])
    source = {**newest.run_attrs, "status": "failed"}  # as after a rebuild: resumable, never claimed complete
    restorable = {key: source[key] for key in problems if key in source}
    if restorable:
        run.set_attrs(restorable)
        report.repaired.append(f"{run.index}: attribute(s) {', '.join(restorable)} restored from {newest.file}")
    left = run.attribute_problems()
    report.problems.extend(left.values())
    return not left


def _check_measures(run: Run, report: FsckReport, repair: bool) -> None:
    """Report (and with ``repair`` remove, keeping a copy of the index) measure records that do not fit."""
    bad: list[str] = []
    for name in run.measures():
        try:
            run.read_measure(name)
        except StoreError as exc:
            bad.append(name)
            if not repair:
                report.problems.append(str(exc))
    if repair and bad:
        aside = run.path / f"{INDEX}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        shutil.copy2(run.index, aside)
        run.delete_measures(bad)
        report.repaired.append(
            f"{run.index}: removed measure(s) {', '.join(bad)} that do not fit the table (recompute them; "
            f"the previous index is kept as {aside.name})"
        )


def _check_rows(run: Run, table: dict[str, Any], found: dict[str, _Found], report: FsckReport) -> None:
    """Compare every indexed row with its file: presence, hash, size, step, run id, tensor layout."""
    first = found.get(table["file"][0]) if len(table["file"]) else None
    for i, rel in enumerate(table["file"]):
        path = run.path / rel
        f = found.get(rel)
        if f is None:
            if not path.exists():
                report.problems.append(f"{path}: checkpoint listed in the index (row {i}) is missing")
            continue
        if f.row["sha256"] != table["sha256"][i]:
            report.problems.append(
                f"{path}: sha256 mismatch (index {table['sha256'][i][:12]}..., file {f.row['sha256'][:12]}...)"
            )
        if f.row["bytes"] != int(table["bytes"][i]):
            report.problems.append(f"{path}: size {f.row['bytes']} differs from the index ({int(table['bytes'][i])})")
        if int(f.row["step"]) != int(table["step"][i]):
            report.problems.append(
                f"{path}: metadata step {f.row['step']} differs from the index ({int(table['step'][i])})"
            )
        if f.run_attrs.get("run_id") != run.run_id:
            report.problems.append(
                f"{path}: metadata names run {f.run_attrs.get('run_id')!r}, index says {run.run_id!r}"
            )
        if first is not None and f.layout != first.layout:
            report.problems.append(_layout_problem(path, f.layout, run.path / first.file, first.layout))


def _layout_problem(
    path: Path, layout: dict[str, tuple[str, list[int]]], first_path: Path, first: dict[str, tuple[str, list[int]]]
) -> str:
    for name in sorted(set(layout) | set(first)):
        if layout.get(name) != first.get(name):
            ours = "absent" if name not in layout else f"{layout[name][0]} {layout[name][1]}"
            theirs = "absent" if name not in first else f"{first[name][0]} {first[name][1]}"
            return f"{path}: tensor {name!r} is {ours}, but {theirs} in the run's first checkpoint {first_path}"
    return f"{path}: tensors differ from the run's first checkpoint {first_path}"


def _fsck_run(run_dir: Path, report: FsckReport, repair: bool) -> None:
    for tmp in _stale_temps(run_dir):
        if repair:
            tmp.unlink(missing_ok=True)
            report.repaired.append(f"{tmp}: removed stale temporary file")
        else:
            report.problems.append(f"{tmp}: stale temporary file from an interrupted write")
    found = _scan_files(run_dir, report)
    try:
        run = Run(run_dir)
        table = run.checkpoints()
    except StoreError as exc:
        if not repair:
            report.problems.append(str(exc))
        else:
            _rebuild_index(run_dir, found, report)
        return
    if not _check_attrs(run, found, report, repair):
        return
    _check_measures(run, report, repair)
    _check_rows(run, table, found, report)
    orphans = [found[rel] for rel in sorted(set(found) - set(table["file"]))]
    if orphans:
        if repair:
            _index_orphans(run, orphans, report)
        else:
            report.problems.append(
                f"{run_dir}: {len(orphans)} checkpoint file(s) not in the index: " + ", ".join(o.file for o in orphans)
            )


def fsck_run(run_dir: str | os.PathLike[str], *, repair: bool = False) -> FsckReport:
    """Verify one run directory; with ``repair`` fix what can be fixed safely.

    A repair the file system refuses (e.g. a read-only directory) is a problem
    of this run, not an exception.
    """
    run_dir = Path(run_dir)
    report = FsckReport(run_dir)
    try:
        _fsck_run(run_dir, report, repair)
    except OSError as exc:
        where = exc.filename or run_dir
        report.problems.append(
            f"{run_dir}: cannot {'repair' if repair else 'check'} this run ({exc.strerror or exc}: {where}); "
            "make the run directory readable and writable, then run `normdyn store fsck --repair` again"
        )
    return report


def fsck_store(store: str | os.PathLike[str], *, repair: bool = False) -> list[FsckReport]:
    """Verify (and optionally repair) every run of ``store``."""
    return [fsck_run(p, repair=repair) for p in run_dirs(store)]
