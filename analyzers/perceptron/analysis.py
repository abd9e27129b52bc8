"""The solvable model's analysis: the perceptron's lambda per checkpoint, its curves, the theory curves fitted alike.

The experiment itself (training the (seed, alpha) grid, the report) is the
``normdyn perceptron`` command in plugins/commands/; this module needs only
stores and the fitting pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from normdyn.analyzers.fit.aggregate import MeanCurves, SeedCurve
from normdyn.analyzers.fit.pipeline import FitOptions, FitResult, fit_curves
from normdyn.analyzers.perceptron import theory
from normdyn.analyzers.report.perceptron import TheoryCurves
from normdyn.core import plugins
from normdyn.core.errors import ConfigError
from normdyn.core.store import MeasureRecord, Run
from normdyn.core.view import CheckpointView, RunContext

__all__ = [
    "MEASURE",
    "LAW1_WINDOW",
    "LAW1_MIN_ALPHA",
    "store_lambda_measure",
    "curves_from_store",
    "theory_curves",
    "theory_fit",
    "fit_options",
]

MEASURE = "perceptron_lambda"
#: Law 1's window in lambda/lambda*: between the Hebb plateau (lambda of order 1,
#: lambda/lambda* ~ 1/(2 alpha)) and the minimum, where the theory's local slope is steepest.
LAW1_WINDOW = (0.05, 0.3)
#: Both laws use alpha >= this: at smaller loads the window touches the Hebb
#: plateau and the minimum is so flat that its argmin is mostly noise.
LAW1_MIN_ALPHA = 4.0


def fit_options(alphas: Sequence[float], N: int) -> FitOptions:
    """The law-1 window and the smallest P of both laws (the three largest alphas at least: law 2 needs 3 points)."""
    usable = [a for a in alphas if a >= LAW1_MIN_ALPHA]
    if len(usable) < 3:
        usable = sorted(alphas)[-3:]
    P_min = int(round(min(usable) * N))
    return FitOptions(window=LAW1_WINDOW, law1_min_P=P_min, law2_min_P=P_min)


def store_lambda_measure(runs: list[Run]) -> None:
    """Compute ``perceptron_lambda`` on every checkpoint and store it as ``analyze`` would."""
    measure = plugins.get("measures", MEASURE)
    owner = plugins.registry("measures").owners[MEASURE]
    for run in runs:
        context = RunContext.for_run(run)
        table = run.checkpoints()
        state: dict[str, Any] = {}
        values = [measure.compute(CheckpointView.open(run.path / f, context), state) for f in table["file"]]
        run.write_measure(
            MEASURE,
            MeasureRecord(
                np.asarray(values, dtype=np.float64),
                owner,
                measure.version,
                dict(measure.params),
                [str(s) for s in table["sha256"]],
            ),
        )


def curves_from_store(runs: list[Run]) -> list[SeedCurve]:
    """(P, seed, log10 lambda, eps) per run; the zero initial weights (lambda = 0) have no log and are left out."""
    curves = []
    for run in runs:
        lam = run.read_measure(MEASURE)
        if lam is None:
            raise ConfigError(f"{run.path}: measure {MEASURE!r} is not stored")
        eps = np.asarray(run.checkpoints()["test_error"], dtype=np.float64)
        keep = np.isfinite(lam.values) & (lam.values > 0) & np.isfinite(eps)
        curves.append(SeedCurve(run.P, run.seed, np.log10(lam.values[keep]), eps[keep], source=str(run.path)))
    return curves


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
