"""``normdyn analyze`` (measures over the checkpoints of stores) and ``normdyn measures`` (what exists)."""

from __future__ import annotations

import json
import sys

import click

from normdyn.core.executor_cli import executor_options


@click.command("analyze")
@click.argument("stores", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--measure",
    "-m",
    "measures",
    multiple=True,
    help="Measure to compute (repeatable; default: spectral_complexity). `normdyn measures` lists them all.",
)
@click.option("--runs", "runs_glob", default=None, help="Only runs whose id matches this glob.")
@click.option("--force", is_flag=True, help="Recompute values already stored.")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Torch device the measures compute on: cpu, cuda, cuda:N (an unavailable one is an error before any run).",
)
@click.option("--data-root", default=None, help="Dataset root for data-dependent measures (default: the run's).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@executor_options
def analyze_cmd(
    stores: tuple[str, ...],
    measures: tuple[str, ...],
    runs_glob: str | None,
    force: bool,
    device: str,
    data_root: str | None,
    quiet: bool,
    executor_opts: dict,
) -> None:
    """Compute complexity measures over every checkpoint of the runs in STORES.

    Values already computed for the same checkpoint, measure version and
    params are skipped. Failures are stored (NaN + message), listed, and make
    the exit status 1.
    """
    from normdyn.analyzers.analyze import analyze_store

    summary = analyze_store(
        list(stores),
        list(measures) or None,
        runs=runs_glob,
        force=force,
        device=device,
        data_root=data_root,
        progress=not quiet,
        **executor_opts,
    )
    for outcome in summary.outcomes:
        for line in outcome.warnings:
            click.echo(f"warning: {line}", err=True)
        for line in outcome.failures:
            click.echo(f"error: {line}", err=True)
    for line in summary.run_errors:
        click.echo(f"error: {line}", err=True)
    click.echo(summary.line())
    if not summary.ok:
        sys.exit(1)


@click.command("measures")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: name, version, needs, params, formula.")
def measures_cmd(as_json: bool) -> None:
    """List the available complexity measures."""
    from normdyn.core import plugins

    reg = plugins.registry("measures")
    rows = [
        {
            "name": n,
            "version": str(m.version),
            "needs": sorted(m.needs),
            "params": dict(m.params),
            "plugin": reg.owners[n],
            "formula": (type(m).__doc__ or "").strip(),
        }
        for n, m in sorted(reg.items.items())
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']}  (needs {', '.join(r['needs'])}; {r['plugin']})")
