"""Record normdyn runs from any training loop.

::

    from normdyn.trainer import Recorder

    with Recorder("runs", run_id="resnet-P4000-s0", schedule="log:50", total_steps=T,
                  model_factory="torchvision.models:resnet18", model_kwargs={"num_classes": 10},
                  input_shape=(3, 32, 32), P=4000, seed=0, config={"lr": 1e-3}) as rec:
        for step in range(T + 1):
            if rec.due(step):
                rec.save(model, step=step, metrics={"test_error": evaluate(model)})
            train_one_step(model)

The Recorder writes exactly the run format ``normdyn train`` writes (each
checkpoint an atomic safetensors file, then its row in run.h5), so every
normdyn command applies to the run and a SIGKILL loses at most the point being
written. Opening a Recorder on an existing run (same ``run_id`` in the same
store, same settings) continues it: ``due`` is false for every point already
saved. ``close`` (or leaving the ``with`` block) marks the run complete once
the last point of the schedule is saved; an exception marks it failed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from normdyn.core import plugins
from normdyn.core.errors import ConfigError
from normdyn.core.schedule import parse_schedule
from normdyn.core.store import Run

__all__ = ["Recorder"]


def _state_dict(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(model, nn.Module):
        return {k: v.detach() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    if isinstance(model, Mapping) and all(isinstance(v, torch.Tensor) for v in model.values()):
        return {str(k): v.detach() for k, v in model.items()}
    raise ConfigError(f"Recorder.save: expected an nn.Module or a state dict of tensors, got {type(model).__name__}")


class Recorder:
    """A normdyn run written from the caller's own loop (see the module docstring)."""

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        run_id: str,
        schedule: str,
        total_steps: int,
        input_shape: tuple[int, ...],
        P: int,
        seed: int = 0,
        model: nn.Module | None = None,
        model_factory: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        dataset: Mapping[str, Any] | None = None,
    ) -> None:
        if int(P) <= 0:
            raise ConfigError(f"Recorder: P = {P}; the training-set size must be a positive integer")
        if (model is None) == (model_factory is None):
            raise ConfigError("Recorder: give exactly one of model= (an nn.Module) or model_factory='module:callable'")
        self.points = parse_schedule(schedule, int(total_steps))
        family = plugins.get("models", "factory")
        if model_factory is not None:
            spec = family.spec(input_shape=tuple(input_shape), factory=model_factory, kwargs=dict(model_kwargs or {}))
        else:
            spec = family.spec_of(model, input_shape=tuple(input_shape))
        full_config = {
            **dict(config or {}),
            "recorder": {"schedule": schedule, "total_steps": int(total_steps)},
        }
        store_path = Path(store)
        if store_path.exists() and not store_path.is_dir():
            raise ConfigError(f"Recorder: store {store_path} is a file, not a directory")
        existing = store_path / run_id / "run.h5"
        if existing.exists():
            self.run = Run(store_path / run_id)
            self._check_same(full_config, spec)
        else:
            self.run = Run.create(
                store_path,
                run_id,
                config=full_config,
                model_spec=spec,
                dataset=dict(dataset or {"name": "external"}),
                P=int(P),
                seed=int(seed),
            )
        steps = self.run.checkpoints()["step"]
        self.last_step: int | None = int(steps[-1]) if len(steps) else None
        self._closed = False

    def _check_same(self, config: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
        stored = self.run.config
        if json.dumps(stored, sort_keys=True) != json.dumps(dict(config), sort_keys=True):
            raise ConfigError(
                f"{self.run.path}: exists with another config; use another run_id or the same settings to continue it"
            )
        stored_layers = self.run.model_spec.get("layers")
        if json.loads(json.dumps(spec.get("layers"))) != stored_layers:
            raise ConfigError(f"{self.run.path}: exists with another model (its layers differ); use another run_id")

    def due(self, step: int) -> bool:
        """True when ``step`` is a schedule point not saved yet."""
        return int(step) in self.points and (self.last_step is None or int(step) > self.last_step)

    def save(
        self,
        model: nn.Module | Mapping[str, torch.Tensor],
        *,
        step: int,
        epoch: float | None = None,
        samples_seen: int = 0,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Save the weights of ``model`` (a module or its state dict) as the checkpoint of ``step``."""
        if self._closed:
            raise ConfigError(f"{self.run.path}: the Recorder is closed")
        state = _state_dict(model)
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ConfigError(
                f"{self.run.path}: step {step}: tensor(s) {', '.join(bad[:5])} hold NaN or inf; not saved"
            )
        self.run.append_checkpoint(
            state,
            step=int(step),
            epoch=float(step if epoch is None else epoch),
            samples_seen=int(samples_seen),
            metrics=dict(metrics or {}),
        )
        self.last_step = int(step)

    def close(self, status: str | None = None) -> None:
        """Mark the run ``complete`` if the schedule's last point is saved (or the given ``status``)."""
        if self._closed:
            return
        self._closed = True
        if status is None:
            status = "complete" if self.last_step == self.points[-1] else "running"
        self.run.set_status(status)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close("failed" if exc_type is not None else None)
