"""Store verification and repair (``normdyn store fsck [--repair]``).

Checks per run: the index opens and has the right format; every indexed
checkpoint exists, has the recorded size and sha256, and its metadata names
this run and step; no checkpoint file is missing from the index (an orphan is
what a crash between writing a checkpoint and indexing it leaves behind); no
stale temporary files.

Repair never deletes or rewrites a checkpoint file. A damaged index is moved
aside (``run.h5.damaged-TIMESTAMP``) and rebuilt from the checkpoints'
metadata; orphans are indexed (measures are kept, matched by step); stale
temporary files (never complete, never under a final name) are removed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normdyn.core.atomic import TMP_PREFIX
from normdyn.core.checkpoint import CheckpointFile, sha256_file
from normdyn.core.errors import StoreError
from normdyn.core.store import (
    FORMAT,
    INDEX,
    MeasureRecord,
    Run,
    _fill_checkpoints,
    _put_measure,
    _write_new_index,
    checkpoint_filename,
    run_dirs,
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
    return _Found(rel, row, run_attrs)


def _index_attrs(run_attrs: dict[str, Any]) -> dict[str, Any]:
    attrs = dict(run_attrs)
    for key in ("config", "model_spec", "dataset"):
        if not isinstance(attrs.get(key), str):
            attrs[key] = json.dumps(attrs.get(key, {}), sort_keys=True)
    attrs["status"] = "failed"  # unknown after a rebuild: resumable, never claimed complete
    return attrs


def _stale_temps(run_dir: Path) -> list[Path]:
    return sorted(
        p
        for d in (run_dir, run_dir / "ckpt", run_dir / "resume")
        if d.is_dir()
        for p in d.iterdir()
        if p.name.startswith(TMP_PREFIX)
    )


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
    _write_new_index(index, _index_attrs(newest.run_attrs), rows)
    report.repaired.append(f"{index}: rebuilt from {len(rows)} checkpoint files")


def _index_orphans(run: Run, orphans: list[_Found], report: FsckReport) -> None:
    """Add orphan checkpoints to a healthy index in one atomic update; every
    measure is kept, its rows matched by step, the new rows NaN."""
    table = run.checkpoints()
    n = len(table["step"])
    rows = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in table.items()} for i in range(n)]
    rows = sorted(rows + [o.row for o in orphans], key=lambda r: r["step"])
    new_pos = {int(r["step"]): j for j, r in enumerate(rows)}
    moved = [new_pos[int(s)] for s in table["step"]]
    measures = {name: run.read_measure(name) for name in run.measures()}
    with run._mutate() as f:
        _fill_checkpoints(f, rows)
        for name, rec in measures.items():
            new = MeasureRecord.empty(len(rows), plugin=rec.plugin, version=rec.version, params=rec.params)
            for i, j in enumerate(moved):
                new.values[j], new.sha256[j] = rec.values[i], rec.sha256[i]
                if i in rec.errors:
                    new.errors[j] = rec.errors[i]
            _put_measure(f, name, new)
    report.repaired.append(
        f"{run.index}: indexed {len(orphans)} orphan checkpoint(s): " + ", ".join(o.file for o in orphans)
    )


def fsck_run(run_dir: str | os.PathLike[str], *, repair: bool = False) -> FsckReport:
    """Verify one run directory; with ``repair`` fix what can be fixed safely."""
    run_dir = Path(run_dir)
    report = FsckReport(run_dir)
    for tmp in _stale_temps(run_dir):
        if repair:
            tmp.unlink()
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
        return report
    indexed = set()
    for i, rel in enumerate(table["file"]):
        indexed.add(rel)
        path = run_dir / rel
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
    orphans = [found[rel] for rel in sorted(set(found) - indexed)]
    if orphans:
        if repair:
            _index_orphans(run, orphans, report)
        else:
            report.problems.append(
                f"{run_dir}: {len(orphans)} checkpoint file(s) not in the index: " + ", ".join(o.file for o in orphans)
            )
    return report


def fsck_store(store: str | os.PathLike[str], *, repair: bool = False) -> list[FsckReport]:
    """Verify (and optionally repair) every run of ``store``."""
    return [fsck_run(p, repair=repair) for p in run_dirs(store)]
