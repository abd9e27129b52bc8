"""Seed ensembles: the seeds of one configuration trained together with torch.func.

Every seed is built exactly as its separate run builds it (same seed, same
init, same P-subset, same data-order generator), then the S modules'
parameters are stacked along a new leading dimension
(``torch.func.stack_module_state``). One step gathers each seed's batch by
index from the training tensors on the device, computes all S gradients at
once with ``vmap(grad(loss))`` over (parameters, buffers, inputs, labels),
and takes one optimizer step over the stacked tensors. Adam, AdamW and SGD
with momentum act elementwise, so one optimizer over the stacked tensors is
S independent optimizers (their step counter is shared: every seed has
taken the same number of steps).

At every schedule point all seeds are evaluated at once (vmapped) and each
seed's run gets its checkpoint and resume state through the same store
calls, in the same format, as the separate loop: an ensemble run is an
ordinary run, and ``normdyn train --resume`` continues one alone.

Not bitwise: the S matrix products of a step run as one batched product,
whose float32 sums are ordered differently, so a seed's weights differ from
its separate run's by rounding (see docs/training.md for the measured size).
Models with BatchNorm or active dropout are refused: their running
statistics and random masks could not match the separate runs.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap
from tqdm.auto import tqdm

from normdyn.core.errors import ConfigError, StoreError
from normdyn.core.sampling import subset_indices
from normdyn.core.store import INDEX, Run
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.loop import Position, current_rng, next_batch, read_resume, train_or_resume, write_resume
from normdyn.trainer.objective import Objective, objective_for
from normdyn.trainer.setup import (ORDER_SEED_OFFSET, build_model, dataset_spec, load_data, make_optimizer,
                                   new_model_spec, resolve_device, step_plan)

__all__ = ["Member", "Ensemble", "check_members", "prepare_ensemble", "ensemble_step", "evaluate_members",
           "train_ensemble", "train_ensemble_or_resume"]


@dataclass
class Member:
    """One seed of an ensemble: its run, position, data-order generator and saved RNG states."""

    config: TrainConfig
    run: Run
    action: str  # "trained" (new run) or "resumed"
    at: Position
    order: torch.Generator
    rng: dict[str, torch.Tensor]  # the global RNG states its separate run would hold (saved with resume)
    stored: set[int]  # steps already in the run's index


@dataclass
class Ensemble:
    """S seeds of one configuration, their parameters stacked, ready to train."""

    members: list[Member]
    device: torch.device
    base: nn.Module  # the architecture, on the meta device: functional_call supplies the tensors
    state_keys: list[str]  # state_dict order of the separate run's checkpoints
    template: nn.Module  # a real module, loaded with one seed's weights where a module is needed
    params: dict[str, torch.Tensor]  # name -> [S, ...] leaf tensors the optimizer updates
    buffers: dict[str, torch.Tensor]  # name -> [S, ...]
    optimizer: torch.optim.Optimizer
    objective: Objective
    grads: Callable[..., dict[str, torch.Tensor]]
    x_all: torch.Tensor  # the whole training set: seeds index their P samples from it
    y_all: torch.Tensor
    subsets: torch.Tensor  # [S, P] indices into x_all, seed s's P samples in their run's order
    x_test: torch.Tensor
    y_test: torch.Tensor
    exact_test_error: Callable[[nn.Module], float | None] | None
    batch_size: int
    batches_per_epoch: int
    total_steps: int
    points: list[int]
    eval_batch_size: int


def check_members(configs: list[TrainConfig]) -> None:
    """The configs must differ in seed only (run-id fields), with distinct seeds; else a ConfigError."""
    if not configs:
        raise ConfigError("an ensemble needs at least one config")
    first = {k: v for k, v in configs[0].identity().items() if k != "seed"}
    for config in configs[1:]:
        other = {k: v for k, v in config.identity().items() if k != "seed"}
        differ = sorted(k for k in first if first[k] != other[k])
        if differ:
            raise ConfigError(f"ensemble members must differ in seed only; {config.run_id()} also differs in "
                              f"{', '.join(differ)}")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"ensemble seeds repeat: {seeds}")


def _refuse_unstackable(model: nn.Module, name: str) -> None:
    """BatchNorm statistics and dropout masks cannot reproduce the separate runs: refuse them."""
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            why = f"BatchNorm {mod_name!r} (running statistics)"
        elif isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            why = f"dropout {mod_name!r} (p={module.p})"
        elif isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
            why = f"attention dropout {mod_name!r} (p={module.dropout})"
        else:
            continue
        raise ConfigError(f"model {name!r} cannot be trained as an ensemble: it has {why}. Ensembles support "
                          f"models without BatchNorm or dropout (mlp, cnn1d, perceptron, vit, cnn with "
                          f"dropout = 0, e.g. its standard preset); train these seeds without --ensemble")


def _open_member(config: TrainConfig, spec: dict[str, Any], data_spec: dict[str, Any]) -> tuple[Run, str]:
    path = Path(config.store) / config.run_id()
    if not (path / INDEX).exists():
        return Run.create(config.store, config.run_id(), config=asdict(config), model_spec=spec,
                          dataset=data_spec, P=config.P, seed=config.seed), "trained"
    run = Run(path)
    if json.dumps(run.model_spec, sort_keys=True) != json.dumps(spec, sort_keys=True):
        raise ConfigError(f"{path}: its stored model_spec differs from the one built now; continue it alone "
                          f"with `normdyn train --resume {path}`")
    return run, "resumed"


def prepare_ensemble(configs: list[TrainConfig]) -> Ensemble:
    """Load the data once, build every seed as its separate run would, open or create the runs, stack.

    Existing runs continue from their resume state, which must be at one
    common step (see :func:`train_ensemble_or_resume`).
    """
    for config in configs:
        config.validate()
    check_members(configs)
    c0 = configs[0]
    device = resolve_device(c0.device)
    data = load_data(c0)
    spec = new_model_spec(c0, data)
    modules, members = [], []
    for config in configs:
        idx = subset_indices(len(data.x_train), config.P, config.seed)  # a bad P fails before any run is made
        module = build_model(config, spec).to(device)
        _refuse_unstackable(module, config.model)
        rng = current_rng(device)  # the state right after init, which a separate run carries unchanged
        modules.append(module)
        members.append((config, idx, rng))
    data_spec = dataset_spec(c0)
    opened = [_open_member(config, spec, data_spec) for config, _, _ in members]
    ensemble_members, subsets, saved_optimizers = [], [], []
    for (config, idx, rng), module, (run, action) in zip(members, modules, opened):
        order = torch.Generator().manual_seed(config.seed + ORDER_SEED_OFFSET)
        at = Position()
        point = read_resume(run, device)
        if point is not None:
            saved_optimizers.append(point.optimizer)
            module.load_state_dict(point.weights)
            order.set_state(point.order_state)
            rng, at = point.rng, point.at
            run.set_status("running")
        ensemble_members.append(Member(config, run, action, at, order, rng,
                                       {int(s) for s in run.checkpoints()["step"]}))
        subsets.append(idx)
    if len({m.at.step for m in ensemble_members}) != 1:
        raise StoreError("ensemble runs resume from different steps: "
                         + ", ".join(f"{m.run.run_id} at {m.at.step}" for m in ensemble_members))
    params, buffers = stack_module_state(modules)
    optimizer = make_optimizer(c0, list(params.values()))
    # Seeds continuing from step > 0 all have a saved state; at step 0 a saved state is still empty.
    if len(saved_optimizers) == len(ensemble_members):
        optimizer.load_state_dict(_stack_optimizer_states(saved_optimizers))
    base = copy.deepcopy(modules[0]).to("meta")
    objective = objective_for(modules[0], data.x_train[:1].to(device))

    def loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return objective.loss(functional_call(base, (p, b), (x,)), y)

    batch, per_epoch, total, schedule_points = step_plan(c0)
    return Ensemble(
        members=ensemble_members, device=device, base=base, state_keys=list(modules[0].state_dict()),
        template=modules[0], params=params, buffers=buffers, optimizer=optimizer, objective=objective,
        grads=vmap(grad(loss)), x_all=data.x_train.to(device), y_all=data.y_train.to(device),
        subsets=torch.stack(subsets).to(device), x_test=data.x_test.to(device), y_test=data.y_test.to(device),
        exact_test_error=data.exact_test_error, batch_size=batch, batches_per_epoch=per_epoch, total_steps=total,
        points=schedule_points, eval_batch_size=c0.eval_batch_size,
    )


def _stack_optimizer_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One optimizer state over stacked parameters from the S per-seed states (shared 0-dim ``step``)."""
    stacked: dict[int, dict[str, Any]] = {}
    for pid, entries in states[0]["state"].items():
        stacked[pid] = {}
        for key, value in entries.items():
            values = [s["state"][pid][key] for s in states]
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                stacked[pid][key] = torch.stack(values)
            elif all(torch.equal(torch.as_tensor(v), torch.as_tensor(value)) for v in values):
                stacked[pid][key] = value
            else:
                raise StoreError(f"ensemble resume: optimizer {key!r} differs between the seeds' resume states")
    return {"state": stacked, "param_groups": states[0]["param_groups"]}


def _member_optimizer_state(state: dict[str, Any], s: int) -> dict[str, Any]:
    """Seed ``s``'s optimizer state, exactly as its separate run's optimizer would hold it."""
    per_seed = {pid: {k: (v[s].clone() if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
                      for k, v in entries.items()} for pid, entries in state["state"].items()}
    return {"state": per_seed, "param_groups": state["param_groups"]}


def member_state_dict(e: Ensemble, s: int) -> dict[str, torch.Tensor]:
    """Seed ``s``'s weights in its separate run's state_dict order."""
    stacked = {**e.params, **e.buffers}
    return {k: stacked[k][s].detach() for k in e.state_keys}


def ensemble_step(e: Ensemble) -> None:
    """One optimizer step of every seed, each on the next batch of its own epoch order."""
    P = int(e.subsets.shape[1])
    local = [next_batch(m.at, P, e.batch_size, m.order, e.device) for m in e.members]
    if local[0] is None:  # full batch: every seed's P samples in their stored order
        gidx = e.subsets
    else:
        gidx = torch.gather(e.subsets, 1, torch.stack(local))  # type: ignore[arg-type]
    grads = e.grads({k: v.detach() for k, v in e.params.items()}, e.buffers, e.x_all[gidx], e.y_all[gidx])
    for name, param in e.params.items():
        param.grad = grads[name]
    e.optimizer.step()
    for m in e.members:
        m.at.step += 1
        m.at.samples_seen += int(gidx.shape[1])


def _per_seed_sums(e: Ensemble, x: torch.Tensor, y: torch.Tensor, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss (float64) and error count per seed over one chunk; ``shared``: one x for all seeds."""

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor,
            yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = functional_call(e.base, (p, b), (xb,))
        return e.objective.loss(out, yb, reduction="sum"), e.objective.errors(out, yb)

    dims = None if shared else 0
    loss, errors = vmap(one, in_dims=(0, 0, dims, dims))(e.params, e.buffers, x, y)
    return loss.double(), errors


def evaluate_members(e: Ensemble) -> list[dict[str, float]]:
    """Each seed's train error/loss on its P samples and test error/loss (the separate run's metrics)."""
    S, P = e.subsets.shape
    bs = e.eval_batch_size
    e.base.eval()
    with torch.no_grad():
        train = [torch.zeros(S, dtype=torch.float64, device=e.device), torch.zeros(S, dtype=torch.int64, device=e.device)]
        for start in range(0, P, bs):
            gidx = e.subsets[:, start:start + bs]
            loss, errors = _per_seed_sums(e, e.x_all[gidx], e.y_all[gidx], shared=False)
            train[0] += loss
            train[1] += errors
        n_test = int(e.x_test.shape[0])
        test = [torch.zeros(S, dtype=torch.float64, device=e.device), torch.zeros(S, dtype=torch.int64, device=e.device)]
        for start in range(0, n_test, bs):
            loss, errors = _per_seed_sums(e, e.x_test[start:start + bs], e.y_test[start:start + bs], shared=True)
            test[0] += loss
            test[1] += errors
    e.base.train()
    nan = float("nan")
    out = []
    for s in range(S):
        metrics = {"train_error": int(train[1][s]) / P, "train_loss": float(train[0][s]) / P,
                   "test_error": int(test[1][s]) / n_test if n_test else nan,
                   "test_loss": float(test[0][s]) / n_test if n_test else nan}
        if e.exact_test_error is not None:
            e.template.load_state_dict(member_state_dict(e, s))
            e.template.eval()
            with torch.no_grad():
                exact = e.exact_test_error(e.template)
            if exact is not None:  # None: not a model the exact formula covers
                metrics["test_error"] = float(exact)
        out.append(metrics)
    return out


def _save_points(e: Ensemble) -> None:
    """Checkpoint (where not stored yet) and resume state of every seed at the current step."""
    step = e.members[0].at.step
    metrics = evaluate_members(e) if any(step not in m.stored for m in e.members) else None
    optimizer_state = e.optimizer.state_dict() if step < e.total_steps else None
    for s, m in enumerate(e.members):
        if step not in m.stored:
            m.run.append_checkpoint(member_state_dict(e, s), step=step, epoch=step / e.batches_per_epoch,
                                    samples_seen=m.at.samples_seen, metrics=metrics[s])  # type: ignore[index]
            m.stored.add(step)
        if optimizer_state is not None:  # the last point needs no resume state
            write_resume(m.run, m.at, m.order, _member_optimizer_state(optimizer_state, s), m.rng)


def train_ensemble(configs: list[TrainConfig], *, progress: bool = True) -> list[tuple[Run, str]]:
    """Train the seeds of ``configs`` (one config, several seeds) together; return (run, action) per seed.

    New runs are created; existing ones continue from their resume states,
    which must all be at one step. On an exception every run is marked failed.
    """
    e = prepare_ensemble(configs)
    points = {p for p in e.points if p >= e.members[0].at.step}
    desc = f"ensemble {configs[0].model}-{configs[0].dataset}-P{configs[0].P} x{len(configs)}"
    bar = tqdm(total=e.total_steps, initial=e.members[0].at.step, desc=desc, unit="step", disable=not progress,
               leave=False, dynamic_ncols=True)
    try:
        if e.members[0].at.step in points:
            _save_points(e)
        while e.members[0].at.step < e.total_steps:
            ensemble_step(e)
            bar.update(1)
            if e.members[0].at.step in points:
                _save_points(e)
    except BaseException:
        for m in e.members:
            m.run.set_status("failed")
        raise
    finally:
        bar.close()
    for m in e.members:
        m.run.set_status("complete")
    return [(m.run, m.action) for m in e.members]


def _resume_step(config: TrainConfig) -> int | None:
    """None for a complete run, else the step its training continues from (0: new or never saved)."""
    path = Path(config.store) / config.run_id()
    if not (path / INDEX).exists():
        return 0
    run = Run(path)
    if run.status == "complete":
        return None
    saved = run.load_resume()
    return 0 if saved is None else int(saved[1]["step"])


def train_ensemble_or_resume(configs: list[TrainConfig], *, progress: bool = True) -> list[tuple[Run, str]]:
    """Idempotent ensemble task: (run, action) per config, action ``skipped``, ``resumed`` or ``trained``.

    Complete runs are skipped. The others are grouped by the step they
    continue from (a new run, or one with no resume state yet, from 0): a
    group of two or more seeds trains as an ensemble from that step, a
    single seed continues alone in the separate loop. An ensemble killed
    while it wrote one schedule point thus resumes as at most two groups.
    """
    check_members(configs)
    cohorts: dict[int, list[TrainConfig]] = {}
    done: dict[int, tuple[Run, str]] = {}
    for config in configs:
        step = _resume_step(config)
        if step is None:
            done[config.seed] = (Run(Path(config.store) / config.run_id()), "skipped")
        else:
            cohorts.setdefault(step, []).append(config)
    for cohort in cohorts.values():
        if len(cohort) == 1:
            done[cohort[0].seed] = train_or_resume(cohort[0], progress=progress)
        else:
            for config, result in zip(cohort, train_ensemble(cohort, progress=progress)):
                done[config.seed] = result
    return [done[c.seed] for c in configs]
