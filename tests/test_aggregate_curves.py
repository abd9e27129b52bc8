"""Seed aggregation and reading curves out of a store."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from normdyn.analyzers.fit.aggregate import DEFAULT_GRID_POINTS, SeedCurve, aggregate, log10_mean
from normdyn.analyzers.fit.store_curves import store_curves
from normdyn.core.errors import DataError, FitError
from normdyn.core.store import MeasureRecord, Run


def make_run(
    store,
    run_id: str,
    *,
    P: int,
    seed: int,
    lam: list[float],
    err: list[float],
    config: dict | None = None,
    measure: str | None = "spec",
) -> Run:
    """A run with one tiny checkpoint per (lam, err) pair and ``measure`` = lam stored."""
    cfg = {"lr": 0.001, "model": "mlp", "P": P, "seed": seed, **(config or {})}
    run = Run.create(store, run_id, config=cfg, model_spec={"name": "mlp"}, dataset={"name": "toy"}, P=P, seed=seed)
    for step, e in enumerate(err):
        run.append_checkpoint({"w": torch.zeros(2)}, step=step, epoch=float(step), metrics={"test_error": e})
    if measure is not None:
        run.write_measure(measure, MeasureRecord(values=np.array(lam, float), sha256=[""] * len(lam)))
    return run


def test_interpolation_mean_counts_and_lambda_star_match_numpy() -> None:
    lam_a, err_a = np.array([1.0, 10.0, 100.0]), np.array([0.5, 0.2, 0.3])
    lam_b, err_b = np.array([3.0, 30.0, 1000.0]), np.array([0.4, 0.1, 0.2])
    curves = [SeedCurve(100, 1, np.log10(lam_a), err_a), SeedCurve(100, 2, np.log10(lam_b), err_b)]
    grid = (0.0, 3.0, 7)
    g = aggregate(curves, grid)
    x = np.linspace(0.0, 3.0, 7)
    rows = np.array(
        [
            np.interp(x, np.log10(lam_a), err_a, left=np.nan, right=np.nan),
            np.interp(x, np.log10(lam_b), err_b, left=np.nan, right=np.nan),
        ]
    )
    mean = g.mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmean(rows, axis=0)
    np.testing.assert_allclose(mean.mean_error, expected[None, :], rtol=1e-12)
    np.testing.assert_array_equal(mean.n_seeds, np.isfinite(rows).sum(axis=0)[None, :])
    assert mean.n_runs.tolist() == [2]
    assert 10 ** mean.log10_lambda_star[0] == pytest.approx((10.0 + 30.0) / 2, rel=1e-12)  # mean of per-seed argmins
    assert mean.eps_star[0] == pytest.approx(np.nanmin(expected), rel=1e-12)
    assert mean.log10_lambda_star_grid[0] == x[np.nanargmin(expected)]


def test_automatic_grid_spans_all_curves() -> None:
    curves = [
        SeedCurve(10, 0, np.array([-1.0, 0.5]), np.array([0.3, 0.2])),
        SeedCurve(20, 0, np.array([0.0, 2.0]), np.array([0.3, 0.1])),
    ]
    g = aggregate(curves)
    assert (g.log10_grid[0], g.log10_grid[-1], g.log10_grid.size) == (-1.0, 2.0, DEFAULT_GRID_POINTS)
    assert g.P.tolist() == [10, 20]


def test_log10_mean_stays_finite_for_huge_lambda() -> None:
    assert log10_mean(np.array([75.0, 75.0 + math.log10(3.0)])) == pytest.approx(math.log10(2e75), rel=1e-14)
    assert log10_mean(np.array([400.0, 400.0])) == pytest.approx(400.0, rel=1e-14)  # 1e400 overflows float64


def test_seed_curve_rejects_bad_values() -> None:
    with pytest.raises(DataError, match=r"^run7: test_error 0 <= 0; log-log fits need positive errors"):
        SeedCurve(10, 0, np.array([0.0, 1.0]), np.array([0.2, 0.0]), source="run7")
    with pytest.raises(DataError, match=r"^run7: lambda and test_error differ in length \(2 vs 1\)$"):
        SeedCurve(10, 0, np.array([0.0, 1.0]), np.array([0.2]), source="run7")
    with pytest.raises(FitError, match=r"^--grid 2 1 5: need B > A \(log10 lambda\) and N >= 2$"):
        aggregate([SeedCurve(10, 0, np.array([0.0, 1.0]), np.array([0.2, 0.1]))], (2.0, 1.0, 5))


def test_store_curves_groups_runs_and_skips_unusable_ones(tmp_path) -> None:
    store = tmp_path / "store"
    make_run(store, "a", P=100, seed=0, lam=[1.0, float("nan"), 4.0], err=[0.5, 0.4, 0.3])
    make_run(store, "b", P=200, seed=1, lam=[2.0, 3.0, 9.0], err=[0.4, 0.3, 0.2])
    make_run(store, "c", P=200, seed=2, lam=[1.0, 2.0], err=[0.4, 0.3], measure=None)
    group, notes = store_curves(store, "spec")
    assert group.config == {"lr": 0.001, "model": "mlp"}
    assert sorted((c.P, c.seed) for c in group.curves) == [(100, 0), (200, 1)]
    first = next(c for c in group.curves if c.P == 100)
    np.testing.assert_allclose(first.log10_lambda, np.log10([1.0, 4.0]))  # the NaN row is left out
    np.testing.assert_allclose(first.test_error, [0.5, 0.3])
    assert notes == [f"skipped: {store / 'c'}: measure 'spec' not computed (run `normdyn analyze` first)"]


def test_several_experiments_need_where(tmp_path) -> None:
    store = tmp_path / "store"
    make_run(store, "a", P=100, seed=0, lam=[1.0, 2.0], err=[0.5, 0.4])
    make_run(store, "b", P=100, seed=0, lam=[1.0, 2.0], err=[0.5, 0.4], config={"lr": 0.01})
    with pytest.raises(
        FitError,
        match=r"2 experiments \(configs differ in lr\); select one with --where KEY=VALUE, "
        r"e\.g\. lr=0\.001$",
    ):
        store_curves(store, "spec")
    group, _ = store_curves(store, "spec", where={"lr": "0.01"})
    assert group.config["lr"] == 0.01 and len(group.curves) == 1


def test_empty_store_and_missing_measure_are_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FitError, match=r"empty: the store holds no readable run$"):
        store_curves(tmp_path / "empty", "spec")
    store = tmp_path / "store"
    make_run(store, "a", P=100, seed=0, lam=[1.0, 2.0], err=[0.5, 0.4], measure=None)
    with pytest.raises(
        FitError, match=r"store: no run has usable 'frob' curves; skipped: .*measure 'frob' not computed"
    ):
        store_curves(store, "frob")
