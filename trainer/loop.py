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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from normdyn.core.errors import StoreError
from normdyn.core.store import INDEX, Run, checkpoint_filename
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.objective import evaluate
from normdyn.trainer.resume_state import pack_optimizer, unpack_optimizer
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
    "Position",
    "ResumePoint",
    "current_rng",
    "write_resume",
    "read_resume",
    "load_resume_point",
    "next_batch",
]


@dataclass
class Position:
    """Where the loop stands: steps done, samples seen, this epoch's order and the place in it."""

    step: int = 0
    samples_seen: int = 0
    perm: torch.Tensor | None = None  # None: the next step starts a new epoch
    pos: int = 0


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


@dataclass
class ResumePoint:
    """What ``resume/latest.safetensors`` restores, with the weights of its step's checkpoint."""

    at: Position
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # for Optimizer.load_state_dict
    order_state: torch.Tensor  # the data-order generator's state
    rng: dict[str, torch.Tensor]  # "rng.torch" and, when trained on CUDA, "rng.cuda"


def current_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """The global torch RNG states a resume restores (CPU, and CUDA on a CUDA device)."""
    rng = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["rng.cuda"] = torch.cuda.get_rng_state(device)
    return rng


def write_resume(
    run: Run, at: Position, order: torch.Generator, optimizer_state: dict[str, Any], rng: dict[str, torch.Tensor]
) -> None:
    """Save the resume state of ``run`` at position ``at`` (the checkpoint of ``at.step`` holds the weights)."""
    tensors, optim_meta = pack_optimizer(optimizer_state)
    tensors.update(rng)
    tensors["rng.order"] = order.get_state()
    if at.perm is not None:
        tensors["order.perm"] = at.perm
    run.save_resume(tensors, {"step": at.step, "samples_seen": at.samples_seen, "pos": at.pos, "optimizer": optim_meta})


def read_resume(run: Run, device: torch.device) -> ResumePoint | None:
    """The resume state of ``run`` (None if it has none), checked before anything continues from it.

    The weights come from the checkpoint of the resume step, its sha256
    verified against the index; every floating-point tensor of the resume
    state and of those weights must be finite. Any defect is a StoreError
    naming the file and saying what to do.
    """
    saved = run.load_resume()
    if saved is None:
        return None
    tensors, meta = saved
    resume_file = run.path / "resume" / "latest.safetensors"
    try:
        at = Position(step=int(meta["step"]), samples_seen=int(meta["samples_seen"]), pos=int(meta["pos"]))
        optimizer = unpack_optimizer(tensors, meta["optimizer"])
        order_state = tensors["rng.order"].clone()
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(
            f"{resume_file}: damaged resume state (missing or invalid {exc}); {_CANNOT_CONTINUE}"
        ) from None
    steps = [int(s) for s in run.checkpoints()["step"]]
    if at.step not in steps:
        raise StoreError(
            f"{run.path}: the resume state is at step {at.step} but the index has no such "
            f"checkpoint; run `normdyn store fsck --repair` on the store"
        )
    try:
        weights = run.load_state_dict(steps.index(at.step), verify=True)
    except StoreError as exc:
        raise StoreError(f"cannot resume {run.path} from step {at.step}: {exc}") from None
    _refuse_non_finite(resume_file, tensors)
    _refuse_non_finite(run.path / checkpoint_filename(at.step), weights)
    at.perm = tensors["order.perm"].to(device) if "order.perm" in tensors else None
    rng: dict[str, torch.Tensor] = {k: tensors[k].clone() for k in ("rng.torch", "rng.cuda") if k in tensors}
    return ResumePoint(at, weights, optimizer, order_state, rng)


_CANNOT_CONTINUE = (
    "the run cannot continue from it: check the store with `normdyn store fsck`, "
    "or train the config again into another store"
)


def _refuse_non_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise StoreError(
                f"{path}: tensor {name!r} holds NaN or inf (the run diverged, or the file is damaged); "
                f"{_CANNOT_CONTINUE}"
            )


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


def load_resume_point(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, run: Run, point: ResumePoint
) -> None:
    """Load the weights (and, unless None, the optimizer state) of ``point`` into the run's rebuilt objects.

    Weights or optimizer tensors that do not fit the model built from the
    run's model_spec are a StoreError naming the run, not torch's message alone.
    """
    try:
        model.load_state_dict(point.weights)
        _check_optimizer_shapes(model, point.optimizer)
        if optimizer is not None:
            optimizer.load_state_dict(point.optimizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        raise StoreError(
            f"cannot resume {run.path}: its state at step {point.at.step} does not fit the model built from "
            f"its model_spec ({first}); the model_spec attribute or the files changed; {_CANNOT_CONTINUE}"
        ) from None


def _check_optimizer_shapes(model: torch.nn.Module, state: dict[str, Any]) -> None:
    shapes = [tuple(p.shape) for p in model.parameters()]
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue
            if not 0 <= pid < len(shapes) or tuple(value.shape) != shapes[pid]:
                want = shapes[pid] if 0 <= pid < len(shapes) else "no such parameter"
                raise ValueError(f"optimizer tensor optim.{pid}.{key} has shape {tuple(value.shape)}, model: {want}")


def next_batch(at: Position, P: int, B: int, order: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """Indices into the P samples of the next batch of the epoch's order, advancing ``at``.

    A new order is drawn at each epoch start. None means all P samples in
    their stored order (full batch: the order of the samples cannot matter).
    """
    idx = None
    if B >= P:
        at.pos = P
    else:
        if at.perm is None:
            at.perm, at.pos = torch.randperm(P, generator=order).to(device), 0
        idx = at.perm[at.pos : at.pos + B]
        at.pos += B
    if at.pos >= P:
        at.perm, at.pos = None, 0
    return idx


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
    of the same config is an error pointing at :func:`resume`.
    """
    check_store(config.validate().store)
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
    t = prepare(config, model_spec=run.model_spec)
    run.set_status("running")
    return _execute(t, run, progress)


def train_or_resume(config: TrainConfig, *, progress: bool = True) -> tuple[Run, str]:
    """Idempotent: (run, action) where action is ``skipped`` (complete), ``resumed`` or ``trained``."""
    path = Path(config.store) / config.run_id()
    if (path / INDEX).exists():
        run = Run(path)
        if run.status == "complete":
            return run, "skipped"
        return resume(path, device=config.device, data_root=config.data_root, progress=progress), "resumed"
    return train(config, progress=progress), "trained"
