"""The ``normdyn demo`` command: the whole loop (train, analyse, fit, report) on built-in data."""

from __future__ import annotations

import sys
from typing import Any

import click

from normdyn.analyzers.demo import DemoResult, run_demo
from normdyn.core.hookspecs import hookimpl

__all__ = ["demo_command", "format_exponents"]


def _pm(value: Any, err: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} +- {err:.3f}" if err is not None else f"{value:.3f}"


def format_exponents(result: DemoResult) -> list[str]:
    """One line per fitted experiment: gamma1, gamma2, gamma_pred and gamma_meas with their errors."""
    lines = []
    for name, e in result.exponents.items():
        lines.append(
            f"{name}: gamma1 = {_pm(e['gamma1'], e['gamma1_err'])}, gamma2 = {_pm(e['gamma2'], e['gamma2_err'])}, "
            f"gamma_pred = {_pm(e['gamma_pred'], e['sigma'])}, gamma_meas = {_pm(e['gamma_meas'], e['gamma_meas_err'])}"
        )
    return lines


@click.command("demo")
@click.option(
    "--out",
    default="normdyn-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="New directory for the stores, the MNIST-1D cache and the report.",
)
@click.option("--quick", is_flag=True, help="A smaller run for smoke tests (about 2 minutes on 2 cores).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the runs, the teacher and the data order.")
@click.option("--jobs", "-j", type=int, default=2, show_default=True, help="Training and analysis worker processes.")
@click.option("--quiet", is_flag=True, help="Print only the result.")
def demo_command(out: str, quick: bool, seed: int, jobs: int, quiet: bool) -> None:
    """Train MNIST-1D and perceptron sweeps, measure, fit both laws and write a report (about 5 minutes)."""
    result = run_demo(out, quick=quick, seed=seed, jobs=jobs, say=(lambda line: None) if quiet else click.echo)
    for failure in result.failures:
        click.echo(f"failed: {failure}", err=True)
    for line in format_exponents(result):
        click.echo(line)
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in result.seconds.items() if k != "total")
    click.echo(f"wall time: {result.seconds['total']:.0f} s ({parts})")
    click.echo(f"report: {result.report.index}")
    if result.failures:
        sys.exit(1)


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``normdyn demo``."""
    cli.add_command(demo_command)
