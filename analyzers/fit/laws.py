"""The fitter contract per law, and one pass of the fitting pipeline on mean curves.

A fitter is a CLASS registered through ``register_fitters``, scikit-learn
style, with ``name: str`` (unique among all fitters: the value of
``--method``, ``--law2-method`` or ``--eps-star-method``), ``law: str`` (what
it estimates: ``"law1"``, ``"law2"`` or ``"eps_star"``), a docstring that
states its estimator exactly, ``__init__(**hyperparameters)`` that only stores
them (law-1 fitters take ``window=(lo, hi)`` in lambda/lambda*; a law-2 fitter
may take ``offset``), and ``fit(...)`` with its law's signature, returning
self, the fitted values in attributes ending in ``_``. Per law the signature
and the fitted attributes are fixed (the Protocols below), so any fitter of a
law replaces any other. Plugins need not inherit from the Protocols, only
match them; ``normdyn.plugins.fitters.collapse.CollapseFitter`` does the
law-1 collapse and window for a new law-1 estimator.

The pipeline (:func:`fit_laws`) fits the three laws with the fitters named in
:class:`FitOptions`; the combined prediction is not an estimator but a
computation on the three fitted ones (:func:`combine_laws`). The same
function serves the point estimate and every bootstrap replicate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from normdyn.analyzers.fit.aggregate import MeanCurves
from normdyn.core import plugins
from normdyn.core.errors import FitError

__all__ = [
    "LAWS",
    "Law1Fitter",
    "Law2Fitter",
    "EpsStarFitter",
    "FitOptions",
    "CombinedLaw",
    "LawFits",
    "check_methods",
    "combine_laws",
    "fit_laws",
    "fitter_class",
    "law_P_mask",
]

LAWS = ("law1", "law2", "eps_star")
_LAW_LABELS = {"law1": "law 1", "law2": "law 2", "eps_star": "eps*(P)"}


class Law1Fitter(Protocol):
    """Law 1, eps/eps* = k1 (lambda/lambda*)^(-gamma1), from the collapse of the mean curves.

    Hyperparameter ``window`` = (lo, hi) in lambda/lambda*.
    ``fit(log10_grid, mean_error, P)``: the mean test error (rows per P) on the
    common grid log10 lambda. Fitted: ``gamma1_``, ``gamma1_err_`` (its
    standard error), ``k1_``; per P (arrays aligned with ``P_``):
    ``gamma1_P_``, ``gamma1_err_P_``, ``k1_P_``; the collapse that was fitted:
    ``log10_x_`` = log10(lambda/lambda*), ``log10_y_`` = log10(eps/eps*) (rows
    per P on the full grid) and ``in_window_`` (mask of the points used).
    ``predict(lambda_ratio)`` is eps/eps* at lambda/lambda*.
    """

    name: ClassVar[str]
    law: ClassVar[str]
    window: tuple[float, float]
    gamma1_: float
    gamma1_err_: float
    k1_: float
    P_: np.ndarray
    gamma1_P_: np.ndarray
    gamma1_err_P_: np.ndarray
    k1_P_: np.ndarray
    log10_x_: np.ndarray
    log10_y_: np.ndarray
    in_window_: np.ndarray

    def fit(self, log10_grid: np.ndarray, mean_error: np.ndarray, P: np.ndarray) -> Law1Fitter: ...

    def predict(self, lambda_ratio: np.ndarray) -> np.ndarray: ...


class Law2Fitter(Protocol):
    """Law 2, lambda*(P) = k2 P^gamma2 (+ c where the estimator has an offset).

    ``fit(P, log10_lambda_star)`` (lambda* as log10: a ViT's 1e75 never leaves
    log space). Fitted: ``gamma2_``, ``gamma2_err_``, ``k2_``, ``log10_k2_``,
    ``offset_`` (c; 0.0 for a pure power law), ``P_``, ``log10_lambda_star_``.
    ``predict_log10(P)`` is log10 lambda* at P.
    """

    name: ClassVar[str]
    law: ClassVar[str]
    gamma2_: float
    gamma2_err_: float
    k2_: float
    log10_k2_: float
    offset_: float
    P_: np.ndarray
    log10_lambda_star_: np.ndarray

    def fit(self, P: np.ndarray, log10_lambda_star: np.ndarray) -> Law2Fitter: ...

    def predict_log10(self, P: np.ndarray) -> np.ndarray: ...


class EpsStarFitter(Protocol):
    """The direct fit eps*(P) = k_meas P^(-gamma_meas) that the combined law is checked against.

    ``fit(P, eps_star)``. Fitted: ``gamma_meas_``, ``gamma_meas_err_``,
    ``k_meas_``, ``P_``, ``eps_star_``. ``predict(P)`` is eps* at P.
    """

    name: ClassVar[str]
    law: ClassVar[str]
    gamma_meas_: float
    gamma_meas_err_: float
    k_meas_: float
    P_: np.ndarray
    eps_star_: np.ndarray

    def fit(self, P: np.ndarray, eps_star: np.ndarray) -> EpsStarFitter: ...

    def predict(self, P: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class FitOptions:
    """What a fit is asked to do. ``window`` is (lo, hi) in lambda/lambda*; None means choose automatically.

    ``method``, ``law2_method`` and ``eps_star_method`` name the fitter of each
    law (``normdyn plugins`` lists the registered ones).
    """

    window: tuple[float, float] | None = None
    law1_min_P: int | None = None  # law 1 uses P >= this (None: every P)
    law2_min_P: int | None = None  # law 2 uses P >= this (None: every P)
    method: str = "paper"  # law-1 fitter: "paper" (mean of per-P slopes, the reference), "pooled" (one OLS), ...
    law2_offset: bool = False  # the law-2 fitter's ``offset`` hyperparameter: k2 P^gamma2 + c
    law2_method: str = "law2_ols"
    eps_star_method: str = "eps_star_ols"


@dataclass(frozen=True)
class CombinedLaw:
    """eps*(P) ~ P^(-gamma_pred), gamma_pred = gamma1 gamma2, checked against the direct fit.

    ``sigma`` = sqrt(gamma_pred^2 ((e1/gamma1)^2 + (e2/gamma2)^2) + e_meas^2)
    (the reference's), ``z`` = (gamma_pred - gamma_meas) / sigma. The predicted
    curve A P^(-gamma_pred) has its prefactor fitted (the reference sets a
    constant by hand): with the slope fixed, the least-squares log10 A is the
    mean over P of log10 eps*(P) + gamma_pred log10 P.
    """

    gamma_pred: float
    sigma: float
    z: float
    log10_prefactor: float

    def predict(self, P: np.ndarray) -> np.ndarray:
        """The predicted eps*(P) = A P^(-gamma_pred)."""
        return 10.0 ** (self.log10_prefactor - self.gamma_pred * np.log10(np.asarray(P, dtype=np.float64)))


def combine_laws(
    law1: Law1Fitter, law2: Law2Fitter, eps_star_fit: EpsStarFitter, P: np.ndarray, eps_star: np.ndarray
) -> CombinedLaw:
    """gamma_pred, sigma, z of the fitted laws and the prefactor of eps*_pred fitted on (P, eps*)."""
    g1, e1 = law1.gamma1_, law1.gamma1_err_
    g2, e2 = law2.gamma2_, law2.gamma2_err_
    if g1 == 0 or g2 == 0:
        raise FitError(f"combined law: gamma1={g1:g}, gamma2={g2:g}; the relative errors need both non-zero")
    gamma_pred = float(g1 * g2)
    sigma = float(np.sqrt(gamma_pred**2 * ((e1 / g1) ** 2 + (e2 / g2) ** 2) + eps_star_fit.gamma_meas_err_**2))
    P = np.asarray(P, dtype=np.float64)
    eps_star = np.asarray(eps_star, dtype=np.float64)
    ok = np.isfinite(eps_star) & (eps_star > 0)
    if not np.any(ok):
        raise FitError("combined law: no positive eps*(P) to fit the prefactor on")
    log10_prefactor = float(np.mean(np.log10(eps_star[ok]) + gamma_pred * np.log10(P[ok])))
    return CombinedLaw(gamma_pred, sigma, float((gamma_pred - eps_star_fit.gamma_meas_) / sigma), log10_prefactor)


@dataclass
class LawFits:
    """The fitted fitters of one pass and their combination."""

    law1: Law1Fitter
    law2: Law2Fitter
    eps_star: EpsStarFitter
    combined: CombinedLaw


def fitter_class(law: str, name: str) -> Callable[..., Any]:
    """The registered fitter ``name``, which must estimate ``law``; otherwise an error listing that law's fitters."""
    label = _LAW_LABELS[law]
    candidates = {n: plugins.get("fitters", n) for n in plugins.names("fitters")}
    of_law = sorted(n for n, cls in candidates.items() if cls.law == law)
    choices = ", ".join(of_law) or "none"
    if name not in candidates:
        raise FitError(f"{label}: unknown method {name!r}; use one of {choices}")
    cls = candidates[name]
    if cls.law != law:
        raise FitError(f"{label}: fitter {name!r} estimates {cls.law}, not {law}; use one of {choices}")
    return cls


def check_methods(options: FitOptions) -> None:
    """Fail early (before any window search) if a chosen fitter is unknown or of the wrong law."""
    fitter_class("law1", options.method)
    fitter_class("law2", options.law2_method)
    fitter_class("eps_star", options.eps_star_method)


def law_P_mask(P: np.ndarray, min_P: int | None, option: str) -> np.ndarray:
    """Boolean mask of P >= ``min_P``; an empty selection is an error naming ``option``."""
    mask = np.ones(len(P), dtype=bool) if min_P is None else P >= min_P
    if not mask.any():
        raise FitError(f"{option} {min_P} leaves no training-set size (largest P is {int(P.max())})")
    return mask


def _law2_fitter(options: FitOptions) -> Law2Fitter:
    cls = fitter_class("law2", options.law2_method)
    if not options.law2_offset:
        return cls()
    try:
        return cls(offset=True)
    except TypeError:
        raise FitError(
            f"--law2-offset: the law-2 fitter {options.law2_method!r} has no 'offset' hyperparameter"
        ) from None


def fit_laws(mean: MeanCurves, window: tuple[float, float], options: FitOptions) -> LawFits:
    """Fit every law on ``mean`` with the law-1 ``window`` (already resolved) and combine them."""
    P = mean.P
    if np.unique(P).size < 2:
        raise FitError(f"a single training-set size (P={int(P[0])}); scaling laws need several P (at least 3)")
    m1 = law_P_mask(P, options.law1_min_P, "--law1-min-P")
    m2 = law_P_mask(P, options.law2_min_P, "--law2-min-P")
    law1 = fitter_class("law1", options.method)(window=window).fit(mean.log10_grid, mean.mean_error[m1], P[m1])
    law2 = _law2_fitter(options).fit(P[m2], mean.log10_lambda_star[m2])
    eps_star = mean.eps_star
    direct = fitter_class("eps_star", options.eps_star_method)().fit(P, eps_star)
    return LawFits(law1, law2, direct, combine_laws(law1, law2, direct, P, eps_star))
