"""``normdyn report``: figures, tables and a self-contained index.html for stores."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, Any

import click

from normdyn.analyzers.fit.laws import FitOptions
from normdyn.plugins.commands.fit_options import law_options, options_from, parse_where

if TYPE_CHECKING:  # pragma: no cover - the report (matplotlib) loads only when the command runs
    from normdyn.analyzers.report.build import ReportSummary

__all__ = ["report_command", "echo_summary"]


def echo_summary(summary: ReportSummary) -> None:
    """One line per (store, measure) with its status, then where index.html is."""
    for t in summary.targets:
        if t.error is not None:
            click.echo(f"failed: {t.store} {t.measure}: {t.error}", err=True)
            continue
        if t.fit_error is not None:
            click.echo(f"fit failed: {t.store} {t.measure}: {t.fit_error}", err=True)
        for name, err in t.section_errors.items():
            click.echo(f"section failed: {t.store} {t.measure} {name}: {err}", err=True)
        j = t.fit_json
        fitted = (
            ""
            if j is None
            else (
                f"  gamma1={_g(j['gamma1'])} gamma2={_g(j['gamma2'])} "
                f"gamma_pred={_g(j['gamma_pred'])} gamma_meas={_g(j['gamma_meas'])}"
            )
        )
        click.echo(f"{'ok' if t.ok else 'partial'}: {t.store} {t.measure} -> {summary.out / t.directory}{fitted}")
    click.echo(f"report: {summary.index}")


def _g(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _command_line(params: dict[str, Any]) -> str:
    """The command as it was typed (rebuilt from the parsed options, so it works under CliRunner too)."""
    args = ["normdyn", "report", *params["stores"], "--out", params["out"]]
    for m in params["measures"]:
        args += ["--measure", m]
    for w in params["where"]:
        args += ["--where", w]
    for key in ("grid", "window"):
        if params[key] is not None:
            args += [f"--{key}", *map(str, params[key])]
    for key, flag in (("law1_min_P", "--law1-min-P"), ("law2_min_P", "--law2-min-P")):
        if params[key] is not None:
            args += [flag, str(params[key])]
    defaults = FitOptions()
    for key, flag, default in (
        ("method", "--method", defaults.method),
        ("law2_method", "--law2-method", defaults.law2_method),
        ("eps_star_method", "--eps-star-method", defaults.eps_star_method),
    ):
        if params[key] != default:
            args += [flag, params[key]]
    return shlex.join(args)


@click.command("report")
@click.argument("stores", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write the report into.")
@click.option(
    "--measure",
    "measures",
    multiple=True,
    help="Measure that plays lambda (repeatable; default: every measure stored in the store).",
)
@law_options
def report_command(
    stores: tuple[str, ...],
    out: str,
    measures: tuple[str, ...],
    where: tuple[str, ...],
    grid: tuple[float, float, int] | None,
    window: tuple[float, float] | None,
    law1_min_P: int | None,
    law2_min_P: int | None,
    method: str,
    law2_method: str,
    eps_star_method: str,
) -> None:
    """Write figures, CSV tables, results.json and a self-contained index.html for STORES into --out.

    Every store x measure gets its own directory; one that fails is reported
    (exit status 1) and the others are still written.
    """
    from normdyn.analyzers.fit.laws import check_methods
    from normdyn.analyzers.report.build import build_report

    params = click.get_current_context().params
    options = options_from(params)
    check_methods(options)  # a wrong fitter name fails the command, not every report item
    summary = build_report(
        list(stores),
        out,
        measures=list(measures),
        where=parse_where(where),
        fit_kwargs={"options": options, "grid": grid},
        command_line=_command_line(params),
    )
    echo_summary(summary)
    if summary.failed:
        sys.exit(1)
