"""Law 1: the early-regime collapse eps/eps* = k1 (lambda/lambda*)^(-gamma1).

Each mean curve eps_P(lambda) on the common grid is normalised by its own
grid minimum (lambda_opt, eps_opt) = (grid[argmin], min), exactly as the
reference notebook does; the points with lo <= lambda/lambda_opt <= hi are
kept and log10(eps/eps_opt) is regressed on log10(lambda/lambda_opt).

Two estimators of gamma1 (``method``):

- ``paper`` (the reference's): one OLS per P; gamma1 = -mean of the slopes,
  k1 = mean of the prefactors 10^intercept, and
  gamma1_err = sqrt(mean of the slope variances).
- ``pooled``: one OLS through the window points of all P together;
  gamma1_err is that regression's standard error.

Both sets of numbers are always computed; ``method`` picks which one fills
``gamma1_``, ``gamma1_err_`` and ``k1_``.
"""

from __future__ import annotations

import numpy as np

from normdyn.core.errors import FitError
from normdyn.core.hookspecs import Register, hookimpl
from normdyn.plugins.fitters.powerlaw import MIN_POINTS, PowerLaw, ols_rows

__all__ = ["Law1Collapse", "collapse_curves", "METHODS"]

METHODS = ("paper", "pooled")
_EDGE = 1e-12  # grid points that sit on a window edge (up to rounding) are inside


def collapse_curves(log10_grid: np.ndarray, mean_error: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log10(lambda/lambda_opt) and log10(eps/eps_opt) per P (rows), normalised by each row's grid minimum."""
    mean_error = np.asarray(mean_error, dtype=np.float64)
    log10_grid = np.asarray(log10_grid, dtype=np.float64)
    finite = np.isfinite(mean_error)
    empty = np.flatnonzero(~finite.any(axis=1))
    if empty.size:
        raise FitError(f"law 1: the mean test error of P={int(P[empty[0]])} is NaN everywhere on the grid")
    lowest = np.where(finite, mean_error, np.inf)
    j = np.argmin(lowest, axis=1)  # first minimum, as np.nanargmin
    eps_opt = lowest[np.arange(len(j)), j]
    zero = np.flatnonzero(eps_opt <= 0)
    if zero.size:
        raise FitError(
            f"law 1: the mean test error of P={int(P[zero[0]])} reaches {eps_opt[zero[0]]:g}; "
            "a log-log collapse needs errors > 0"
        )
    log10_x = log10_grid[None, :] - log10_grid[j][:, None]
    with np.errstate(invalid="ignore"):
        log10_y = np.log10(mean_error) - np.log10(eps_opt)[:, None]
    return log10_x, log10_y


class Law1Collapse:
    """Fit gamma1, k1 from the collapse of the mean curves inside ``window`` = (lo, hi) in lambda/lambda*.

    Fitted attributes: ``gamma1_``, ``gamma1_err_``, ``k1_`` (per ``method``);
    per P: ``P_``, ``gamma1_P_``, ``gamma1_err_P_``, ``k1_P_``, ``n_points_P_``;
    pooled: ``gamma1_pooled_``, ``gamma1_pooled_err_``, ``k1_pooled_``;
    the collapse itself: ``log10_x_``, ``log10_y_`` (rows per P, full grid)
    and ``in_window_`` (boolean mask of the fitted points).
    ``Law1Collapse.collapse`` is :func:`collapse_curves` (no fit, no window).
    """

    name = "law1"
    methods = METHODS
    collapse = staticmethod(collapse_curves)

    def __init__(self, window: tuple[float, float], method: str = "paper"):
        self.window = window
        self.method = method

    def _check(self) -> tuple[float, float]:
        if self.method not in METHODS:
            raise FitError(f"law 1: unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        lo, hi = (float(v) for v in self.window)
        if not (0 < lo < hi):
            raise FitError(f"law 1: window [{lo:g}, {hi:g}] must satisfy 0 < lo < hi (in lambda/lambda*)")
        return lo, hi

    def fit(self, log10_grid: np.ndarray, mean_error: np.ndarray, P: np.ndarray) -> Law1Collapse:
        """Fit on the mean curves ``mean_error`` (rows per ``P``) over ``log10_grid``; return self."""
        lo, hi = self._check()
        P = np.asarray(P)
        self.P_ = P
        self.log10_x_, self.log10_y_ = collapse_curves(log10_grid, mean_error, P)
        self.in_window_ = (
            (self.log10_x_ >= np.log10(lo) - _EDGE)
            & (self.log10_x_ <= np.log10(hi) + _EDGE)
            & np.isfinite(self.log10_y_)
        )
        self.n_points_P_ = self.in_window_.sum(axis=1)
        for p, n in zip(P, self.n_points_P_):
            if n < MIN_POINTS:
                raise FitError(
                    f"law 1: the window [{lo:g}, {hi:g}] of lambda/lambda* holds {n} grid point(s) "
                    f"for P={int(p)}, need at least {MIN_POINTS}; widen --window or use a finer --grid"
                )
        slope, intercept, slope_err, _ = ols_rows(self.log10_x_, self.log10_y_, self.in_window_)
        self.gamma1_P_, self.gamma1_err_P_, self.k1_P_ = -slope, slope_err, 10.0**intercept
        pooled = PowerLaw(what="law 1, pooled").fit_log10(
            self.log10_x_[self.in_window_], self.log10_y_[self.in_window_]
        )
        self.gamma1_pooled_, self.gamma1_pooled_err_, self.k1_pooled_ = pooled.gamma_, pooled.gamma_err_, pooled.k_
        if self.method == "paper":
            self.gamma1_ = float(np.mean(self.gamma1_P_))
            self.k1_ = float(np.mean(self.k1_P_))
            self.gamma1_err_ = float(np.sqrt(np.mean(self.gamma1_err_P_**2)))
        else:
            self.gamma1_, self.gamma1_err_, self.k1_ = pooled.gamma_, pooled.gamma_err_, pooled.k_
        return self

    def predict(self, lambda_ratio: np.ndarray) -> np.ndarray:
        """eps/eps* predicted at ``lambda_ratio`` = lambda/lambda*."""
        return self.k1_ * np.asarray(lambda_ratio, dtype=np.float64) ** (-self.gamma1_)


@hookimpl
def register_fitters(register: Register) -> None:
    """Register the law-1 collapse fitter."""
    register(Law1Collapse)
