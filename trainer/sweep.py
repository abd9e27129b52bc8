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
ordinary run, with the same skip and resume rules per run. The points of a
``gd-adaptive`` grid that differ only in P and seed always form one task, run
by the perceptron engine (normdyn.trainer.perceptron), with the same rules.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, fields, replace
from typing import Any

import torch

from normdyn.core.errors import ConfigError, UnknownNameError
from normdyn.core.executor import map_tasks
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.ensemble import train_ensemble_or_resume
from normdyn.trainer.loop import train_or_resume
from normdyn.trainer.perceptron import OPTIMIZER as PERCEPTRON_OPTIMIZER
from normdyn.trainer.perceptron import group_key, train_perceptrons

__all__ = [
    "expand_grid",
    "sweep_keys",
    "ensemble_groups",
    "sweep_tasks",
    "run_sweep_task",
    "run_ensemble_task",
    "run_task",
    "run_sweep",
]

_NESTED = ("model_params", "dataset_params", "optimizer_params")
# The store is where the whole sweep writes (``--store``), never a value of one run's config.
_NOT_IN_FILE = ("store",)


def sweep_keys() -> list[str]:
    """The keys a ``[sweep]`` table may vary: config fields (not the store) and the nested parameters."""
    return [
        *sorted(f.name for f in fields(TrainConfig) if f.name not in _NOT_IN_FILE),
        *(f"{head}.NAME" for head in _NESTED),
    ]


def _table(doc: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, got {value!r}")
    return dict(value)


def _file_problems(base: Mapping[str, Any], axes: Mapping[str, Any]) -> list[str]:
    """What is wrong with the keys of the [train] and [sweep] tables themselves."""
    known = {f.name for f in fields(TrainConfig)}
    out = [
        f"[{table}] key {key!r}: every run of a sweep is written into --store; remove the key"
        for table, keys in (("train", base), ("sweep", axes))
        for key in keys
        if key in _NOT_IN_FILE
    ]
    bad = []
    for key in axes:
        head, dot, tail = key.partition(".")
        if (dot and (head not in _NESTED or not tail)) or (not dot and key not in known):
            bad.append(key)
    if bad:
        out.append(f"[sweep]: unknown config key(s) {', '.join(bad)}; valid sweep keys: {', '.join(sweep_keys())}")
    out += [
        f"sweep axis {key!r} must be a non-empty list, got {values!r}"
        for key, values in axes.items()
        if not isinstance(values, list) or not values
    ]
    return out


def _point(base: Mapping[str, Any], axes: Mapping[str, Any], combo: tuple[Any, ...], source: str) -> dict[str, Any]:
    values = copy.deepcopy(dict(base))
    for key, value in zip(axes, combo):
        head, dot, tail = key.partition(".")
        if dot:
            nested = values.setdefault(head, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"{source}: sweep axis {key!r}: [train] {head} must be a table, got {nested!r}")
            nested[tail] = value
        else:
            values[key] = value
    return values


def expand_grid(doc: Mapping[str, Any], *, source: str = "sweep config") -> list[TrainConfig]:
    """The validated configs of every grid point of a parsed sweep file.

    Every problem of the file is reported in one ConfigError (one line each,
    prefixed with ``source``) before any run starts: its tables and keys,
    then each distinct problem of the grid points' values.
    """
    unknown = sorted(set(doc) - {"train", "sweep"})
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {', '.join(unknown)}; a sweep file has [train] and [sweep]")
    base, axes = _table(doc, "train", source), _table(doc, "sweep", source)
    problems = _file_problems(base, axes)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    configs: list[TrainConfig] = []
    failures: list[str] = []
    only_names = True
    for combo in itertools.product(*axes.values()):
        try:
            config = TrainConfig.from_mapping(_point(base, axes, combo, source), source=source)
            configs.append(config.validate(source=source))
        except (ConfigError, UnknownNameError) as exc:  # every point is checked before raising
            only_names = only_names and isinstance(exc, UnknownNameError)
            failures += [line for line in str(exc).splitlines() if line not in failures]
    if failures:
        raise (UnknownNameError if only_names else ConfigError)("\n".join(failures))
    ids = [c.run_id() for c in configs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{source}: the grid repeats a configuration (a sweep axis has a duplicate value)")
    return configs


def ensemble_groups(configs: list[TrainConfig]) -> list[list[TrainConfig]]:
    """The configs grouped by everything in their run id but the seed, in order of first appearance.

    Only configs with ``ensemble`` set are grouped; every other config is a group of its own, except
    ``gd-adaptive`` configs: the perceptron engine takes every P and seed of one group (by
    everything in their run id but P and seed, and by device).
    """
    groups: dict[str, list[TrainConfig]] = {}
    for i, config in enumerate(configs):
        if config.optimizer == PERCEPTRON_OPTIMIZER:
            key = f"perceptron-{config.device}-{group_key(config)}"
        elif config.ensemble:
            key = json.dumps({k: v for k, v in config.identity().items() if k != "seed"}, sort_keys=True)
        else:
            key = f"single-{i}"
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
    its cores (workers: the smaller of jobs and tasks), so they do not fight over threads; Dask workers run elsewhere
    (batch jobs set ``OMP_NUM_THREADS`` themselves), so this machine's core
    count says nothing about theirs.
    """
    parallel = jobs > 1 or executor != "local"
    tasks: list[dict[str, Any]] = []
    for group in ensemble_groups([replace(c, store=store, device=device or c.device) for c in configs]):
        if group[0].optimizer == PERCEPTRON_OPTIMIZER:
            # one group is one task; with several workers, one task per seed (the seeds share no rows, and
            # each seed's systems compute exactly as in the whole group)
            seeds = dict.fromkeys(c.seed for c in group)
            parts = [[c for c in group if c.seed == s] for s in seeds] if parallel else [group]
            tasks += [{"configs": [asdict(c) for c in part], "engine": "perceptron"} for part in parts]
        elif len(group) == 1:
            tasks.append({"config": asdict(group[0])})
        else:
            tasks.append({"configs": [asdict(c) for c in group]})
    workers = min(jobs, len(tasks))
    threads = max(1, (os.cpu_count() or 1) // workers) if executor == "local" and workers > 1 else 0
    return [{**task, "progress": progress, "threads": threads} for task in tasks]


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
    """Run one ensemble or perceptron-engine task (``engine``); one result dict per run, in order."""
    _set_threads(task)
    configs = [TrainConfig.from_mapping(c, source="sweep task") for c in task["configs"]]
    if task.get("engine") == "perceptron":
        results = train_perceptrons(configs, progress=bool(task.get("progress", True)))
    else:
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
