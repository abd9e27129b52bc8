"""Per-seed curves from a store: lambda from a stored measure, eps from ``test_error``.

Runs are grouped by their training config minus ``seed`` and ``P`` (the two
keys a sweep varies inside one experiment); a fit uses one group. ``where``
(``{"key": "value"}``, compared with the config value printed as JSON or as
a plain string) selects runs before grouping.

A run that cannot be used (damaged index, measure never computed, fewer
than one finite (lambda, eps) pair) is skipped with a note; the caller shows
the notes. Checkpoints where the measure or the test error is NaN are left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normdyn.analyzers.fit.aggregate import SeedCurve
from normdyn.core.errors import DataError, FitError
from normdyn.core.store import Run, group_identity, scan_runs

__all__ = ["RunGroup", "store_groups", "store_curves"]


@dataclass
class RunGroup:
    """The runs of one experiment (same config up to seed and P), as curves."""

    config: dict[str, Any]
    curves: list[SeedCurve] = field(default_factory=list)


def _plain(value: Any) -> str:
    """A config value as one types it after --where KEY= (strings unquoted)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _matches(config: Mapping[str, Any], where: Mapping[str, str]) -> bool:
    for key, wanted in where.items():
        if key not in config:
            return False
        if wanted not in (_plain(config[key]), str(config[key])):
            return False
    return True


def _run_curve(run: Run, measure: str) -> SeedCurve:
    record = run.read_measure(measure)
    if record is None:
        raise DataError(f"{run.path}: measure {measure!r} not computed (run `normdyn analyze` first)")
    table = run.checkpoints()
    lam, err = np.asarray(record.values, float), np.asarray(table["test_error"], float)
    ok = np.isfinite(lam) & np.isfinite(err)
    bad = ok & (lam < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{run.path}: measure {measure!r} is {lam[row]:g} at checkpoint row {row}; must be >= 0")
    # A norm is exactly 0 only at a zero initialisation (the perceptron's w = 0):
    # it has no place on a log axis, so that checkpoint is left out of the curve.
    ok &= lam > 0
    if not ok.any():
        raise DataError(f"{run.path}: no checkpoint has both a positive {measure!r} and a test_error")
    return SeedCurve(run.P, run.seed, np.log10(lam[ok]), err[ok], source=str(run.path))


def store_groups(
    store: str | os.PathLike[str], measure: str, where: Mapping[str, str] | None = None
) -> tuple[list[RunGroup], list[str]]:
    """The run groups of ``store`` with their curves of ``measure``, and notes on skipped runs."""
    runs, errors = scan_runs(store)
    notes = [f"skipped: {exc}" for exc in errors]
    if not runs:
        raise FitError(f"{store}: the store holds no readable run")
    groups: dict[str, RunGroup] = {}
    for run in runs:
        config = run.config
        if where and not _matches(config, where):
            continue
        try:
            curve = _run_curve(run, measure)
        except DataError as exc:
            notes.append(f"skipped: {exc}")
            continue
        shared = group_identity(config)
        groups.setdefault(json.dumps(shared, sort_keys=True), RunGroup(shared)).curves.append(curve)
    return list(groups.values()), notes


def store_curves(
    store: str | os.PathLike[str], measure: str, where: Mapping[str, str] | None = None
) -> tuple[RunGroup, list[str]]:
    """The single run group of ``store`` (after ``where``); several groups are an error naming what differs."""
    groups, notes = store_groups(store, measure, where)
    if not groups:
        detail = f"; {notes[0]}" if notes else ""
        selected = f" matching {dict(where)}" if where else ""
        raise FitError(f"{store}: no run{selected} has usable {measure!r} curves{detail}")
    if len(groups) > 1:
        keys = sorted({k for g in groups for k in g.config})
        differ = [k for k in keys if len({json.dumps(g.config.get(k), sort_keys=True) for g in groups}) > 1]
        example = ", ".join(f"{k}={_plain(groups[0].config.get(k))}" for k in differ)
        raise FitError(
            f"{store}: {len(groups)} experiments (configs differ in {', '.join(differ)}); "
            f"select one with --where KEY=VALUE, e.g. {example}"
        )
    return groups[0], notes
