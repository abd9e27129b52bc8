"""The built-in fitters of per-P power laws: law 2 (lambda*(P)) and the direct eps*(P) fit.

lambda* is passed as log10 so a ViT's 1e75 never leaves log space.
"""

from __future__ import annotations

import numpy as np

from normdyn.core.errors import FitError
from normdyn.core.hookspecs import Register, hookimpl
from normdyn.plugins.fitters.powerlaw import PowerLaw

__all__ = ["Law2OLS", "EpsStarOLS"]


def _check_P(P: np.ndarray, what: str) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if np.unique(P).size < 2:
        only = ", ".join(str(int(p)) for p in np.unique(P)) or "none"
        raise FitError(f"{what}: a single training-set size (P={only}); a scaling law needs several P (at least 3)")
    return P


class Law2OLS:
    """lambda*(P) = k2 P^gamma2: OLS of log10 lambda* on log10 P, gamma2 = slope with its OLS standard
    error (the reference's ``fit_and_plot_powerlaw``). With ``offset=True``: k2 P^gamma2 + c by
    ``scipy.optimize.curve_fit`` with relative residuals (see :class:`PowerLaw`).

    Besides the law-2 contract it keeps ``offset_err_`` and ``power_law_`` (the :class:`PowerLaw`).
    """

    name = "law2_ols"
    law = "law2"

    def __init__(self, offset: bool = False):
        self.offset = offset

    def fit(self, P: np.ndarray, log10_lambda_star: np.ndarray) -> Law2OLS:
        """Fit on training-set sizes ``P`` and ``log10 lambda*(P)``; return self."""
        P = _check_P(P, "law 2")
        self.P_ = P
        self.log10_lambda_star_ = np.asarray(log10_lambda_star, dtype=np.float64)
        pl = PowerLaw(offset=self.offset, what="law 2: lambda*(P)").fit_log10(np.log10(P), self.log10_lambda_star_)
        self.power_law_ = pl
        self.gamma2_, self.gamma2_err_ = -pl.gamma_, pl.gamma_err_  # lambda* grows with P: gamma2 = -(decay exponent)
        self.log10_k2_, self.k2_ = pl.log10_k_, pl.k_
        self.offset_, self.offset_err_ = pl.offset_, pl.offset_err_
        return self

    def predict_log10(self, P: np.ndarray) -> np.ndarray:
        """log10 lambda* predicted at ``P``."""
        return self.power_law_.predict_log10(np.log10(np.asarray(P, dtype=np.float64)))


class EpsStarOLS:
    """eps*(P) = k_meas P^(-gamma_meas): OLS of log10 eps* on log10 P over the P given (the reference
    uses all P); gamma_meas = -slope with its OLS standard error, k_meas = 10^intercept."""

    name = "eps_star_ols"
    law = "eps_star"

    def fit(self, P: np.ndarray, eps_star: np.ndarray) -> EpsStarOLS:
        """Fit on training-set sizes ``P`` and minimal mean test errors ``eps_star``; return self."""
        P = _check_P(P, "measured exponent")
        self.P_ = P
        self.eps_star_ = np.asarray(eps_star, dtype=np.float64)
        pl = PowerLaw(what="measured exponent: eps*(P)").fit(P, self.eps_star_)
        self.gamma_meas_, self.gamma_meas_err_, self.k_meas_ = pl.gamma_, pl.gamma_err_, pl.k_
        return self

    def predict(self, P: np.ndarray) -> np.ndarray:
        """eps* of the direct fit at ``P``."""
        return self.k_meas_ * np.asarray(P, dtype=np.float64) ** (-self.gamma_meas_)


@hookimpl
def register_fitters(register: Register) -> None:
    """Register the law-2 and direct eps*(P) fitters."""
    register(Law2OLS)
    register(EpsStarOLS)
