"""The ``normdyn`` command group and the core commands (store, schedule, plugins).

Every other command is added by a plugin through ``register_commands``, most of
them lazily (:mod:`normdyn.core.command_group`), so starting the CLI imports
only click and what the chosen command needs. Library errors
(:class:`NormdynError`) become one-line click errors, for every command.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from normdyn.core import __version__, plugins
from normdyn.core.command_group import NormdynGroup
from normdyn.core.errors import NormdynError, StoreError
from normdyn.core.schedule import parse_schedule
from normdyn.core.table import format_table

if TYPE_CHECKING:  # pragma: no cover - the store (numpy, h5py) loads when a store command runs
    from normdyn.core.store import Run


@click.group(cls=NormdynGroup)
@click.version_option(__version__, prog_name="normdyn")
def cli() -> None:
    """normdyn: training dynamics, norm-based complexity and scaling laws."""


@cli.group(cls=NormdynGroup)
def store() -> None:
    """Inspect and verify checkpoint stores."""


def _run_row(run: Run) -> list[Any]:
    """The ``store ls`` row of ``run``; a damaged attribute is a StoreError naming it."""
    problems = run.attribute_problems()
    if problems:
        raise StoreError(next(iter(problems.values())))
    return [
        run.run_id,
        run.model_spec.get("name", "?"),
        run.dataset.get("name", "?"),
        run.P,
        run.seed,
        run.status,
        len(run),
        ",".join(run.measures()) or "-",
    ]


def _require_runs(store_dir: str, found: list[Any], errors: list[Any]) -> None:
    if not found and not errors:
        raise StoreError(f"{store_dir}: no runs found (a store is a directory of run directories)")


@store.command("ls")
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def store_ls(store_dir: str, as_json: bool) -> None:
    """List the runs of STORE_DIR."""
    from normdyn.core.store import scan_runs

    runs, errors = scan_runs(store_dir)
    _require_runs(store_dir, runs, errors)
    headers = ["run", "model", "dataset", "P", "seed", "status", "checkpoints", "measures"]
    rows = []
    for run in runs:
        try:
            rows.append(_run_row(run))
        except StoreError as damaged:
            errors.append(damaged)
    if as_json:
        click.echo(json.dumps([dict(zip(headers, r)) for r in rows], indent=2))
    else:
        click.echo(format_table(headers, rows))
    for exc in errors:
        click.echo(f"error: {exc}", err=True)
    if errors:
        sys.exit(1)


@store.command("show")
@click.argument("run_dir", type=click.Path(file_okay=False))
def store_show(run_dir: str) -> None:
    """Print the checkpoint table of RUN_DIR, with its stored measures."""
    from normdyn.core.store import Run

    run = Run(run_dir)
    table = run.checkpoints()
    measures = {m: run.read_measure(m) for m in run.measures()}
    cols = ["step", "epoch", "train_error", "train_loss", "test_error", "test_loss"]
    rows = []
    for i in range(len(table["step"])):
        row: list[Any] = [int(table["step"][i])] + [float(table[c][i]) for c in cols[1:]]
        row += [float(rec.values[i]) if rec else float("nan") for rec in measures.values()]
        rows.append(row)
    click.echo(f"run {run.run_id}  status {run.status}  P {run.P}  seed {run.seed}")
    click.echo(format_table(cols + list(measures), rows))


@store.command("fsck")
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--repair", is_flag=True, help="Rebuild damaged indexes, index orphan checkpoints, drop temp files.")
def store_fsck(store_dir: str, repair: bool) -> None:
    """Verify every run of STORE_DIR (exit 1 if a problem remains)."""
    from normdyn.core.fsck import fsck_store

    reports = fsck_store(store_dir, repair=repair)
    _require_runs(store_dir, reports, [])
    for rep in reports:
        for line in rep.repaired:
            click.echo(f"repaired: {line}")
        for line in rep.problems:
            click.echo(f"problem: {line}", err=True)
    bad = [r for r in reports if not r.ok]
    click.echo(f"{len(reports)} run(s) checked, {len(reports) - len(bad)} ok, {len(bad)} with problems")
    if bad:
        sys.exit(1)


@store.command("relink")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def store_relink(run_dir: str, folders: tuple[str, ...]) -> None:
    """Point the linked checkpoints of RUN_DIR that moved at their new place under FOLDERS.

    A linked file (normdyn import --link) that is missing or has another size is looked for by content:
    a file of its recorded size and sha256, whatever its name. Exit 1 if one is not found.
    """
    from normdyn.core.fsck import relink_run

    report = relink_run(run_dir, list(folders))
    for line in report.repaired:
        click.echo(f"relinked: {line}")
    for line in report.problems:
        click.echo(f"problem: {line}", err=True)
    click.echo(f"{report.path}: {len(report.repaired)} file(s) relinked, {len(report.problems)} not found")
    if report.problems:
        sys.exit(1)


@cli.command("schedule")
@click.argument("spec")
@click.option("--total", "-T", type=int, required=True, help="Run length T (steps or epochs).")
def schedule_cmd(spec: str, total: int) -> None:
    """Print the checkpoint points of SPEC (e.g. log:50, log:10+linear:1000), one per line."""
    click.echo("\n".join(str(p) for p in parse_schedule(spec, total)))


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of {name, <hook kind>: [names]}.")
def plugins_cmd(as_json: bool) -> None:
    """List the loaded plugins and what each registers."""
    summary = plugins.plugin_summary(_COMMANDS)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for entry in summary:
        click.echo(entry["name"])
        for kind in (*plugins.KINDS, "commands"):
            if entry[kind]:
                click.echo(f"  {kind}: {', '.join(entry[kind])}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="normdyn")


_COMMANDS: dict[str, list[str]] = {}
try:
    _COMMANDS = plugins.register_commands(cli)
except NormdynError as _exc:  # reported by every command rather than as an import traceback
    cli.load_error = _exc


if __name__ == "__main__":
    main()
