"""``normdyn train`` (one run) and ``normdyn sweep`` (a grid of runs); the trainer loads when a command runs."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from normdyn.core.errors import ConfigError
from normdyn.core.executor_cli import executor_options

# CLI option -> TrainConfig field, for the options that set a config value
_FIELDS = (
    "model",
    "dataset",
    "P",
    "seed",
    "epochs",
    "steps",
    "schedule",
    "store",
    "lr",
    "optimizer",
    "batch_size",
    "init_factor",
    "weight_decay",
    "momentum",
    "data_root",
    "device",
)
_RESUME_OVERRIDES = ("device", "data_root")


def _batch_size(value: str | None) -> int | str | None:
    if value is None or value == "full":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--batch-size {value!r}: use a positive integer or 'full'") from None


def _config_file(path: str) -> dict[str, Any]:
    from normdyn.trainer.config import read_toml

    doc = read_toml(path)
    if "sweep" in doc:
        raise ConfigError(f"{path}: has a [sweep] table; run it with `normdyn sweep {path} --store DIR`")
    return dict(doc.get("train", doc))


@click.command("train")
@click.option("--model", help="Model family (see `normdyn plugins`), e.g. cnn, resnet, vit, mlp, cnn1d.")
@click.option("--dataset", help="Dataset, e.g. mnist, cifar10, cifar100, mnist1d.")
@click.option("--P", "P", type=int, help="Number of training samples.")
@click.option("--seed", type=int, help="Seed of the P-subset, initial weights, data order and dropout.")
@click.option("--epochs", type=int, help="Run length in epochs.")
@click.option("--steps", type=int, help="Run length in optimizer steps (the schedule then counts steps).")
@click.option("--schedule", help="Checkpoint schedule, e.g. log:50 (default), log:10+linear:100.")
@click.option("--store", help="Store directory to write the run into (default: runs).")
@click.option("--lr", type=float, help="Learning rate (default 1e-3).")
@click.option(
    "--optimizer",
    type=click.Choice(["adam", "adamw", "sgd", "gd-adaptive"]),
    help="Optimizer (default adam; gd-adaptive: the perceptron engine, optimizer_params from --config).",
)
@click.option("--batch-size", "batch_size", help="Batch size, or 'full' (default 128).")
@click.option("--init-factor", "init_factor", type=float, help="Multiplies every weight matrix at init.")
@click.option("--weight-decay", "weight_decay", type=float, help="Weight decay (default 0).")
@click.option("--momentum", type=float, help="SGD momentum (default 0.9).")
@click.option("--data-root", "data_root", help="Directory holding the datasets (default: data).")
@click.option("--download", is_flag=True, help="Let torchvision download an absent dataset.")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of config values.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), help="Continue the run in RUN_DIR.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train_cmd(config_file: str | None, resume_dir: str | None, download: bool, quiet: bool, **options: Any) -> None:
    """Train one run (or continue one with --resume) and print its run directory.

    Values come from --config, then the options given here; unset values take
    the TrainConfig defaults. Exactly one of --epochs and --steps is needed.
    """
    from normdyn.core.store import INDEX, Run
    from normdyn.trainer.config import TrainConfig
    from normdyn.trainer.loop import resume, train

    options["batch_size"] = _batch_size(options["batch_size"])
    given = {k: v for k, v in options.items() if v is not None}
    if resume_dir is not None:
        fixed = sorted(set(given) - set(_RESUME_OVERRIDES)) + (["config"] if config_file else [])
        if fixed:
            raise click.UsageError(
                f"--resume continues the stored config; only --device and --data-root may "
                f"be given with it (got --{', --'.join(k.replace('_', '-') for k in fixed)})"
            )
        if Run(resume_dir).status == "complete":
            click.echo(f"run {Path(resume_dir).resolve().name} is already complete; nothing to resume", err=True)
        run = resume(resume_dir, device=given.get("device"), data_root=given.get("data_root"), progress=not quiet)
        click.echo(str(run.path.resolve()))
        return
    values = _config_file(config_file) if config_file else {}
    values.update(given)
    if download:
        values["download"] = True
    config = TrainConfig.from_mapping(values, source=config_file or "options")
    existing = Path(config.store) / config.validate(source=config_file).run_id()
    if (existing / INDEX).exists() and Run(existing).status == "complete":
        click.echo(f"run {existing.name} is already complete", err=True)
        click.echo(str(existing.resolve()))
        return
    click.echo(str(train(config, progress=not quiet).path.resolve()))


@click.command("sweep")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--store", required=True, help="Store directory for all runs of the sweep.")
@click.option("--device", help="Override the device of every run (auto, cpu, cuda, cuda:N).")
@click.option("--dry-run", is_flag=True, help="List the grid's runs and their status; train nothing.")
@click.option(
    "--ensemble",
    is_flag=True,
    help="Train the seeds of each configuration together on one device (torch.func); same runs.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@executor_options
def sweep_cmd(
    config_file: str,
    store: str,
    device: str | None,
    dry_run: bool,
    ensemble: bool,
    quiet: bool,
    executor_opts: dict[str, Any],
) -> None:
    """Run the grid of CONFIG_FILE ([train] + [sweep] tables) into one store.

    Complete runs are skipped and unfinished ones resumed, so running a sweep
    again continues it. Prints one line per run; exits 1 if any run failed.
    With --ensemble (or ensemble = true in [train]) the seeds of each
    configuration train together, each into its own ordinary run.
    """
    from tqdm.auto import tqdm

    from normdyn.core.store import INDEX, Run
    from normdyn.trainer.config import TrainConfig, read_toml
    from normdyn.trainer.loop import check_store
    from normdyn.trainer.sweep import expand_grid, run_sweep

    configs = expand_grid(read_toml(config_file), source=config_file)
    check_store(store)
    if ensemble:
        configs = [replace(c, ensemble=True) for c in configs]
    if dry_run:
        for config in configs:
            path = (Path(store) / config.run_id()).resolve()
            status = Run(path).status if (path / INDEX).exists() else "new"
            click.echo(f"{status}  {path}")
        return
    counts = {"trained": 0, "resumed": 0, "skipped": 0, "failed": 0}
    with tqdm(total=len(configs), desc="sweep", unit="run", disable=quiet, position=0) as bar:
        for task, outcome in run_sweep(configs, store=store, progress=not quiet, device=device, **executor_opts):
            if isinstance(outcome, BaseException):
                counts["failed"] += 1
                click.echo(f"failed  {TrainConfig.from_mapping(task['config']).run_id()}: {outcome}", err=True)
            else:
                counts[outcome["action"]] += 1
                click.echo(f"{outcome['action']}  {Path(outcome['run_dir']).resolve()}")
            bar.update(1)
    click.echo(f"{len(configs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if counts["failed"]:
        sys.exit(1)
