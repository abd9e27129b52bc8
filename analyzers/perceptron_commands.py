"""``normdyn perceptron``: the solvable model in one command.

Trains the (seed, alpha) grid (:mod:`normdyn.trainer.perceptron`) into
``OUT/store``, stores the measure ``perceptron_lambda`` of every checkpoint,
fits both laws with the standard fitters (:func:`normdyn.analyzers.fitting.fit_curves`),
fits the theory curves with the same fitters and window, and writes the
report (:mod:`normdyn.analyzers.perceptron_report`) into ``OUT``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm import tqdm

from normdyn.analyzers import perceptron_theory as theory
from normdyn.analyzers.aggregate import MeanCurves, SeedCurve
from normdyn.analyzers.fitting import FitOptions, FitResult, fit_curves
from normdyn.analyzers.perceptron_report import TheoryCurves, write_report
from normdyn.core import plugins
from normdyn.core.errors import ConfigError
from normdyn.core.hookspecs import hookimpl
from normdyn.core.store import MeasureRecord, Run, list_runs
from normdyn.core.table import format_value_error
from normdyn.core.view import CheckpointView, RunContext
from normdyn.trainer.perceptron import PerceptronExperiment, run_experiment

__all__ = [
    "QUICK",
    "FULL",
    "store_lambda_measure",
    "curves_from_store",
    "theory_curves",
    "theory_fit",
    "fit_options",
    "perceptron_command",
]

MEASURE = "perceptron_lambda"
#: Finishes in well under 2 minutes on 2 cores.
QUICK = PerceptronExperiment(
    N=200, alphas=(1.0, 2.0, 4.0, 8.0, 16.0), seeds=(0, 1, 2), steps=4000, schedule="log:30", extra={"mode": "quick"}
)
#: The default experiment (about 4 minutes on 2 cores).
FULL = PerceptronExperiment(extra={"mode": "full"})
#: Law 1's window in lambda/lambda*: between the Hebb plateau (lambda of order 1,
#: lambda/lambda* ~ 1/(2 alpha)) and the minimum, where the theory's local slope is steepest.
LAW1_WINDOW = (0.05, 0.3)
#: Both laws use alpha >= this: at smaller loads the window touches the Hebb
#: plateau and the minimum is so flat that its argmin is mostly noise.
LAW1_MIN_ALPHA = 4.0


def fit_options(exp: PerceptronExperiment) -> FitOptions:
    """The law-1 window and the smallest P of both laws (the three largest alphas at least: law 2 needs 3 points)."""
    usable = [a for a in exp.alphas if a >= LAW1_MIN_ALPHA]
    if len(usable) < 3:
        usable = sorted(exp.alphas)[-3:]
    P_min = exp.P(min(usable))
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


@click.command("perceptron")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default="perceptron-report",
    show_default=True,
    help="Output directory (must not hold a previous store): OUT/store and the report.",
)
@click.option("--quick", is_flag=True, help="A small experiment (N=200, alpha 1..16, 3 seeds): under 2 minutes.")
@click.option("--N", "N", type=int, default=None, help="Override the input dimension.")
@click.option("--alphas", type=str, default=None, help="Override the loads, comma-separated (e.g. 0.5,1,2,4).")
@click.option("--seeds", type=int, default=None, help="Override the number of seeds (0..n-1).")
@click.option("--steps", type=int, default=None, help="Override the maximum number of gradient steps.")
@click.option("--inputs", type=click.Choice(["rademacher", "gaussian"]), default=None, help="Override the inputs.")
@click.option("--schedule", type=str, default=None, help="Override the checkpoint schedule (e.g. log:30).")
@click.option(
    "--device",
    type=str,
    default=None,
    help="Where the gradient descent runs: cpu (default) | cuda | cuda:K (alpha 32 and N >= 1000 are cheap there).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def perceptron_command(
    out: str,
    quick: bool,
    N: int | None,
    alphas: str | None,
    seeds: int | None,
    steps: int | None,
    inputs: str | None,
    schedule: str | None,
    device: str | None,
    quiet: bool,
) -> None:
    """Train the teacher-student perceptron, fit both laws, compare with theory, write a report."""
    exp = QUICK if quick else FULL
    changes: dict[str, Any] = {}
    if N is not None:
        changes["N"] = N
    if alphas is not None:
        try:
            changes["alphas"] = tuple(float(a) for a in alphas.split(","))
        except ValueError:
            raise ConfigError(f"--alphas {alphas!r}: give comma-separated numbers, e.g. 0.5,1,2,4") from None
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds {seeds}: need at least one seed")
        changes["seeds"] = tuple(range(seeds))
    if steps is not None:
        changes["steps"] = steps
    if inputs is not None:
        changes["inputs"] = inputs
    if schedule is not None:
        changes["schedule"] = schedule
    if device is not None:
        changes["device"] = device
    exp = replace(exp, **changes)
    exp.validate()
    out_dir = Path(out)
    store = out_dir / "store"
    if store.exists() and any(store.iterdir()):
        raise ConfigError(f"{store} already holds runs; choose a new --out (nothing is overwritten)")
    t0 = time.perf_counter()
    bar = None if quiet else tqdm(total=exp.steps, desc="gradient descent", unit="step")

    def progress(step: int, active: int) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(active=active)

    summary = run_experiment(exp, store, progress)
    if bar is not None:
        bar.close()
    t_train = time.perf_counter()
    runs = list_runs(store)
    store_lambda_measure(runs)
    sim = fit_curves(curves_from_store(runs), options=fit_options(exp))
    t_fit = time.perf_counter()
    th = theory_curves(list(exp.alphas), lam_lo=1e-3, lam_hi_factor=2 * exp.lam_stop)
    th_fit = theory_fit(th, sim, exp.N)
    t_theory = time.perf_counter()
    j, tj = sim.to_json(), th_fit.to_json()
    extra = {
        "N": exp.N,
        "alphas": list(exp.alphas),
        "seeds": list(exp.seeds),
        "inputs": exp.inputs,
        "gamma1": j["gamma1"],
        "gamma1_err": j["gamma1_err"],
        "gamma2": j["gamma2"],
        "gamma2_err": j["gamma2_err"],
        "gamma1_theory_asymptotic": 0.5,
        "gamma2_theory_asymptotic": 1.0,
        "gamma1_theory_same_fit": tj["gamma1"],
        "gamma2_theory_same_fit": tj["gamma2"],
        "seconds_training": round(t_train - t0, 1),
        "seconds_fitting": round(t_fit - t_train, 1),
        "seconds_theory": round(t_theory - t_fit, 1),
        "steps_per_run": summary.steps,
        "experiment": summary.config,
    }
    extra["seconds_total"] = round(time.perf_counter() - t0, 1)
    index = write_report(out_dir, sim, th, N=exp.N, extra=extra)
    click.echo(
        f"gamma1 = {format_value_error(j['gamma1'], j['gamma1_err'])}  (theory 1/2; theory curves, same fit: "
        f"{format_value_error(tj['gamma1'], tj['gamma1_err'])})"
    )
    click.echo(
        f"gamma2 = {format_value_error(j['gamma2'], j['gamma2_err'])}  (theory 1; theory curves, same fit: "
        f"{format_value_error(tj['gamma2'], tj['gamma2_err'])})"
    )
    click.echo(
        f"time: training {extra['seconds_training']} s, fitting {extra['seconds_fitting']} s, "
        f"theory {extra['seconds_theory']} s, total {extra['seconds_total']} s (before the figures)"
    )
    click.echo(f"report: {index}")


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(perceptron_command)
