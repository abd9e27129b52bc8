"""The reference code's per-run result files (Francill99/deep_norm), read without running a pickle.

Its training scripts end with ``np.save(f"{MODEL}_{DATASET}_P{P}_seed{seed}_WD{wd}[_INIT{f}].npy",
logs)`` where ``logs`` is a dict: ``log_epochs`` (the logged epochs),
``train_error``, ``val_error`` (in percent; ``val_error`` is measured on the
test set), ``train_loss``, ``val_loss`` and ``model_norm`` (its
``compute_model_norm``), and with other norms ``l1``, ``fro``, ``g_2_1``,
``spectral``. Such a file is an object array, so a pickle: it is read by
:func:`normdyn.core.safe_pickle.load_npy`, which admits numpy arrays, dicts,
lists and numbers only. P and the seed come from the file name.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normdyn.analyzers.fit.aggregate import SeedCurve
from normdyn.core.atomic import replacing
from normdyn.core.errors import DataError
from normdyn.core.safe_pickle import load_npy

__all__ = [
    "REFERENCE_KEYS",
    "ReferenceRun",
    "read_reference_run",
    "read_reference_runs",
    "reference_curves",
    "write_curves_csv",
]

REFERENCE_KEYS = ("log_epochs", "train_error", "val_error")
_NAME = re.compile(r"_P(?P<P>\d+)_seed(?P<seed>\d+)(?:_|\.npy$)")


@dataclass(frozen=True)
class ReferenceRun:
    """One result file: P, seed, the logged epochs and every per-epoch series (errors as fractions)."""

    path: Path
    P: int
    seed: int
    epochs: np.ndarray
    series: Mapping[str, np.ndarray]

    @property
    def test_error(self) -> np.ndarray:
        """The test-set error as a fraction (the file's ``val_error`` is in percent, on the test set)."""
        return self.series["val_error"]


def read_reference_run(path: str | os.PathLike[str]) -> ReferenceRun:
    """Read one result file; a malformed one is a DataError naming the file and what is wrong."""
    path = Path(path)
    match = _NAME.search(path.name)
    if match is None:
        raise DataError(
            f"{path}: the name does not say P and seed (expected e.g. CNN_MNIST_P375_seed0_WD0.0.npy); "
            "rename it or convert it to a CSV of P,seed,lambda,test_error"
        )
    logs = load_npy(path, what="a deep_norm result file")
    if not isinstance(logs, dict):
        raise DataError(f"{path}: holds a {type(logs).__name__}, not the dict of logs the reference code saves")
    missing = [k for k in REFERENCE_KEYS if k not in logs]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} (found: {', '.join(sorted(map(str, logs)))})")
    epochs = np.asarray(logs["log_epochs"], dtype=np.float64).ravel()
    series: dict[str, np.ndarray] = {}
    for key, value in logs.items():
        if key == "log_epochs":
            continue
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            continue  # e.g. margins: a list of arrays per epoch, not one value per epoch
        if arr.ndim != 1:
            continue
        if arr.size != epochs.size:
            raise DataError(f"{path}: {key} has {arr.size} values for {epochs.size} logged epochs")
        series[str(key)] = arr / 100.0 if key in ("train_error", "val_error") else arr
    return ReferenceRun(path, int(match["P"]), int(match["seed"]), epochs, series)


def read_reference_runs(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[ReferenceRun], list[str]]:
    """Every readable file (sorted by P, seed), and one error line per bad or duplicated file."""
    runs, errors = [], []
    seen: dict[tuple[int, int], Path] = {}
    for p in paths:
        try:
            run = read_reference_run(p)
            if (run.P, run.seed) in seen:
                raise DataError(
                    f"{run.path}: a second file for P={run.P}, seed={run.seed} (first: {seen[run.P, run.seed]})"
                )
        except DataError as exc:
            errors.append(str(exc))
            continue
        seen[run.P, run.seed] = run.path
        runs.append(run)
    return sorted(runs, key=lambda r: (r.P, r.seed)), errors


def _usable(run: ReferenceRun, measure: str) -> np.ndarray:
    """Mask of the epochs with a positive, finite ``measure`` and test error (log-log fits)."""
    if measure not in run.series:
        have = ", ".join(k for k in run.series if k not in ("train_error", "val_error"))
        raise DataError(f"{run.path}: no {measure!r} series (has: {have or 'none'}); choose one with --measure")
    lam, err = run.series[measure], run.test_error
    keep = np.isfinite(lam) & (lam > 0) & np.isfinite(err) & (err > 0)
    if not keep.any():
        raise DataError(f"{run.path}: no epoch with a positive {measure} and a positive test error")
    return keep


def reference_curves(runs: Iterable[ReferenceRun], measure: str = "model_norm") -> list[SeedCurve]:
    """Per-seed curves with lambda = ``measure`` (epochs where either value is not positive are left out)."""
    out = []
    for run in runs:
        keep = _usable(run, measure)
        lam, err = run.series[measure][keep], run.test_error[keep]
        out.append(SeedCurve(run.P, run.seed, np.log10(lam), err, source=str(run.path)))
    return out


def write_curves_csv(path: str | os.PathLike[str], runs: Iterable[ReferenceRun], measure: str = "model_norm") -> int:
    """Write the per-seed CSV ``normdyn fit --curves`` reads (P,seed,epoch,lambda,test_error); return rows written.

    Values are written with repr, so the CSV holds exactly the file's numbers.
    """
    runs = list(runs)
    masks = [_usable(run, measure) for run in runs]
    rows = 0
    with replacing(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["P", "seed", "epoch", "lambda", "test_error"])
        for run, keep in zip(runs, masks):
            for epoch, lam, err in zip(run.epochs[keep], run.series[measure][keep], run.test_error[keep]):
                w.writerow([run.P, run.seed, repr(float(epoch)), repr(float(lam)), repr(float(err))])
                rows += 1
    return rows
