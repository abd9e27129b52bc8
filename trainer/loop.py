"""The training loop: train a run into a store, or resume one.

One straight loop over optimizer steps. Each epoch draws a permutation of the
P samples from a dedicated generator and indexes batches from tensors that
already sit on the device. At every schedule point the model is evaluated on
the P training samples and on the whole test set (eval mode, no grad), the
uncompiled state_dict is saved as a checkpoint with those metrics, and then
the resume state is saved. The checkpoint is written first, so a run killed
at any moment resumes from a point whose weights are on disk; points that are
already in the index are not written again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from normdyn.core.errors import StoreError
from normdyn.core.store import INDEX, Run
from normdyn.trainer.checkpointing import (
    Position,
    current_rng,
    load_resume_point,
    next_batch,
    read_resume,
    write_resume,
)
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.objective import evaluate
from normdyn.trainer.setup import ORDER_SEED_OFFSET, Training, eval_batch_size, prepare

__all__ = [
    "train",
    "resume",
    "train_or_resume",
    "check_store",
    "new_run",
    "measure_point",
    "train_step",
    "save_point",
]


def measure_point(t: Training) -> dict[str, float]:
    """Train error/loss on the P samples and test error/loss (exact when the dataset provides it)."""
    bs = eval_batch_size(t.config, t.device)
    train_error, train_loss = evaluate(t.model, t.objective, t.x_train, t.y_train, bs)
    test_error, test_loss = evaluate(t.model, t.objective, t.x_test, t.y_test, bs)
    if t.exact_test_error is not None:
        was_training = t.model.training
        t.model.eval()
        with torch.no_grad():
            exact = t.exact_test_error(t.model)
        t.model.train(was_training)
        if exact is not None:  # None: the model is not one the exact formula covers
            test_error = float(exact)
    return {"train_error": train_error, "train_loss": train_loss, "test_error": test_error, "test_loss": test_loss}


def _save_resume(t: Training, run: Run, at: Position, order: torch.Generator) -> None:
    write_resume(run, at, order, t.optimizer.state_dict(), current_rng(t.device))


def _load_resume(t: Training, run: Run, order: torch.Generator) -> Position:
    """Restore weights, optimizer and RNGs from ``run``; a run without resume state starts over."""
    point = read_resume(run, t.device)
    if point is None:
        return Position()
    load_resume_point(t.model, t.optimizer, run, point)
    torch.set_rng_state(point.rng["rng.torch"])
    order.set_state(point.order_state)
    if t.device.type == "cuda" and "rng.cuda" in point.rng:
        torch.cuda.set_rng_state(point.rng["rng.cuda"], t.device)
    return point.at


def train_step(t: Training, at: Position, order: torch.Generator) -> None:
    """One optimizer step on the next batch of the epoch's order (a new order at each epoch start)."""
    idx = next_batch(at, int(t.x_train.shape[0]), t.batch_size, order, t.device)
    xb, yb = (t.x_train, t.y_train) if idx is None else (t.x_train[idx], t.y_train[idx])
    t.optimizer.zero_grad(set_to_none=True)
    t.objective.loss(t.model(xb), yb).backward()
    t.optimizer.step()
    at.step += 1
    at.samples_seen += int(xb.shape[0])


def save_point(t: Training, run: Run, at: Position, order: torch.Generator, stored: set[int]) -> None:
    """Checkpoint with metrics (unless ``stored`` has the step already), then the resume state."""
    if at.step not in stored:
        run.append_checkpoint(
            t.model.state_dict(),
            step=at.step,
            epoch=at.step / t.batches_per_epoch,
            samples_seen=at.samples_seen,
            metrics=measure_point(t),
        )
        stored.add(at.step)
    if at.step < t.total_steps:  # the last point needs no resume state
        _save_resume(t, run, at, order)


def _loop(t: Training, run: Run, progress: bool) -> None:
    order = torch.Generator().manual_seed(t.config.seed + ORDER_SEED_OFFSET)
    at = _load_resume(t, run, order)
    stored = {int(s) for s in run.checkpoints()["step"]}
    points = {p for p in t.points if p >= at.step}
    t.model.train()
    bar = tqdm(
        total=t.total_steps,
        initial=at.step,
        desc=run.run_id,
        unit="step",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        if at.step in points:
            save_point(t, run, at, order, stored)
        while at.step < t.total_steps:
            train_step(t, at, order)
            bar.update(1)
            if at.step in points:
                save_point(t, run, at, order, stored)
    finally:
        bar.close()


def _execute(t: Training, run: Run, progress: bool) -> Run:
    try:
        _loop(t, run, progress)
    except BaseException:
        run.set_status("failed")
        raise
    run.set_status("complete")
    return run


def train(config: TrainConfig, *, progress: bool = True) -> Run:
    """Train a new run of ``config`` into ``config.store`` and return it.

    The run id is deterministic (:meth:`TrainConfig.run_id`); an existing run
    of the same config is an error pointing at :func:`resume`. A
    ``gd-adaptive`` config is trained by the perceptron engine, as a group of one.
    """
    check_store(config.validate().store)
    if config.optimizer == "gd-adaptive":
        path = Path(config.store) / config.run_id()
        if (path / INDEX).exists():
            raise StoreError(
                f"{path}: this run already exists (status {Run(path).status}); "
                f"continue it with `normdyn train --resume {path}`"
            )
        return _perceptron_engine(config, progress)
    t = prepare(config)
    path = Path(config.store) / config.run_id()
    if (path / INDEX).exists():
        raise StoreError(
            f"{path}: this run already exists (status {Run(path).status}); "
            f"continue it with `normdyn train --resume {path}`"
        )
    return _execute(t, new_run(config, t.model_spec, t.dataset_spec), progress)


def check_store(store: str) -> None:
    """``store`` must be a directory of runs, or a new path below a directory; else a StoreError naming it."""
    path = Path(store)
    if (path / INDEX).is_file():
        raise StoreError(f"{path}: this is a run directory, not a store; pass its parent directory")
    for existing in (path, *path.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            where = "it is" if existing == path else f"{existing} is"
            raise StoreError(
                f"{path}: cannot be a store, {where} a file, not a directory; "
                "give --store a directory (new or existing)"
            )
        return


def new_run(config: TrainConfig, model_spec: Mapping[str, Any], dataset_spec: Mapping[str, Any]) -> Run:
    """Create the run of ``config`` in its store (status running)."""
    try:
        return Run.create(
            config.store,
            config.run_id(),
            config=asdict(config),
            model_spec=model_spec,
            dataset=dataset_spec,
            P=config.P,
            seed=config.seed,
        )
    except OSError as exc:
        raise StoreError(
            f"{Path(config.store) / config.run_id()}: cannot create the run ({exc.strerror or exc}); "
            "give --store a writable directory"
        ) from None


def resume(
    run_dir: str | Path, *, device: str | None = None, data_root: str | None = None, progress: bool = True
) -> Run:
    """Continue the run in ``run_dir`` from its last resume point (a complete run is returned as is).

    On CPU the final weights equal those of an uninterrupted run, bit for bit.
    ``device`` and ``data_root`` override the stored ones (they do not change
    what is computed).
    """
    run = Run(run_dir)
    if run.status == "complete":
        return run
    values = dict(run.config)  # the store refuses a config attribute that is not a JSON object
    values["store"] = str(run.path.parent)
    if device is not None:
        values["device"] = device
    if data_root is not None:
        values["data_root"] = data_root
    source = f"{run.index} (config attribute)"
    config = TrainConfig.from_mapping(values, source=source).validate(source=source)
    if config.optimizer == "gd-adaptive":
        return _perceptron_engine(config, progress, run.path)
    t = prepare(config, model_spec=run.model_spec)
    run.set_status("running")
    return _execute(t, run, progress)


def _perceptron_engine(config: TrainConfig, progress: bool, path: Path | None = None) -> Run:
    from normdyn.trainer.perceptron import train_perceptrons  # the engine stands on this module's helpers

    ((run, _),) = train_perceptrons([config], progress=progress, paths=None if path is None else [path])
    return run


def train_or_resume(config: TrainConfig, *, progress: bool = True) -> tuple[Run, str]:
    """Idempotent: (run, action) where action is ``skipped`` (complete), ``resumed`` or ``trained``."""
    path = Path(config.store) / config.run_id()
    if (path / INDEX).exists():
        run = Run(path)
        if run.status == "complete":
            return run, "skipped"
        return resume(path, device=config.device, data_root=config.data_root, progress=progress), "resumed"
    return train(config, progress=progress), "trained"
