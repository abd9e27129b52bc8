"""``normdyn import``: checkpoints made elsewhere as a run of a store."""

from __future__ import annotations

import sys

import click


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
    from normdyn.analyzers.importer import import_checkpoints, read_json_object, read_model_spec

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
