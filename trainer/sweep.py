"""Sweeps: a grid of runs (P values x seeds x any config axis) into one store.

A sweep file is TOML with a ``[train]`` table (the base TrainConfig, nested
``[train.model_params]`` / ``[train.dataset_params]`` allowed) and a
``[sweep]`` table whose keys are config fields (or ``model_params.NAME`` /
``dataset_params.NAME``) mapped to lists of values. The grid is the product
of those lists, in file order. Each point is a task (a plain dict) run by
:func:`run_sweep_task`, a top-level, idempotent function: it skips a complete
run, resumes an unfinished one and trains a new one, so an interrupted sweep
is continued by running it again.

With ``ensemble`` set (``normdyn sweep --ensemble``), the grid points that
differ only in seed form one task instead, run by :func:`run_ensemble_task`:
their seeds train together (normdyn.trainer.ensemble), each into its own
ordinary run, with the same skip and resume rules per run.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, replace
from typing import Any

import torch

from normdyn.core import plugins
from normdyn.core.errors import ConfigError
from normdyn.core.executor import map_tasks
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.ensemble import train_ensemble_or_resume
from normdyn.trainer.loop import train_or_resume

__all__ = [
    "expand_grid",
    "ensemble_groups",
    "sweep_tasks",
    "run_sweep_task",
    "run_ensemble_task",
    "run_task",
    "run_sweep",
]

_NESTED = ("model_params", "dataset_params")


def _set(values: dict[str, Any], key: str, value: Any, source: str) -> None:
    head, dot, tail = key.partition(".")
    if dot:
        if head not in _NESTED or not tail:
            raise ConfigError(
                f"{source}: sweep axis {key!r}: dotted axes must be model_params.NAME or dataset_params.NAME"
            )
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


def ensemble_groups(configs: list[TrainConfig]) -> list[list[TrainConfig]]:
    """The configs grouped by everything in their run id but the seed, in order of first appearance.

    Only configs with ``ensemble`` set are grouped; every other config is a group of its own.
    """
    groups: dict[str, list[TrainConfig]] = {}
    for i, config in enumerate(configs):
        key = (
            json.dumps({k: v for k, v in config.identity().items() if k != "seed"}, sort_keys=True)
            if config.ensemble
            else f"single-{i}"
        )
        groups.setdefault(key, []).append(config)
    return list(groups.values())


def sweep_tasks(
    configs: list[TrainConfig],
    *,
    store: str,
    progress: bool = True,
    jobs: int = 1,
    device: str | None = None,
    executor: str = "local",
) -> list[dict[str, Any]]:
    """Plain-dict tasks writing into ``store``: one per config, or one per ensemble group of two or more.

    With several local workers on this machine each gets an equal share of
    its cores, so they do not fight over threads; Dask workers run elsewhere
    (batch jobs set ``OMP_NUM_THREADS`` themselves), so this machine's core
    count says nothing about theirs.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs) if executor == "local" and jobs > 1 else 0
    tasks = []
    for group in ensemble_groups([replace(c, store=store, device=device or c.device) for c in configs]):
        if len(group) == 1:
            tasks.append({"config": asdict(group[0]), "progress": progress, "threads": threads})
        else:
            tasks.append({"configs": [asdict(c) for c in group], "progress": progress, "threads": threads})
    return tasks


def _set_threads(task: Mapping[str, Any]) -> None:
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))


def run_sweep_task(task: Mapping[str, Any]) -> dict[str, str]:
    """Run one sweep task (train, resume or skip); return its run directory and action."""
    _set_threads(task)
    config = TrainConfig.from_mapping(task["config"], source="sweep task")
    run, action = train_or_resume(config, progress=bool(task.get("progress", True)))
    return {"run_dir": str(run.path), "action": action, "run_id": run.run_id}


def run_ensemble_task(task: Mapping[str, Any]) -> list[dict[str, str]]:
    """Run one ensemble task (its ``configs`` differ in seed only); one result dict per run, in order."""
    _set_threads(task)
    configs = [TrainConfig.from_mapping(c, source="sweep task") for c in task["configs"]]
    results = train_ensemble_or_resume(configs, progress=bool(task.get("progress", True)))
    return [{"run_dir": str(run.path), "action": action, "run_id": run.run_id} for run, action in results]


def run_task(task: Mapping[str, Any]) -> list[dict[str, str]]:
    """Run a task of :func:`sweep_tasks`, single or ensemble; one result dict per run."""
    return run_ensemble_task(task) if "configs" in task else [run_sweep_task(task)]


def run_sweep(
    configs: list[TrainConfig],
    *,
    store: str,
    progress: bool = True,
    device: str | None = None,
    executor: str = "local",
    jobs: int = 1,
    **executor_options: Any,
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Run every config; yield (task, result dict or exception) per run as its task finishes.

    The yielded task always has a single ``config``: an ensemble task is
    reported run by run (its exception, if it raised, for each of its runs).
    """
    tasks = sweep_tasks(configs, store=store, progress=progress, jobs=jobs, device=device, executor=executor)
    for task, outcome in map_tasks(run_task, tasks, executor=executor, jobs=jobs, **executor_options):
        members = task["configs"] if "configs" in task else [task["config"]]
        for i, config in enumerate(members):
            single = {"config": config, "progress": task["progress"], "threads": task["threads"]}
            yield single, outcome if isinstance(outcome, BaseException) else outcome[i]
