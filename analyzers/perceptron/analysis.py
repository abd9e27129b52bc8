"""The solvable model's theory next to its runs: the fit options, the theory curves, the theory fitted alike.

The runs are ordinary runs (trained by the perceptron engine, measured by
``perceptron_lambda``, fitted by the standard pipeline). What is particular
to them is that the N -> infinity theory is known: :func:`theory_for` gives
a report's context the fixed-norm curves and classical errors at the
experiment's loads, and the standard fitters run on those curves with the
simulation's window (:func:`theory_fit`), which the report sections of
plugins/reports/perceptron_theory.py draw and tabulate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from normdyn.analyzers.fit.aggregate import MeanCurves
from normdyn.analyzers.fit.pipeline import FitOptions, FitResult, fit_curves
from normdyn.analyzers.perceptron import theory
from normdyn.core.errors import NormdynError
from normdyn.core.store import Run

__all__ = [
    "MEASURE",
    "LAW1_WINDOW",
    "LAW1_MIN_ALPHA",
    "TheoryCurves",
    "PerceptronTheory",
    "theory_curves",
    "theory_fit",
    "theory_for",
    "fit_options",
]

MEASURE = "perceptron_lambda"
#: Law 1's window in lambda/lambda*: between the Hebb plateau (lambda of order 1,
#: lambda/lambda* ~ 1/(2 alpha)) and the minimum, where the theory's local slope is steepest.
LAW1_WINDOW = (0.05, 0.3)
#: Both laws use alpha >= this: at smaller loads the window touches the Hebb
#: plateau and the minimum is so flat that its argmin is mostly noise.
LAW1_MIN_ALPHA = 4.0
#: The theory curves reach lambda = this factor x alpha when the runs have no stopping rule.
LAM_HI_FACTOR = 12.0


def fit_options(alphas: Sequence[float], N: int) -> FitOptions:
    """The law-1 window and the smallest P of both laws (the three largest alphas at least: law 2 needs 3 points)."""
    usable = [a for a in alphas if a >= LAW1_MIN_ALPHA]
    if len(usable) < 3:
        usable = sorted(alphas)[-3:]
    P_min = int(round(min(usable) * N))
    return FitOptions(window=LAW1_WINDOW, law1_min_P=P_min, law2_min_P=P_min)


@dataclass
class TheoryCurves:
    """The theory at each alpha of the experiment."""

    alphas: np.ndarray
    curves: list[list[theory.FixedNormPoint]]  # eps(lambda; alpha) on a lambda grid, one list per alpha
    optimum: list[theory.FixedNormPoint]  # lambda*(alpha), eps*(alpha)
    eps_hebb: np.ndarray
    eps_gibbs: np.ndarray
    eps_bayes: np.ndarray
    eps_max_stability: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """The per-alpha theory values (the curves are in the figures, not repeated here)."""
        return {
            "alpha": self.alphas.tolist(),
            "lambda_star": [p.lam for p in self.optimum],
            "eps_star": [p.eps for p in self.optimum],
            "eps_hebb": self.eps_hebb.tolist(),
            "eps_gibbs": self.eps_gibbs.tolist(),
            "eps_bayes": self.eps_bayes.tolist(),
            "eps_max_stability": self.eps_max_stability.tolist(),
        }


@dataclass
class PerceptronTheory:
    """What a report of perceptron runs adds: N, the theory at the runs' loads, and its fit (None if it failed)."""

    N: int
    curves: TheoryCurves
    fit: FitResult | None
    fit_error: str | None = None


def theory_curves(alphas: list[float], lam_lo: float, lam_hi_factor: float, n: int = 30) -> TheoryCurves:
    """Fixed-norm curves on lambda in [lam_lo, lam_hi_factor * alpha], the optima and the classical errors."""
    a = np.array(sorted(alphas), dtype=np.float64)
    curves = [theory.fixed_norm_curve(np.geomspace(lam_lo, lam_hi_factor * x, n), float(x)) for x in a]
    optimum = [theory.optimal_norm(float(x), c) for x, c in zip(a, curves)]
    return TheoryCurves(
        a,
        curves,
        optimum,
        np.asarray(theory.eps_hebb(a)),
        np.array([theory.eps_gibbs(float(x)) for x in a]),
        np.array([theory.eps_bayes(float(x)) for x in a]),
        np.array([theory.eps_max_stability(float(x)) for x in a]),
    )


def theory_fit(th: TheoryCurves, sim: FitResult, N: int) -> FitResult:
    """The same fitters, with the simulation's window, on the theory curves at P = alpha N.

    The theory curves are interpolated (linear in log10 lambda) on the
    simulation's grid; lambda* and eps* come from the refined optimum.
    """
    grid = sim.curves.log10_grid
    rows = []
    for curve in th.curves:
        x = np.log10([p.lam for p in curve])
        rows.append(np.interp(grid, x, [p.eps for p in curve], left=np.nan, right=np.nan))
    mean = MeanCurves(
        grid,
        np.array([int(round(a * N)) for a in th.alphas]),
        np.array(rows),
        np.log10([p.lam for p in th.optimum]),
        "fixed-norm theory",
    )
    return fit_curves(mean, options=replace(sim.options, window=sim.window))


def theory_for(measure: str, runs: Sequence[Any], fit: FitResult | None) -> PerceptronTheory | None:
    """The theory of a report's runs when they are the teacher-student perceptron measured by lambda, else None.

    ``runs`` are the report's runs (anything with ``path`` and ``P``). They
    qualify when ``measure`` is ``perceptron_lambda`` and every run is a
    ``perceptron`` model on ``teacher`` data; the loads are P/N, the lambda
    range reaches twice the runs' stopping norm (``optimizer_params.lam_stop``).
    """
    if measure != MEASURE or not runs:
        return None
    stored = [Run(r.path) for r in runs]
    models = {run.model_spec.get("name") for run in stored}
    datasets = {run.dataset.get("name") for run in stored}
    if models != {"perceptron"} or datasets != {"teacher"}:
        return None
    Ns = {run.model_spec.get("N") for run in stored}
    N = Ns.pop() if len(Ns) == 1 else None
    if not isinstance(N, int):
        return None  # not one input dimension: no theory to compare with
    lam_stop = stored[0].config.get("optimizer_params", {}).get("lam_stop")
    alphas = sorted({r.P / N for r in runs})
    curves = theory_curves(alphas, lam_lo=1e-3, lam_hi_factor=2 * lam_stop if lam_stop else LAM_HI_FACTOR)
    if fit is None:
        return PerceptronTheory(N, curves, None, "the simulation's fit failed: the theory is not fitted")
    try:
        return PerceptronTheory(N, curves, theory_fit(curves, fit, N))
    except NormdynError as exc:
        return PerceptronTheory(N, curves, None, str(exc))
