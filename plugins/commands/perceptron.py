"""``normdyn perceptron``: the solvable model in one command.

Trains the (seed, alpha) grid (:mod:`normdyn.trainer.perceptron`) into
``OUT/store``, stores the measure ``perceptron_lambda`` of every checkpoint,
fits both laws with the standard fitters, fits the theory curves with the
same fitters and window (:mod:`normdyn.analyzers.perceptron.analysis`), and
writes the report (:mod:`normdyn.analyzers.report.perceptron`) into ``OUT``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from normdyn.core.errors import ConfigError
from normdyn.core.table import format_value_error

if TYPE_CHECKING:  # pragma: no cover - the trainer (torch) loads only when the command runs
    from normdyn.trainer.perceptron import PerceptronExperiment

__all__ = ["perceptron_experiment", "perceptron_command"]


def perceptron_experiment(quick: bool) -> PerceptronExperiment:
    """The quick experiment (well under 2 minutes on 2 cores) or the default one (about 4 minutes)."""
    from normdyn.trainer.perceptron import PerceptronExperiment

    if quick:
        return PerceptronExperiment(
            N=200,
            alphas=(1.0, 2.0, 4.0, 8.0, 16.0),
            seeds=(0, 1, 2),
            steps=4000,
            schedule="log:30",
            extra={"mode": "quick"},
        )
    return PerceptronExperiment(extra={"mode": "full"})


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
    from tqdm import tqdm

    from normdyn.analyzers.fit.pipeline import fit_curves
    from normdyn.analyzers.perceptron.analysis import (
        curves_from_store,
        fit_options,
        store_lambda_measure,
        theory_curves,
        theory_fit,
    )
    from normdyn.analyzers.report.perceptron import write_report
    from normdyn.core.store import list_runs
    from normdyn.trainer.perceptron import run_experiment

    exp = perceptron_experiment(quick)
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
    sim = fit_curves(curves_from_store(runs), options=fit_options(exp.alphas, exp.N))
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
