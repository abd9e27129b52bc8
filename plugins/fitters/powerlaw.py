"""The power law ``y = k x^(-gamma) [+ c]`` and the OLS lines that the law fitters use (library code, not a plugin).

Without an offset the fit is ordinary least squares of log10 y on log10 x:
slope = -gamma, intercept = log10 k, and the standard errors are the OLS
ones, the same numbers as ``scipy.stats.linregress`` (residual variance
s^2 = SSR/(n-2); se(slope) = s/sqrt(Sxx); se(intercept) = s sqrt(1/n + mean(x)^2/Sxx)).
They are computed in closed form here because linregress costs milliseconds
per call (its NaN-policy wrapper) and a bootstrap makes thousands of fits. Everything is
done on logarithms, so values up to 1e300 (a ViT's spectral complexity is
~1e75) never overflow.

With ``offset=True`` the model ``y = k x^(-gamma) + c`` is fitted by
``scipy.optimize.curve_fit`` with relative residuals (sigma = y), which keeps
the weighting close to the log-space fit; y is scaled by its geometric mean
first so the solver works on numbers of order one.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from normdyn.core.errors import FitError
from normdyn.core.table import format_value_error

__all__ = ["PowerLaw", "MIN_POINTS", "ols_line", "ols_rows"]

MIN_POINTS = 3  # an OLS slope with a standard error needs n - 2 >= 1 degrees of freedom


def ols_rows(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """One OLS line y = a x + b per row, over the points where ``mask`` is true (at least 3 per row).

    Returns arrays (a, b, se(a), se(b)), residual variance SSR/(n-2). Vectorised
    over rows because law 1 fits one line per P in every bootstrap replicate.
    """
    w = mask.astype(np.float64)
    x, y = np.where(mask, x, 0.0), np.where(mask, y, 0.0)
    n = w.sum(axis=1)
    xm, ym = (w * x).sum(axis=1) / n, (w * y).sum(axis=1) / n
    dx = w * (x - xm[:, None])
    sxx = (dx * dx).sum(axis=1)
    slope = (dx * (y - ym[:, None])).sum(axis=1) / sxx
    intercept = ym - slope * xm
    resid = w * (y - slope[:, None] * x - intercept[:, None])
    s2 = (resid * resid).sum(axis=1) / (n - 2)
    return slope, intercept, np.sqrt(s2 / sxx), np.sqrt(s2 * (1.0 / n + xm * xm / sxx))


def ols_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """OLS line y = a x + b: (a, b, se(a), se(b)) with residual variance SSR/(n-2); needs n >= 3."""
    rows = ols_rows(x[None, :], y[None, :], np.ones((1, x.size), dtype=bool))
    return tuple(float(r[0]) for r in rows)  # type: ignore[return-value]


class PowerLaw:
    """Fit ``y = k * x**(-gamma)`` (plus a constant ``c`` with ``offset=True``).

    Fitted attributes: ``gamma_``, ``gamma_err_`` (standard error),
    ``log10_k_``, ``log10_k_err_``, ``k_``, ``offset_`` (0 without offset),
    ``offset_err_``, ``n_`` (points used).
    """

    def __init__(self, offset: bool = False, what: str = "power law"):
        self.offset = offset
        self.what = what  # names the fit in error messages ("law 2: lambda*(P)")

    def fit(self, x: np.ndarray, y: np.ndarray) -> PowerLaw:
        """Fit on positive ``x`` and ``y`` (non-finite pairs are ignored); return self."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        if np.any((x[ok] <= 0) | (y[ok] <= 0)):
            raise FitError(f"{self.what}: a power law needs positive x and y (got a value <= 0)")
        return self.fit_log10(np.log10(np.where(ok, x, np.nan)), np.log10(np.where(ok, y, np.nan)))

    def fit_log10(self, log10_x: np.ndarray, log10_y: np.ndarray) -> PowerLaw:
        """Fit on ``log10 x`` and ``log10 y`` directly (non-finite pairs ignored); return self."""
        lx = np.asarray(log10_x, dtype=np.float64)
        ly = np.asarray(log10_y, dtype=np.float64)
        ok = np.isfinite(lx) & np.isfinite(ly)
        lx, ly = lx[ok], ly[ok]
        need = MIN_POINTS + (1 if self.offset else 0)
        if lx.size < need:
            raise FitError(f"{self.what}: {lx.size} usable point(s), need at least {need}")
        if np.ptp(lx) == 0:
            raise FitError(f"{self.what}: all x values are equal, the exponent is undefined")
        slope, intercept, slope_err, intercept_err = ols_line(lx, ly)
        self.gamma_ = -slope
        self.gamma_err_ = slope_err
        self.log10_k_ = intercept
        self.log10_k_err_ = intercept_err
        self.offset_ = 0.0
        self.offset_err_ = 0.0
        if self.offset:
            self._fit_offset(lx, ly)
        self.k_ = float(10.0**self.log10_k_)
        self.n_ = int(lx.size)
        return self

    def _fit_offset(self, lx: np.ndarray, ly: np.ndarray) -> None:
        scale = float(np.mean(ly))  # y / 10**scale is of order one

        def model(lx_: np.ndarray, log10_k: float, gamma: float, c: float) -> np.ndarray:
            return 10.0 ** (log10_k - scale - gamma * lx_) + c

        y = 10.0 ** (ly - scale)
        p0 = (self.log10_k_, self.gamma_, 0.0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", OptimizeWarning)
                popt, pcov = curve_fit(model, lx, y, p0=p0, sigma=y, maxfev=20000)
        except (RuntimeError, OptimizeWarning, ValueError) as exc:
            raise FitError(f"{self.what}: the offset power law did not converge ({exc}); fit without offset") from None
        err = np.sqrt(np.clip(np.diag(pcov), 0.0, np.inf))
        self.log10_k_, self.gamma_ = float(popt[0]), float(popt[1])
        self.log10_k_err_, self.gamma_err_ = float(err[0]), float(err[1])
        self.offset_ = float(popt[2] * 10.0**scale)
        self.offset_err_ = float(err[2] * 10.0**scale)

    def predict_log10(self, log10_x: np.ndarray) -> np.ndarray:
        """log10 of the fitted y at ``log10 x``."""
        power = self.log10_k_ - self.gamma_ * np.asarray(log10_x, dtype=np.float64)
        if self.offset_ == 0.0:
            return power
        with np.errstate(invalid="ignore"):
            return np.log10(10.0**power + self.offset_)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The fitted y at positive ``x``."""
        return 10.0 ** self.predict_log10(np.log10(np.asarray(x, dtype=np.float64)))

    def __repr__(self) -> str:
        if not hasattr(self, "gamma_"):
            return f"PowerLaw(offset={self.offset})"
        gamma = format_value_error(self.gamma_, self.gamma_err_, ".4g", ".2g")
        return f"PowerLaw(gamma={gamma}, k=10^{self.log10_k_:.4g}, n={self.n_})"
