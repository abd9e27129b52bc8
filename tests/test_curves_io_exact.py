"""The CSV readers map every input row to its own place, on every CPU.

np.log10 (vectorised) and math.log10 differ in the last bit for some inputs
on some CPUs; a reader that builds its grid with one and looks rows up with
the other puts values in a neighbouring column or refuses a valid file. These
tests fail on any machine if a reader finds a float again by recomputing it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from normdyn.analyzers.curves_io import read_curves_csv
from normdyn.analyzers.fit.aggregate import MeanCurves
from normdyn.core.errors import DataError


def _write_mean_csv(path: Path, Ps: list[int], lambdas: np.ndarray, errors: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["P", "lambda", "test_error"])
        for i, P in enumerate(Ps):
            for j, lam in enumerate(lambdas):
                w.writerow([P, repr(float(lam)), repr(float(errors[i, j]))])


def _disagreeing_lambdas(n: int) -> np.ndarray:
    """Up to ``n`` values where np.log10 and math.log10 disagree on this CPU (may be none elsewhere)."""
    x = 10.0 ** np.random.default_rng(0).uniform(-6.0, 6.0, 20000)
    vec = np.log10(x)
    return np.array([v for v, a in zip(x, vec) if a != math.log10(float(v))][:n])


def _assert_every_row_in_its_column(path: Path, Ps: list[int], lambdas: np.ndarray) -> None:
    order = np.argsort(lambdas)
    # the errors are distinct integers / 1e6: equality below compares parsed text, not recomputed values
    errors = (np.arange(len(Ps) * lambdas.size, dtype=np.float64).reshape(len(Ps), lambdas.size) + 1) / 1e6
    _write_mean_csv(path, Ps, lambdas, errors)
    curves = read_curves_csv(path)
    assert isinstance(curves, MeanCurves)
    assert curves.P.tolist() == sorted(Ps)
    assert curves.log10_grid.size == lambdas.size
    np.testing.assert_array_equal(curves.mean_error, errors[np.argsort(Ps)][:, order])


def test_a_real_size_mean_curve_file_maps_each_row_to_its_own_column(tmp_path: Path) -> None:
    # 10 P x 200 grid points: the file the audit saw refused ("two rows for P=..., lambda=...")
    lambdas = np.logspace(-2, 6, 200)
    _assert_every_row_in_its_column(tmp_path / "mean.csv", [100 * 2**k for k in range(10)], lambdas)


def test_values_where_numpy_and_math_disagree_on_this_cpu(tmp_path: Path) -> None:
    lambdas = np.concatenate([_disagreeing_lambdas(50), np.logspace(-1, 1, 5)])
    _assert_every_row_in_its_column(tmp_path / "mean.csv", [10, 20, 40], lambdas)


def test_a_reader_that_recomputes_logs_fails_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Make math.log10 disagree with np.log10 in the last bit for EVERY input, as it does for some
    # inputs on some CPUs: a reader that recomputes a key with math.log10 then fails on every machine.
    real = math.log10
    monkeypatch.setattr(math, "log10", lambda x: float(np.nextafter(real(x), np.inf)))
    _assert_every_row_in_its_column(tmp_path / "mean.csv", [10, 20, 40], np.logspace(-2, 3, 40))


def test_mean_curves_refuse_a_repeated_point_by_its_parsed_value(tmp_path: Path) -> None:
    path = tmp_path / "mean.csv"
    path.write_text("P,lambda,test_error\n10,0.1,0.5\n10,1e-1,0.4\n10,1,0.3\n")
    with pytest.raises(DataError, match=r"two rows for P=10, lambda=0\.1; mean curves have one value per point"):
        read_curves_csv(path)


def test_per_seed_curves_refuse_a_duplicated_row(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    path.write_text("P,seed,lambda,test_error\n10,0,1,0.5\n10,0,2,0.4\n10,1,1,0.5\n10,0,2,0.4\n")
    with pytest.raises(DataError) as info:
        read_curves_csv(path)
    assert str(info.value) == (
        f"{path}, line 5: repeats line 3 (P=10, seed=0, lambda=2.0, test_error=0.4); remove the duplicate row"
    )
