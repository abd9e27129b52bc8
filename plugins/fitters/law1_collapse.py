"""The built-in law-1 fitters: eps/eps* = k1 (lambda/lambda*)^(-gamma1) from the collapse.

Both fit OLS lines of log10(eps/eps*) on log10(lambda/lambda*) inside the
window (:mod:`normdyn.plugins.fitters.collapse`); they differ in how the P are
combined. The per-P slopes are always the per-P OLS ones.
"""

from __future__ import annotations

import numpy as np

from normdyn.core.hookspecs import Register, hookimpl
from normdyn.plugins.fitters.collapse import CollapseFitter, per_P_ols
from normdyn.plugins.fitters.powerlaw import PowerLaw

__all__ = ["PaperLaw1", "PooledLaw1"]


class PaperLaw1(CollapseFitter):
    """The reference's estimator: one OLS per P; gamma1 = -(mean of the slopes),
    k1 = mean of the prefactors 10^intercept, gamma1_err = sqrt(mean of the slope variances)."""

    name = "paper"
    law = "law1"

    def _estimate(self) -> None:
        self.gamma1_P_, self.gamma1_err_P_, self.k1_P_ = per_P_ols(self.log10_x_, self.log10_y_, self.in_window_)
        self.gamma1_ = float(np.mean(self.gamma1_P_))
        self.k1_ = float(np.mean(self.k1_P_))
        self.gamma1_err_ = float(np.sqrt(np.mean(self.gamma1_err_P_**2)))


class PooledLaw1(CollapseFitter):
    """One OLS through the window points of all P together: gamma1 = -slope, k1 = 10^intercept,
    gamma1_err = that regression's standard error (which treats correlated grid points as independent)."""

    name = "pooled"
    law = "law1"

    def _estimate(self) -> None:
        self.gamma1_P_, self.gamma1_err_P_, self.k1_P_ = per_P_ols(self.log10_x_, self.log10_y_, self.in_window_)
        inside = self.in_window_
        pooled = PowerLaw(what="law 1, pooled").fit_log10(self.log10_x_[inside], self.log10_y_[inside])
        self.gamma1_, self.gamma1_err_, self.k1_ = pooled.gamma_, pooled.gamma_err_, pooled.k_


@hookimpl
def register_fitters(register: Register) -> None:
    """Register the two law-1 estimators."""
    register(PaperLaw1)
    register(PooledLaw1)
