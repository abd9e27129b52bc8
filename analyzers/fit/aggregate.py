"""Seed aggregation: per-seed curves (lambda_t, eps_t) onto one log grid, then means per P.

The pipeline follows the reference notebook (docs/fitting.md):

1. each seed's test error is interpolated on a common grid, linearly in
   log10 lambda, NaN outside the seed's own lambda range;
2. the mean over seeds is taken per grid point, ignoring NaN, and the number
   of seeds behind each point is kept;
3. lambda*(P) for law 2 is the mean over seeds of lambda at each seed's own
   minimal test error on its raw (logged) points; the grid argmin of the mean
   curve is kept too (law 1 normalises by it); eps*(P) is the minimum of the
   mean curve.

A non-monotone lambda(t) (weight decay shrinks the norm) cannot be
interpolated as a function of lambda. Rule: a checkpoint is kept for the
interpolation only if its lambda exceeds every earlier one (the running
maximum envelope), so the curve is the growth phase; the dropped count is
reported. The per-seed argmin for lambda* still uses all raw points, as the
reference does.

Everything is in log10 lambda, so lambda up to 1e300 is safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from normdyn.core.errors import DataError, FitError

__all__ = [
    "SeedCurve",
    "SeedGrid",
    "MeanCurves",
    "DEFAULT_GRID_POINTS",
    "aggregate",
    "increasing_envelope",
    "log10_mean",
    "auto_grid",
]

DEFAULT_GRID_POINTS = 50  # the reference's logspace(a, b, 50)


@dataclass(frozen=True)
class SeedCurve:
    """One run's raw curve: log10 lambda and test error at its logged checkpoints, in time order."""

    P: int
    seed: int
    log10_lambda: np.ndarray
    test_error: np.ndarray
    source: str = ""  # run directory or file:row, for error messages

    def __post_init__(self) -> None:
        lam, err = np.asarray(self.log10_lambda, float), np.asarray(self.test_error, float)
        if lam.shape != err.shape or lam.ndim != 1:
            raise DataError(f"{self.source}: lambda and test_error differ in length ({lam.size} vs {err.size})")
        if lam.size == 0 or not np.all(np.isfinite(lam) & np.isfinite(err)):
            raise DataError(f"{self.source}: a curve needs at least one point and finite values only")
        if np.any(err <= 0):
            raise DataError(
                f"{self.source}: test_error {err[err <= 0][0]:g} <= 0; "
                "log-log fits need positive errors (drop or offset such points)"
            )

    @property
    def log10_lambda_at_min(self) -> float:
        """log10 lambda at this seed's minimal test error (first one on ties), on its raw points."""
        return float(self.log10_lambda[int(np.argmin(self.test_error))])


def increasing_envelope(log10_lambda: np.ndarray) -> np.ndarray:
    """Mask of the points whose lambda exceeds every earlier lambda (strictly increasing subsequence)."""
    lam = np.asarray(log10_lambda, dtype=np.float64)
    earlier_max = np.concatenate(([-np.inf], np.maximum.accumulate(lam)[:-1]))
    return lam > earlier_max


def log10_mean(log10_values: np.ndarray) -> float:
    """log10 of the arithmetic mean of 10**values, without leaving log space."""
    v = np.asarray(log10_values, dtype=np.float64)
    top = float(v.max())  # factor out the largest term (log-sum-exp) so 10**v never overflows
    return top + math.log10(float(np.mean(10.0 ** (v - top))))


def auto_grid(curves: Sequence[SeedCurve], n: int = DEFAULT_GRID_POINTS) -> np.ndarray:
    """``n`` log10-spaced points from the smallest to the largest lambda of all curves."""
    lo = min(float(c.log10_lambda.min()) for c in curves)
    hi = max(float(c.log10_lambda.max()) for c in curves)
    if hi <= lo:
        raise FitError(f"all curves have the single lambda 10^{lo:g}; there is no range to put a grid on")
    return np.linspace(lo, hi, n)


@dataclass
class MeanCurves:
    """Mean test-error curves on a common grid, one row per training-set size P.

    ``n_seeds`` (seeds behind each grid point) and ``n_runs`` (seeds per P)
    are None when the means came from elsewhere (a CSV of mean curves).
    ``log10_lambda_star`` is the lambda* that law 2 uses; ``lambda_star_source``
    says where it came from ("seed argmin", "grid argmin" or a file name).
    """

    log10_grid: np.ndarray
    P: np.ndarray
    mean_error: np.ndarray
    log10_lambda_star: np.ndarray
    lambda_star_source: str
    n_seeds: np.ndarray | None = None
    n_runs: np.ndarray | None = None

    @property
    def log10_lambda_star_grid(self) -> np.ndarray:
        """log10 of the grid point where each mean curve is minimal (NaN for an all-NaN row)."""
        out = np.full(len(self.P), np.nan)
        for i, row in enumerate(self.mean_error):
            if np.any(np.isfinite(row)):
                out[i] = self.log10_grid[int(np.nanargmin(row))]
        return out

    @property
    def eps_star(self) -> np.ndarray:
        """The minimum of each mean curve (NaN for an all-NaN row)."""
        finite = np.isfinite(self.mean_error)
        return np.where(finite.any(axis=1), np.min(np.where(finite, self.mean_error, np.inf), axis=1), np.nan)

    def with_lambda_star(self, lambda_star: Mapping[int, float], source: str) -> MeanCurves:
        """A copy whose law-2 lambda* comes from ``lambda_star`` (P -> lambda*, every P needed)."""
        missing = [int(p) for p in self.P if int(p) not in lambda_star]
        if missing:
            raise DataError(f"{source}: no lambda_star for P = {', '.join(map(str, missing))}")
        values = np.array([lambda_star[int(p)] for p in self.P], dtype=np.float64)
        if np.any(~np.isfinite(values) | (values <= 0)):
            raise DataError(f"{source}: lambda_star must be finite and > 0")
        return replace(self, log10_lambda_star=np.log10(values), lambda_star_source=source)


@dataclass
class SeedGrid:
    """Every seed's curve interpolated on one grid, grouped by P: what means and bootstraps are made of.

    ``errors[i]`` has one row per seed of ``P[i]`` (NaN outside that seed's
    range); ``log10_lambda_at_min[i]`` holds each seed's log10 lambda at its raw
    minimum; ``dropped`` counts checkpoints removed by the increasing-lambda rule.
    """

    log10_grid: np.ndarray
    P: np.ndarray
    seeds: list[np.ndarray]
    errors: list[np.ndarray]
    log10_lambda_at_min: list[np.ndarray]
    dropped: int

    def mean(self, pick: Sequence[np.ndarray] | None = None) -> MeanCurves:
        """Mean curves over all seeds, or over the seed rows ``pick[i]`` of each P (a bootstrap draw)."""
        rows = [np.arange(len(s)) for s in self.seeds] if pick is None else pick
        mean = np.empty((len(self.P), self.log10_grid.size))
        count = np.empty_like(mean, dtype=np.int64)
        lstar = np.empty(len(self.P))
        for i, r in enumerate(rows):
            e = self.errors[i][r]
            finite = np.isfinite(e)
            count[i] = finite.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean[i] = np.where(finite, e, 0.0).sum(axis=0) / count[i]
            lstar[i] = log10_mean(self.log10_lambda_at_min[i][r])
        return MeanCurves(self.log10_grid, self.P, mean, lstar, "seed argmin", count, np.array([len(r) for r in rows]))


def aggregate(curves: Sequence[SeedCurve], grid: tuple[float, float, int] | None = None) -> SeedGrid:
    """Interpolate ``curves`` on the grid ``(a, b, n)`` (log10 lambda; automatic if None), grouped by P."""
    if not curves:
        raise FitError("no curves to aggregate")
    if grid is None:
        log10_grid = auto_grid(curves)
    else:
        a, b, n = float(grid[0]), float(grid[1]), int(grid[2])
        if not (b > a and n >= 2):
            raise FitError(f"--grid {a:g} {b:g} {n}: need B > A (log10 lambda) and N >= 2")
        log10_grid = np.linspace(a, b, n)
    by_P: dict[int, list[SeedCurve]] = {}
    for c in curves:
        by_P.setdefault(int(c.P), []).append(c)
    P = np.array(sorted(by_P))
    seeds, errors, at_min = [], [], []
    dropped = 0
    for p in P:
        group = sorted(by_P[int(p)], key=lambda c: c.seed)
        rows = []
        for c in group:
            keep = increasing_envelope(c.log10_lambda)
            dropped += int((~keep).sum())
            rows.append(np.interp(log10_grid, c.log10_lambda[keep], c.test_error[keep], left=np.nan, right=np.nan))
        seeds.append(np.array([c.seed for c in group]))
        errors.append(np.array(rows))
        at_min.append(np.array([c.log10_lambda_at_min for c in group]))
    return SeedGrid(log10_grid, P, seeds, errors, at_min, dropped)
