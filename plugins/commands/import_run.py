"""``normdyn import``: checkpoints made elsewhere as a run of a store."""

from __future__ import annotations

import sys
from typing import Any

import click


def _input_shape(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"{value!r}: give positive integers separated by commas, e.g. 3,32,32")
    return tuple(int(p) for p in parts)


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
@click.option(
    "--model-factory",
    "factory",
    default=None,
    metavar="MODULE:CALLABLE",
    help="Your own model: normdyn imports MODULE and calls CALLABLE(**kwargs) (this runs your code, here and "
    "again at analyze time); checkpoints must match its state_dict exactly.",
)
@click.option("--model-kwargs", "kwargs", default=None, help="Keyword arguments of the factory: a JSON object or file.")
@click.option(
    "--input-shape",
    "input_shape",
    default=None,
    callback=_input_shape,
    metavar="C,H,W",
    help="One input's shape (with --model-factory).",
)
@click.option(
    "--strip-prefix",
    "prefixes",
    multiple=True,
    metavar="PREFIX",
    help="Remove PREFIX from the start of every key (Lightning's 'model.', DDP's 'module.'); repeatable.",
)
@click.option(
    "--link",
    "link",
    is_flag=True,
    help="Keep the checkpoint files where they are: the run records each file's absolute path, size and "
    "sha256 instead of a copy; every read and `normdyn store fsck` verify them.",
)
@click.option("--dataset", "dataset", default=None, help="Dataset spec as a JSON object (for data measures).")
@click.option(
    "--steps",
    "steps_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="File of 'NAME STEP' lines (default: the checkpoint's global_step/step, else the last number in its "
    "file or folder name, else its epoch).",
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
    factory: str | None,
    kwargs: str | None,
    input_shape: tuple[int, ...] | None,
    prefixes: tuple[str, ...],
    link: bool,
    dataset: str | None,
    steps_file: str | None,
    run_id: str | None,
    P: int | None,
    seed: int | None,
) -> None:
    """Import the checkpoints in folder SRC as one run of STORE.

    SRC holds checkpoint files (*.safetensors, *.pt, *.pth, *.bin, Lightning *.ckpt) with the step in
    their names, or one folder per step (checkpoint-500/, step1000/) holding model.safetensors,
    pytorch_model.bin or shards with model.safetensors.index.json. With --link nothing is copied:
    the run reads your files in place (all shards of a sharded checkpoint), verifying their sha256.
    """
    from normdyn.analyzers.importer import import_checkpoints, read_json_object, read_model_spec

    options: dict[str, Any] = {}
    spec: dict[str, Any] | None
    if factory is not None:
        if model is not None:
            raise click.UsageError("give --model or --model-factory, not both")
        if input_shape is None:
            raise click.UsageError("--model-factory needs --input-shape C,H,W (one input's shape)")
        spec, state = _factory_spec(factory, read_json_object(kwargs, "--model-kwargs") if kwargs else {}, input_shape)
        options = {"module_state": state, "module_label": factory}
    elif kwargs is not None or input_shape is not None:
        raise click.UsageError("--model-kwargs and --input-shape go with --model-factory")
    else:
        spec = read_model_spec(model) if model else None
    data = read_json_object(dataset, "--dataset") if dataset else None
    result = import_checkpoints(
        src,
        store,
        model_spec=spec,
        dataset=data,
        steps_file=steps_file,
        run_id=run_id,
        P=P,
        seed=seed,
        prefixes=prefixes,
        link=link,
        **options,
    )
    for line in result.errors:
        click.echo(f"error: {line}", err=True)
    if set(result.step_origins) - {"the file name"}:
        click.echo("steps from " + ", ".join(f"{where} ({n})" for where, n in result.step_origins.items()))
    click.echo(
        f"{result.run_path}: {len(result.imported)} imported, {len(result.skipped)} already present, "
        f"{len(result.errors)} failed"
    )
    if result.errors:
        sys.exit(1)


def _factory_spec(
    target: str, kwargs: dict[str, Any], input_shape: tuple[int, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The factory model spec (layers traced) and the built module's state_dict, from one build."""
    from normdyn.core import plugins

    family = plugins.get("models", "factory")
    module = family.make(target, kwargs)
    spec = family.spec_of(module, input_shape=input_shape, factory=target, kwargs=kwargs)
    return spec, module.state_dict()
