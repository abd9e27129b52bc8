"""The training core: where a run stands in its data order, and the resume state that restores it.

Every trainer (the single-run loop, the seed ensemble) uses this one
mechanism. The resume state holds what the model checkpoint does not: the
optimizer state, the global torch RNG (dropout), the CUDA RNG when used, the
data-order generator, the current epoch's sample order and the position in
it, as safetensors tensors plus JSON (no pickle); the weights are read from
the checkpoint of the same step. The write order makes a SIGKILL safe: the
checkpoint of a point is written (atomically) before its resume state, so a
run killed at any moment resumes from a point whose weights are on disk.
Reading it back checks everything before anything continues from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from normdyn.core.errors import StoreError
from normdyn.core.store import Run, checkpoint_filename

__all__ = [
    "Position",
    "next_batch",
    "ResumePoint",
    "current_rng",
    "write_resume",
    "read_resume",
    "load_resume_point",
    "pack_optimizer",
    "unpack_optimizer",
]


@dataclass
class Position:
    """Where the loop stands: steps done, samples seen, this epoch's order and the place in it."""

    step: int = 0
    samples_seen: int = 0
    perm: torch.Tensor | None = None  # None: the next step starts a new epoch
    pos: int = 0


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


def pack_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``optim.<param>.<key>``) and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unpack_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`pack_optimizer`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value.clone()
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    if "param_groups" not in meta:
        raise StoreError("resume state has no optimizer param_groups")
    return {"state": state, "param_groups": meta["param_groups"]}
