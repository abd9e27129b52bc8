"""Sweeps: a grid of runs (P values x seeds x any config axis) into one store.

A sweep file is TOML with a ``[train]`` table (the base TrainConfig, nested
``[train.model_params]`` / ``[train.dataset_params]`` allowed) and a
``[sweep]`` table whose keys are config fields (or ``model_params.NAME`` /
``dataset_params.NAME``) mapped to lists of values. The grid is the product
of those lists, in file order. Each point is a task (a plain dict) run by
:func:`run_sweep_task`, a top-level, idempotent function: it skips a complete
run, resumes an unfinished one and trains a new one, so an interrupted sweep
is continued by running it again.
"""
from __future__ import annotations

import copy
import itertools
import os
from dataclasses import asdict, replace
from typing import Any, Iterator, Mapping

import torch

from normdyn.core import plugins
from normdyn.core.errors import ConfigError
from normdyn.core.executor import map_tasks
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.loop import train_or_resume

__all__ = ["expand_grid", "sweep_tasks", "run_sweep_task", "run_sweep"]

_NESTED = ("model_params", "dataset_params")


def _set(values: dict[str, Any], key: str, value: Any, source: str) -> None:
    head, dot, tail = key.partition(".")
    if dot:
        if head not in _NESTED or not tail:
            raise ConfigError(f"{source}: sweep axis {key!r}: dotted axes must be model_params.NAME or "
                              f"dataset_params.NAME")
        values.setdefault(head, {})[tail] = value
    else:
        values[key] = value


def expand_grid(doc: Mapping[str, Any], *, source: str = "sweep config") -> list[TrainConfig]:
    """The validated configs of every grid point of a parsed sweep file."""
    unknown = sorted(set(doc) - {"train", "sweep"})
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {', '.join(unknown)}; a sweep file has [train] and [sweep]")
    base = dict(doc.get("train", {}))
    axes = dict(doc.get("sweep", {}))
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: sweep axis {key!r} must be a non-empty list, got {values!r}")
    configs = []
    for combo in itertools.product(*axes.values()):
        values = copy.deepcopy(base)
        for key, value in zip(axes, combo):
            _set(values, key, value, source)
        config = TrainConfig.from_mapping(values, source=source).validate()
        configs.append(config)
    for config in configs:  # unknown plugin names fail before any run starts
        plugins.get("models", config.model)
        plugins.get("datasets", config.dataset)
    ids = [c.run_id() for c in configs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{source}: the grid repeats a configuration (a sweep axis has a duplicate value)")
    return configs


def sweep_tasks(configs: list[TrainConfig], *, store: str, progress: bool = True, jobs: int = 1,
                device: str | None = None) -> list[dict[str, Any]]:
    """One plain-dict task per config, all writing into ``store``.

    With several local workers on the CPU each gets an equal share of the
    cores, so they do not fight over threads.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    tasks = []
    for config in configs:
        config = replace(config, store=store, device=device or config.device)
        tasks.append({"config": asdict(config), "progress": progress, "threads": threads})
    return tasks


def run_sweep_task(task: Mapping[str, Any]) -> dict[str, str]:
    """Run one sweep task (train, resume or skip); return its run directory and action."""
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    config = TrainConfig.from_mapping(task["config"], source="sweep task")
    run, action = train_or_resume(config, progress=bool(task.get("progress", True)))
    return {"run_dir": str(run.path), "action": action, "run_id": run.run_id}


def run_sweep(configs: list[TrainConfig], *, store: str, progress: bool = True, device: str | None = None,
              executor: str = "local", jobs: int = 1, **executor_options: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """Run every config; yield (task, result dict or exception) as each finishes."""
    tasks = sweep_tasks(configs, store=store, progress=progress, jobs=jobs, device=device)
    yield from map_tasks(run_sweep_task, tasks, executor=executor, jobs=jobs, **executor_options)
