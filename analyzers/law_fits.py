"""One pass of the fitting pipeline on mean curves: law 1, law 2, measured, combined.

The fitters come from the plugin host (``fitters`` registry: ``law1``,
``law2``, ``measured``, ``combined``), so a plugin can replace any of them.
The same function serves the point estimate and every bootstrap replicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normdyn.analyzers.aggregate import MeanCurves
from normdyn.core import plugins
from normdyn.core.errors import FitError

__all__ = ["FitOptions", "LawFits", "fit_laws", "law_P_mask"]


@dataclass(frozen=True)
class FitOptions:
    """What a fit is asked to do. ``window`` is (lo, hi) in lambda/lambda*; None means choose automatically."""

    window: tuple[float, float] | None = None
    law1_min_P: int | None = None  # law 1 uses P >= this (None: every P)
    law2_min_P: int | None = None  # law 2 uses P >= this (None: every P)
    method: str = "paper"  # law-1 estimator: "paper" (mean of per-P slopes) or "pooled"
    law2_offset: bool = False  # fit lambda*(P) = k2 P^gamma2 + c instead of k2 P^gamma2


@dataclass
class LawFits:
    """The four fitted fitters of one pass."""

    law1: Any
    law2: Any
    measured: Any
    combined: Any


def law_P_mask(P: np.ndarray, min_P: int | None, option: str) -> np.ndarray:
    """Boolean mask of P >= ``min_P``; an empty selection is an error naming ``option``."""
    mask = np.ones(len(P), dtype=bool) if min_P is None else P >= min_P
    if not mask.any():
        raise FitError(f"{option} {min_P} leaves no training-set size (largest P is {int(P.max())})")
    return mask


def fit_laws(mean: MeanCurves, window: tuple[float, float], options: FitOptions) -> LawFits:
    """Fit all four laws on ``mean`` with the law-1 ``window`` (already resolved)."""
    P = mean.P
    if np.unique(P).size < 2:
        raise FitError(f"a single training-set size (P={int(P[0])}); scaling laws need several P (at least 3)")
    m1 = law_P_mask(P, options.law1_min_P, "--law1-min-P")
    m2 = law_P_mask(P, options.law2_min_P, "--law2-min-P")
    law1 = plugins.get("fitters", "law1")(window=window, method=options.method)
    law1.fit(mean.log10_grid, mean.mean_error[m1], P[m1])
    law2 = plugins.get("fitters", "law2")(offset=options.law2_offset).fit(P[m2], mean.log10_lambda_star[m2])
    eps_star = mean.eps_star
    measured = plugins.get("fitters", "measured")().fit(P, eps_star)
    combined = plugins.get("fitters", "combined")(law1, law2, measured).fit(P, eps_star)
    return LawFits(law1, law2, measured, combined)
