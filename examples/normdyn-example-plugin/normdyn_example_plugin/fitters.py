"""A third-party law-1 fitter: Theil-Sen slopes of the collapse, robust to outlying grid points."""

from __future__ import annotations

import numpy as np
from scipy.stats import theilslopes

from normdyn.core.hookspecs import Register, hookimpl
from normdyn.plugins.fitters.collapse import CollapseFitter

__all__ = ["TheilSenLaw1"]

_Z95 = 1.959963984540054  # the normal 97.5% quantile: a 95% interval spans 2 z standard errors


class TheilSenLaw1(CollapseFitter):
    """Per P, the Theil-Sen line of log10(eps/eps*) on log10(lambda/lambda*) over the window
    (``scipy.stats.theilslopes``: slope = median of the pairwise slopes, intercept = median of
    y - slope x); gamma1_P = -slope, gamma1_err_P = (width of its 95% interval) / (2 * 1.96),
    k1_P = 10^intercept. gamma1 = mean of gamma1_P, k1 = mean of k1_P,
    gamma1_err = sqrt(mean of gamma1_err_P^2), as the reference combines per-P OLS lines."""

    name = "theil_sen"
    law = "law1"

    def _estimate(self) -> None:
        rows = [
            theilslopes(y[inside], x[inside], alpha=0.95)
            for x, y, inside in zip(self.log10_x_, self.log10_y_, self.in_window_)
        ]
        self.gamma1_P_ = np.array([-r.slope for r in rows])
        self.gamma1_err_P_ = np.array([(r.high_slope - r.low_slope) / (2 * _Z95) for r in rows])
        self.k1_P_ = np.array([10.0**r.intercept for r in rows])
        self.gamma1_ = float(np.mean(self.gamma1_P_))
        self.k1_ = float(np.mean(self.k1_P_))
        self.gamma1_err_ = float(np.sqrt(np.mean(self.gamma1_err_P_**2)))


@hookimpl
def register_fitters(register: Register) -> None:
    """Register the Theil-Sen law-1 fitter."""
    register(TheilSenLaw1)
