"""The combined law eps*(P) ~ P^(-gamma1 gamma2), checked against the direct fit.

gamma_pred = gamma1 * gamma2 with the reference's uncertainty
    sigma = sqrt( (gamma1 gamma2)^2 ((e1/gamma1)^2 + (e2/gamma2)^2) + e_meas^2 ),
where e1, e2, e_meas are the standard errors of gamma1, gamma2, gamma_meas;
z = (gamma_pred - gamma_meas) / sigma.

The predicted curve eps*_pred(P) = A P^(-gamma_pred) has its prefactor A
fitted (the reference sets a constant by hand): with the slope fixed, the
least-squares log10 A is the mean over P of log10 eps*(P) + gamma_pred log10 P.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normdyn.core.errors import FitError
from normdyn.core.hookspecs import Register, hookimpl

__all__ = ["CombinedPrediction"]


class CombinedPrediction:
    """Combine fitted ``law1``, ``law2`` and ``measured`` fitters into gamma_pred.

    Fitted attributes: ``gamma_pred_``, ``sigma_``, ``z_``, ``log10_prefactor_``
    (log10 A of the predicted eps* curve), ``P_``, ``eps_star_``.
    """

    name = "combined"

    def __init__(self, law1: Any, law2: Any, measured: Any):
        self.law1 = law1
        self.law2 = law2
        self.measured = measured

    def fit(self, P: np.ndarray, eps_star: np.ndarray) -> CombinedPrediction:
        """Compute gamma_pred, sigma, z and fit the prefactor of eps*_pred on (P, eps*); return self."""
        g1, e1 = self.law1.gamma1_, self.law1.gamma1_err_
        g2, e2 = self.law2.gamma2_, self.law2.gamma2_err_
        if g1 == 0 or g2 == 0:
            raise FitError(f"combined law: gamma1={g1:g}, gamma2={g2:g}; the relative errors need both non-zero")
        self.gamma_pred_ = float(g1 * g2)
        self.sigma_ = float(
            np.sqrt(self.gamma_pred_**2 * ((e1 / g1) ** 2 + (e2 / g2) ** 2) + self.measured.gamma_meas_err_**2)
        )
        self.z_ = float((self.gamma_pred_ - self.measured.gamma_meas_) / self.sigma_)
        P = np.asarray(P, dtype=np.float64)
        eps_star = np.asarray(eps_star, dtype=np.float64)
        ok = np.isfinite(eps_star) & (eps_star > 0)
        if not np.any(ok):
            raise FitError("combined law: no positive eps*(P) to fit the prefactor on")
        self.P_, self.eps_star_ = P, eps_star
        self.log10_prefactor_ = float(np.mean(np.log10(eps_star[ok]) + self.gamma_pred_ * np.log10(P[ok])))
        return self

    def predict(self, P: np.ndarray) -> np.ndarray:
        """The predicted eps*(P) = A P^(-gamma_pred)."""
        return 10.0 ** (self.log10_prefactor_ - self.gamma_pred_ * np.log10(np.asarray(P, dtype=np.float64)))


@hookimpl
def register_fitters(register: Register) -> None:
    """Register the combined-law fitter."""
    register(CombinedPrediction)
