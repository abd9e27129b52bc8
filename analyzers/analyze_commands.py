"""The ``normdyn analyze`` and ``normdyn import`` commands."""

from __future__ import annotations

import json
import sys

import click

from normdyn.analyzers.analyze import DEFAULT_MEASURES, analyze_store
from normdyn.analyzers.importer import import_checkpoints, read_json_object, read_model_spec
from normdyn.core import plugins
from normdyn.core.executor_cli import executor_options
from normdyn.core.hookspecs import hookimpl


@click.command("analyze")
@click.argument("stores", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--measure",
    "-m",
    "measures",
    multiple=True,
    help=f"Measure to compute (repeatable; default: {', '.join(DEFAULT_MEASURES)}). `normdyn measures` lists them all.",
)
@click.option("--runs", "runs_glob", default=None, help="Only runs whose id matches this glob.")
@click.option("--force", is_flag=True, help="Recompute values already stored.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the computations.")
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


@click.command("import")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--store", "store", required=True, type=click.Path(file_okay=False), help="Store to import into.")
@click.option(
    "--model",
    "model",
    default=None,
    help="Model spec: a JSON file or object (with 'layers', or a family 'name', 'input_shape', "
    "'num_classes' and its params). Without it, layers are inferred from the files.",
)
@click.option("--dataset", "dataset", default=None, help="Dataset spec as a JSON object (for data measures).")
@click.option(
    "--steps",
    "steps_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="File of 'FILENAME STEP' lines (default: the last number in each file name).",
)
@click.option("--run-id", default=None, help="Run id (default: the folder's name).")
@click.option(
    "--P", "P", type=int, default=None, help="Training-set size of the run (a positive integer; default: unknown)."
)
@click.option("--seed", type=int, default=None, help="Seed of the run (default 0).")
def import_cmd(
    src: str,
    store: str,
    model: str | None,
    dataset: str | None,
    steps_file: str | None,
    run_id: str | None,
    P: int | None,
    seed: int | None,
) -> None:
    """Import the checkpoints in folder SRC (*.safetensors, *.pt, *.pth) as one run of STORE."""
    spec = read_model_spec(model) if model else None
    data = read_json_object(dataset, "--dataset") if dataset else None
    result = import_checkpoints(
        src, store, model_spec=spec, dataset=data, steps_file=steps_file, run_id=run_id, P=P, seed=seed
    )
    for line in result.errors:
        click.echo(f"error: {line}", err=True)
    click.echo(
        f"{result.run_path}: {len(result.imported)} imported, {len(result.skipped)} already present, "
        f"{len(result.errors)} failed"
    )
    if result.errors:
        sys.exit(1)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(analyze_cmd)
    cli.add_command(measures_cmd)
    cli.add_command(import_cmd)
