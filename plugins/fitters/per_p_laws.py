"""Power laws of a per-P quantity: law 2 (lambda*(P)) and the measured eps*(P).

- Law 2: lambda*(P) = k2 P^gamma2 (optionally + c): OLS of log lambda* on
  log P with its standard error, as the reference's ``fit_and_plot_powerlaw``.
- Measured: eps*(P) = k_meas P^(-gamma_meas): OLS of log eps* on log P over
  the P given (the reference uses all P).

lambda* is passed as log10 so a ViT's 1e75 never leaves log space.
"""

from __future__ import annotations

import numpy as np

from normdyn.core.errors import FitError
from normdyn.core.hookspecs import Register, hookimpl
from normdyn.plugins.fitters.powerlaw import PowerLaw

__all__ = ["Law2LambdaStar", "MeasuredExponent"]


def _check_P(P: np.ndarray, what: str) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if np.unique(P).size < 2:
        only = ", ".join(str(int(p)) for p in np.unique(P)) or "none"
        raise FitError(f"{what}: a single training-set size (P={only}); a scaling law needs several P (at least 3)")
    return P


class Law2LambdaStar:
    """Fit lambda*(P) = k2 P^gamma2 (+ c with ``offset=True``).

    Fitted attributes: ``gamma2_``, ``gamma2_err_``, ``log10_k2_``, ``k2_``,
    ``offset_``, ``offset_err_``, ``P_``, ``log10_lambda_star_``; ``power_law_``
    is the underlying :class:`PowerLaw`.
    """

    name = "law2"

    def __init__(self, offset: bool = False):
        self.offset = offset

    def fit(self, P: np.ndarray, log10_lambda_star: np.ndarray) -> Law2LambdaStar:
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


class MeasuredExponent:
    """Fit eps*(P) = k_meas P^(-gamma_meas) directly.

    Fitted attributes: ``gamma_meas_``, ``gamma_meas_err_``, ``k_meas_``, ``P_``, ``eps_star_``.
    """

    name = "measured"

    def fit(self, P: np.ndarray, eps_star: np.ndarray) -> MeasuredExponent:
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
    """Register the law-2 and measured-exponent fitters."""
    register(Law2LambdaStar)
    register(MeasuredExponent)
