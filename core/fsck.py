"""Store verification and repair (``normdyn store fsck [--repair]``).

Checks per run: the index opens and has the right format; every indexed
checkpoint exists, has the recorded size and sha256, and its metadata names
this run and step; no checkpoint file is missing from the index (an orphan is
what a crash between writing a checkpoint and indexing it leaves behind); no
stale temporary files. A linked row (``normdyn import --link``) has its
metadata file ``ckpt/step-N.link.json`` in place of a checkpoint, and each of
the user's files it links must exist with the recorded size and sha256.

Repair never deletes or rewrites a checkpoint file. A damaged index is moved
aside (``run.h5.damaged-TIMESTAMP``) and rebuilt from the checkpoints'
metadata; orphans are indexed (measures are kept, matched by step); stale
temporary files of dead writers (never complete, never under a final name)
are removed, those of live writers left alone; root attributes with a wrong
type or value are restored from the newest checkpoint's metadata; a measure
record that does not fit the table is removed after a copy of the index is
kept (``run.h5.damaged-TIMESTAMP``). A run directory that cannot be written
is one problem line; the other runs are still checked. A linked file that is
missing or changed is a problem that repair leaves alone (it never touches the
user's files nor drops the row): the line says how to relink it
(:func:`relink_run`, ``normdyn store relink``) or import a copy.
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
from normdyn.core.linked import LINK_SUFFIX, Link, LinkedFile
from normdyn.core.store import (
    FORMAT,
    INDEX,
    LINK_COLUMN,
    MeasureRecord,
    Run,
    checkpoint_filename,
    link_filename,
    run_dirs,
    write_index,
)

__all__ = ["FsckReport", "fsck_run", "fsck_store", "relink_run"]


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
    """A readable checkpoint file (or a linked row's metadata file) and the row its metadata describes;
    ``layout`` is None for a linked row (its tensors are in the user's files)."""

    file: str
    row: dict[str, Any]
    run_attrs: dict[str, Any]
    layout: dict[str, tuple[str, list[int]]] | None


def _row_of(path: Path, meta: dict[str, Any], rel: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The index row (without sha256 and bytes) and the run attributes the metadata of the checkpoint
    (or linked row) ``rel`` holds; StoreError naming ``path`` where they are unusable."""
    try:
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        step = int(meta["step"])
        row = {"step": step, "epoch": float(meta["epoch"]), "file": rel}
        row.update(json.loads(meta["metrics"]))
        run_attrs = json.loads(meta["run"])
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: checkpoint metadata unusable ({exc})") from None
    if rel != (link_filename(step) if rel.endswith(LINK_SUFFIX) else checkpoint_filename(step)):
        raise StoreError(f"{path}: metadata says step {step}, file name disagrees")
    return row, run_attrs


def _read_link_file(run_dir: Path, rel: str) -> _Found:
    """The row a linked checkpoint's metadata file describes (the user's files are not read here)."""
    path = run_dir / rel
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: linked checkpoint metadata unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: linked checkpoint metadata is not a JSON object")
    row, run_attrs = _row_of(path, meta, rel)
    link = Link.from_json(str(meta.get(LINK_COLUMN, "")), str(path))
    row.update({"sha256": link.sha256, "bytes": link.bytes, LINK_COLUMN: link.to_json()})
    return _Found(rel, row, run_attrs, None)


def _read_checkpoint(run_dir: Path, rel: str) -> _Found:
    if rel.endswith(LINK_SUFFIX):
        return _read_link_file(run_dir, rel)
    ck = CheckpointFile(run_dir / rel)
    row, run_attrs = _row_of(ck.path, ck.metadata, rel)
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
    names = [*ckpt.glob("step-*.safetensors"), *ckpt.glob(f"step-*{LINK_SUFFIX}")] if ckpt.is_dir() else []
    for path in sorted(names):
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
    """Compare every indexed row with its file: presence, hash, size, step, run id, tensor layout; and
    every file a linked row reads with its record."""
    first = found.get(table["file"][0]) if len(table["file"]) else None
    try:
        links = run.links()
    except StoreError as exc:
        report.problems.append(str(exc))
        links = [None] * len(table["file"])
    for i, rel in enumerate(table["file"]):
        path = run.path / rel
        link = links[i]
        for problem in link.problems() if link is not None else []:  # each linked file is hashed
            report.problems.append(f"{problem}; {run.link_hint(int(table['step'][i]))}")
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
        if first is not None and f.layout is not None and first.layout is not None and f.layout != first.layout:
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


def relink_run(run_dir: str | os.PathLike[str], folders: list[str | os.PathLike[str]]) -> FsckReport:
    """Point the linked files of ``run_dir`` that moved at their new place under one of ``folders``.

    A linked file is looked for when it is missing or has another size than
    recorded; it is found by content (a file of the recorded size and sha256,
    whatever its name), so only files of a wanted size are hashed. ``repaired``
    lists each file relinked, ``problems`` each one not found. A file changed
    in place at its recorded size is not looked for: fsck reports it.
    """
    run = Run(run_dir)
    report = FsckReport(run.path)
    links = {i: link for i, link in enumerate(run.links()) if link is not None}
    lost = {f.path: f for link in links.values() for f in link.files if f.problem(content=False)}
    if not lost:
        return report
    found = _find_by_content(list(lost.values()), [Path(d) for d in folders])
    moved = {i: link.moved(found) for i, link in links.items() if any(f.path in found for f in link.files)}
    if moved:
        run.replace_links(moved)
    for old, file in lost.items():
        if old in found:
            report.repaired.append(f"{old}: relinked to {found[old]}")
        else:
            report.problems.append(
                f"{old}: linked file not found under {', '.join(str(d) for d in folders)} "
                f"(no file of {file.size} bytes with sha256 {file.sha256[:12]}...)"
            )
    return report


def _find_by_content(files: list[LinkedFile], folders: list[Path]) -> dict[str, str]:
    """Old path -> the resolved path of a file under ``folders`` with the same size and sha256."""
    wanted: dict[tuple[int, str], list[str]] = {}
    for f in files:
        wanted.setdefault((f.size, f.sha256), []).append(f.path)
    sizes = {size for size, _ in wanted}
    found: dict[str, str] = {}
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                path = Path(root) / name
                try:
                    size = path.stat().st_size
                    key = (size, sha256_file(path)) if size in sizes else None
                except OSError:
                    continue
                for old in wanted.pop(key, []) if key else []:
                    found[old] = str(path.resolve())
                if not wanted:
                    return found
    return found


def fsck_store(store: str | os.PathLike[str], *, repair: bool = False) -> list[FsckReport]:
    """Verify (and optionally repair) every run of ``store``."""
    return [fsck_run(p, repair=repair) for p in run_dirs(store)]
