"""``normdyn perceptron``: the solvable model in one command.

Trains the (seed, alpha) grid (:mod:`normdyn.plugins.commands.perceptron_experiment`,
ordinary runs on the perceptron engine) into ``OUT/store``, or continues it
there, stores the measure ``perceptron_lambda`` of every checkpoint as
``normdyn analyze`` does, and writes the standard report into ``OUT/report`` with
the perceptron's window; its theory sections
(plugins/reports/perceptron_theory.py) add the N -> infinity curves.
``OUT/summary.json`` holds the exponents, the theory fitted alike, timings
and the grid.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click

from normdyn.core.errors import ConfigError
from normdyn.core.table import format_value_error
from normdyn.plugins.commands.perceptron_experiment import perceptron_experiment

__all__ = ["perceptron_command"]


@click.command("perceptron")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default="perceptron-report",
    show_default=True,
    help="Output directory: OUT/store (the runs; an interrupted grid is continued), OUT/report, OUT/summary.json.",
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
    """Train (or continue) the teacher-student perceptron, fit both laws, compare with theory, write a report."""
    from normdyn.analyzers.analyze import analyze_store
    from normdyn.analyzers.perceptron.analysis import MEASURE, fit_options
    from normdyn.analyzers.report.build import build_report
    from normdyn.core.atomic import write_bytes_atomic
    from normdyn.trainer.perceptron import train_perceptrons

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
    for key, value in (("steps", steps), ("inputs", inputs), ("schedule", schedule), ("device", device)):
        if value is not None:
            changes[key] = value
    exp = replace(exp, **changes)
    exp.validate()
    out_dir = Path(out)
    store = out_dir / "store"
    configs = exp.configs(store)
    _refuse_other_runs(store, {c.run_id() for c in configs})
    t0 = time.perf_counter()
    results = train_perceptrons(configs, progress=not quiet)
    t_train = time.perf_counter()
    analysis = analyze_store(store, [MEASURE], progress=not quiet)
    problems = analysis.run_errors + [f for o in analysis.outcomes for f in o.failures]
    if problems:
        raise ConfigError(f"{store}: {MEASURE} failed on some checkpoints: " + "; ".join(problems[:3]))
    t_analyze = time.perf_counter()
    report = build_report(
        [str(store)],
        out_dir / "report",
        measures=[MEASURE],
        fit_kwargs={"options": fit_options(exp.alphas, exp.N)},
        command_line=f"normdyn perceptron --out {out}",
    )
    t_report = time.perf_counter()
    (target,) = report.targets
    if target.error or target.fit_json is None:
        raise ConfigError(f"{store}: the fit failed: {target.error or target.fit_error}")
    j = target.fit_json
    same = _theory_same_fit(out_dir, target)
    summary = {
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
        **same,
        "runs": {run.run_id: action for run, action in results},
        "seconds_training": round(t_train - t0, 1),
        "seconds_analysis": round(t_analyze - t_train, 1),
        "seconds_report": round(t_report - t_analyze, 1),
        "experiment": asdict(exp),
        "fit": j,
    }
    write_bytes_atomic(out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    click.echo(
        f"gamma1 = {format_value_error(j['gamma1'], j['gamma1_err'])}  (theory 1/2; theory curves, same fit: "
        f"{format_value_error(same['gamma1_theory_same_fit'], same['gamma1_theory_same_fit_err'])})"
    )
    click.echo(
        f"gamma2 = {format_value_error(j['gamma2'], j['gamma2_err'])}  (theory 1; theory curves, same fit: "
        f"{format_value_error(same['gamma2_theory_same_fit'], same['gamma2_theory_same_fit_err'])})"
    )
    actions = [a for _, a in results]
    click.echo(
        f"runs: {actions.count('trained')} trained, {actions.count('resumed')} resumed, "
        f"{actions.count('skipped')} already complete; time: training {summary['seconds_training']} s, "
        f"analysis {summary['seconds_analysis']} s, report {summary['seconds_report']} s"
    )
    click.echo(f"report: {report.index}")


def _refuse_other_runs(store: Path, ids: set[str]) -> None:
    """OUT/store may hold this grid's runs (they are continued) but no other run: the report fits one experiment."""
    from normdyn.core.store import INDEX

    if not store.is_dir():
        return
    others = sorted(p.name for p in store.iterdir() if (p / INDEX).is_file() and p.name not in ids)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ConfigError(
            f"{store} holds runs of another experiment ({shown}); choose a new --out (nothing is overwritten)"
        )


def _theory_same_fit(out_dir: Path, target: Any) -> dict[str, float | None]:
    """gamma1, gamma2 (with errors) of the theory curves under the simulation's fit: the report's theory.json."""
    rel = f"{target.directory}/theory.json"
    # only a file this report wrote (a section that failed this time leaves the last report's)
    same = json.loads((out_dir / "report" / rel).read_text())["same_fit"] if rel in target.files else {}
    return {
        "gamma1_theory_same_fit": same.get("gamma1"),
        "gamma1_theory_same_fit_err": same.get("gamma1_err"),
        "gamma2_theory_same_fit": same.get("gamma2"),
        "gamma2_theory_same_fit_err": same.get("gamma2_err"),
    }
