"""The law-1 collapse of mean curves, and a base class for law-1 estimators on it.

Each mean curve eps_P(lambda) on the common grid is normalised by its own
grid minimum (lambda_opt, eps_opt) = (grid[argmin], min), exactly as the
reference notebook does; the points with lo <= lambda/lambda_opt <= hi form
the window an estimator fits log10(eps/eps_opt) against log10(lambda/lambda_opt) on.

Plain library code (not a plugin): the built-in law-1 fitters, third-party
ones and the automatic window choice (normdyn.analyzers.fit.windows) all use it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from normdyn.core.errors import FitError
from normdyn.plugins.fitters.powerlaw import MIN_POINTS, ols_rows

__all__ = ["CollapseFitter", "check_window", "collapse_curves", "window_mask", "per_P_ols"]

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


def check_window(window: tuple[float, float]) -> tuple[float, float]:
    """``window`` as floats (lo, hi); an error unless 0 < lo < hi."""
    lo, hi = (float(v) for v in window)
    if not (0 < lo < hi):
        raise FitError(f"law 1: window [{lo:g}, {hi:g}] must satisfy 0 < lo < hi (in lambda/lambda*)")
    return lo, hi


def window_mask(log10_x: np.ndarray, log10_y: np.ndarray, P: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """The collapsed points inside ``window`` = (lo, hi) of lambda/lambda*; at least 3 per P or an error naming P."""
    lo, hi = check_window(window)
    inside = (log10_x >= np.log10(lo) - _EDGE) & (log10_x <= np.log10(hi) + _EDGE) & np.isfinite(log10_y)
    for p, n in zip(P, inside.sum(axis=1)):
        if n < MIN_POINTS:
            raise FitError(
                f"law 1: the window [{lo:g}, {hi:g}] of lambda/lambda* holds {n} grid point(s) "
                f"for P={int(p)}, need at least {MIN_POINTS}; widen --window or use a finer --grid"
            )
    return inside


def per_P_ols(
    log10_x: np.ndarray, log10_y: np.ndarray, in_window: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One OLS of log10 y on log10 x per P over the window: (gamma1_P, its standard error, k1_P = 10^intercept)."""
    slope, intercept, slope_err, _ = ols_rows(log10_x, log10_y, in_window)
    return -slope, slope_err, 10.0**intercept


class CollapseFitter:
    """Base class of law-1 fitters that estimate gamma1 from the collapse inside ``window`` (lo, hi).

    ``fit`` collapses the curves, selects the window points and calls
    :meth:`_estimate`, which a subclass writes to fill ``gamma1_``,
    ``gamma1_err_``, ``k1_``, ``gamma1_P_``, ``gamma1_err_P_`` and ``k1_P_``
    from ``log10_x_``, ``log10_y_`` and ``in_window_`` (see
    :class:`normdyn.plugins.fitters.contract.Law1Fitter`).
    """

    name: ClassVar[str]
    law: ClassVar[str] = "law1"
    # fitted by fit(): the collapse here, the estimates in _estimate()
    P_: np.ndarray
    log10_x_: np.ndarray
    log10_y_: np.ndarray
    in_window_: np.ndarray
    gamma1_: float
    gamma1_err_: float
    k1_: float
    gamma1_P_: np.ndarray
    gamma1_err_P_: np.ndarray
    k1_P_: np.ndarray

    def __init__(self, window: tuple[float, float]):
        self.window = window

    def fit(self, log10_grid: np.ndarray, mean_error: np.ndarray, P: np.ndarray) -> CollapseFitter:
        """Fit on the mean curves ``mean_error`` (rows per ``P``) over ``log10_grid``; return self."""
        check_window(self.window)  # before the collapse, so a bad window is named first
        self.P_ = np.asarray(P)
        self.log10_x_, self.log10_y_ = collapse_curves(log10_grid, mean_error, self.P_)
        self.in_window_ = window_mask(self.log10_x_, self.log10_y_, self.P_, self.window)
        self._estimate()
        return self

    def _estimate(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _estimate()")

    def predict(self, lambda_ratio: np.ndarray) -> np.ndarray:
        """eps/eps* predicted at ``lambda_ratio`` = lambda/lambda*."""
        return self.k1_ * np.asarray(lambda_ratio, dtype=np.float64) ** (-self.gamma1_)
