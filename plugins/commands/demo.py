"""The ``normdyn demo`` command: the whole loop (train, analyse, fit, report) on built-in data."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from normdyn.core.table import format_value_error

if TYPE_CHECKING:  # pragma: no cover - the experiment (torch) loads only when the command runs
    from normdyn.plugins.commands.demo_experiment import DemoResult

__all__ = ["demo_command", "format_exponents"]

_PAIRS = (("gamma1", "gamma1_err"), ("gamma2", "gamma2_err"), ("gamma_pred", "sigma"), ("gamma_meas", "gamma_meas_err"))


def format_exponents(result: DemoResult) -> list[str]:
    """One line per fitted experiment: gamma1, gamma2, gamma_pred and gamma_meas with their errors."""
    lines = []
    for name, e in result.exponents.items():
        pm = {k: format_value_error(e[k], e[err]) for k, err in _PAIRS}
        lines.append(
            f"{name}: gamma1 = {pm['gamma1']}, gamma2 = {pm['gamma2']}, "
            f"gamma_pred = {pm['gamma_pred']}, gamma_meas = {pm['gamma_meas']}"
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
    """Train MNIST-1D and perceptron sweeps, measure, fit both laws and write a report (2-5 minutes on 2 cores)."""
    from normdyn.plugins.commands.demo_experiment import run_demo

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
