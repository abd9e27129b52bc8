"""``normdyn fit``: the scaling laws of a store's runs or of a curves CSV."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from normdyn.core.atomic import write_bytes_atomic
from normdyn.plugins.commands.fit_options import law_options, options_from, parse_where

if TYPE_CHECKING:  # pragma: no cover
    from normdyn.analyzers.fit.pipeline import FitResult

__all__ = ["fit_command"]


@click.command("fit")
@click.argument("store", required=False, type=click.Path(file_okay=False))
@click.option("--measure", help="Stored measure that plays lambda (with STORE).")
@click.option(
    "--curves",
    "curves_csv",
    type=click.Path(dir_okay=False),
    help="CSV with P,seed,lambda,test_error (per-seed) or P,lambda,test_error (mean curves).",
)
@click.option(
    "--lambda-star",
    "lambda_star_csv",
    type=click.Path(dir_okay=False),
    help="CSV with P,lambda_star: replaces lambda* for law 2.",
)
@law_options
@click.option("--law2-offset", is_flag=True, help="Fit lambda*(P) = k2 P^gamma2 + c.")
@click.option("--bootstrap", type=int, default=0, show_default=True, help="Seed-bootstrap replicates (0: none).")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True, help="RNG seed of the bootstrap.")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Write the result as JSON here ('-': stdout)."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fit_command(
    store: str | None,
    measure: str | None,
    where: tuple[str, ...],
    curves_csv: str | None,
    lambda_star_csv: str | None,
    grid: tuple[float, float, int] | None,
    window: tuple[float, float] | None,
    law1_min_P: int | None,
    law2_min_P: int | None,
    method: str,
    law2_method: str,
    eps_star_method: str,
    law2_offset: bool,
    bootstrap: int,
    bootstrap_seed: int,
    json_out: str | None,
    quiet: bool,
) -> None:
    """Fit law 1, law 2 and their product on STORE (with --measure) or on --curves CSV."""
    from normdyn.analyzers.curves_io import read_curves_csv, read_lambda_star_csv
    from normdyn.analyzers.fit.pipeline import fit_curves, fit_store

    if (store is None) == (curves_csv is None):
        raise click.UsageError("give either STORE (with --measure) or --curves CURVES.csv")
    if store is not None and not measure:
        raise click.UsageError("STORE needs --measure NAME (the measure that plays lambda)")
    if curves_csv is not None and (measure or where):
        raise click.UsageError("--measure and --where select runs of a STORE; they do not apply to --curves")
    options = options_from(click.get_current_context().params, law2_offset=law2_offset)
    kwargs: dict[str, Any] = dict(
        options=options, grid=grid, bootstrap=bootstrap, bootstrap_seed=bootstrap_seed, progress=not quiet
    )
    if lambda_star_csv is not None:
        kwargs.update(lambda_star=read_lambda_star_csv(lambda_star_csv), lambda_star_source=lambda_star_csv)
    result: FitResult
    if store is not None:
        result = fit_store(store, measure, where=parse_where(where), **kwargs)  # type: ignore[arg-type]
    else:
        result = fit_curves(read_curves_csv(curves_csv), **kwargs)  # type: ignore[arg-type]
        result.source = {"curves": curves_csv}
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    text = json.dumps(result.to_json(), indent=2)
    if json_out == "-":
        click.echo(text)
        return
    click.echo(result.format_text())
    if json_out:
        write_bytes_atomic(Path(json_out), (text + "\n").encode("utf-8"))
