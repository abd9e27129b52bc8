"""Seed ensembles: the seeds of one configuration trained together with torch.func.

Every seed is built exactly as its separate run builds it (same seed, same
init, same P-subset, same data-order generator), then the S modules'
parameters are stacked along a new leading dimension
(``torch.func.stack_module_state``). One step gathers each seed's batch by
index from the training tensors on the device (one index op for all seeds),
runs the S forward passes as one ``vmap`` of ``functional_call``, and
differentiates the sum of the S per-seed mean losses with one ordinary
backward pass: the seeds share no parameter, so each seed's slice of the
stacked gradient is its own gradient. (This is cheaper than
``vmap(grad(loss))``, which also batches every backward op through vmap;
see docs/training.md for the measured costs.) One optimizer step over the
stacked tensors follows, with torch's ``fused`` implementation (one kernel
per tensor instead of about a dozen ops). Adam, AdamW and SGD with momentum
act elementwise, so one optimizer over the stacked tensors is S independent
optimizers (their step counter is shared: every seed has taken the same
number of steps).

At every schedule point all seeds are evaluated at once (vmapped) and each
seed's run gets its checkpoint and resume state through the same store
calls, in the same format and order, as the separate loop: an ensemble run
is an ordinary run, and ``normdyn train --resume`` continues one alone. The
writes of a point run on a background thread while the next steps train
(copies of the weights and optimizer state are taken first; one point in
flight at a time), so the fsyncs of S runs overlap the computation; a
failed write stops training at the next point.

Not bitwise: the S matrix products of a step run as batched products (the
weight gradients in transposed form), and the fused optimizer kernel rounds
differently from the per-op one, so a seed's weights differ from its
separate run's by float32 rounding (see docs/training.md for the measured
size).

Models with BatchNorm or active dropout are refused: their running
statistics and random masks could not match the separate runs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from normdyn.core.errors import ConfigError, StoreError
from normdyn.core.sampling import subset_indices
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
from normdyn.trainer.loop import check_store, new_run, train_or_resume
from normdyn.trainer.setup import (
    EVAL_BATCH_OTHER,
    ORDER_SEED_OFFSET,
    Setting,
    build_model,
    load_data,
    make_optimizer,
    new_model_spec,
    resolve_device,
    setting,
)

__all__ = [
    "Member",
    "Ensemble",
    "check_members",
    "prepare_ensemble",
    "ensemble_step",
    "evaluate_members",
    "train_ensemble",
    "train_ensemble_or_resume",
]


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
class Ensemble(Setting):
    """S seeds of one configuration, their parameters stacked, ready to train.

    The :class:`~normdyn.trainer.setup.Setting` part (device, objective, test data, schedule) is the one
    each seed's separate run would build; each member holds its own config and run.
    """

    members: list[Member]
    base: nn.Module  # the architecture, on the meta device: functional_call supplies the tensors
    state_keys: list[str]  # state_dict order of the separate run's checkpoints
    template: nn.Module  # a real module, loaded with one seed's weights where a module is needed
    params: dict[str, torch.Tensor]  # name -> [S, ...] leaf tensors the optimizer updates
    buffers: dict[str, torch.Tensor]  # name -> [S, ...]
    optimizer: torch.optim.Optimizer
    x_all: torch.Tensor  # the whole training set: seeds index their P samples from it
    y_all: torch.Tensor
    subsets: torch.Tensor  # [S, P] indices into x_all, seed s's P samples in their run's order


def check_members(configs: list[TrainConfig]) -> None:
    """The configs must differ in seed only (run-id fields), with distinct seeds; else a ConfigError."""
    if not configs:
        raise ConfigError("an ensemble needs at least one config")
    first = {k: v for k, v in configs[0].identity().items() if k != "seed"}
    for config in configs[1:]:
        other = {k: v for k, v in config.identity().items() if k != "seed"}
        differ = sorted(k for k in first if first[k] != other[k])
        if differ:
            raise ConfigError(
                f"ensemble members must differ in seed only; {config.run_id()} also differs in {', '.join(differ)}"
            )
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
        raise ConfigError(
            f"model {name!r} cannot be trained as an ensemble: it has {why}. Ensembles support "
            f"models without BatchNorm or dropout (mlp, cnn1d, perceptron, vit, cnn with "
            f"dropout = 0, e.g. its standard preset); train these seeds without --ensemble"
        )


def _open_member(config: TrainConfig, spec: dict[str, Any], data_spec: dict[str, Any]) -> tuple[Run, str]:
    path = Path(config.store) / config.run_id()
    if not (path / INDEX).exists():
        return new_run(config, spec, data_spec), "trained"
    run = Run(path)
    if json.dumps(run.model_spec, sort_keys=True) != json.dumps(spec, sort_keys=True):
        raise ConfigError(
            f"{path}: its stored model_spec differs from the one built now; continue it alone "
            f"with `normdyn train --resume {path}`"
        )
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
    check_store(c0.store)
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
    shared = setting(c0, device, data, spec, modules[0])
    opened = [_open_member(config, spec, shared.dataset_spec) for config, _, _ in members]
    ensemble_members, subsets, saved_optimizers = [], [], []
    for (config, idx, rng), module, (run, action) in zip(members, modules, opened):
        order = torch.Generator().manual_seed(config.seed + ORDER_SEED_OFFSET)
        at = Position()
        point = read_resume(run, device)
        if point is not None:
            saved_optimizers.append(point.optimizer)
            load_resume_point(module, None, run, point)
            order.set_state(point.order_state)
            rng, at = point.rng, point.at
        ensemble_members.append(
            Member(config, run, action, at, order, rng, {int(s) for s in run.checkpoints()["step"]})
        )
        subsets.append(idx)
    if len({m.at.step for m in ensemble_members}) != 1:
        raise StoreError(
            "ensemble runs resume from different steps: "
            + ", ".join(f"{m.run.run_id} at {m.at.step}" for m in ensemble_members)
        )
    for m in ensemble_members:  # only once every member's state has been read and checked
        if m.action == "resumed":
            m.run.set_status("running")
    params, buffers = stack_module_state(modules)
    optimizer = make_optimizer(c0, list(params.values()), fused=True)
    # Seeds continuing from step > 0 all have a saved state; at step 0 a saved state is still empty.
    if len(saved_optimizers) == len(ensemble_members):
        optimizer.load_state_dict(_stack_optimizer_states(saved_optimizers))
    return Ensemble(
        **shared.shared(),
        members=ensemble_members,
        base=copy.deepcopy(modules[0]).to("meta"),
        state_keys=list(modules[0].state_dict()),
        template=modules[0],
        params=params,
        buffers=buffers,
        optimizer=optimizer,
        x_all=data.x_train.to(device),
        y_all=data.y_train.to(device),
        subsets=torch.stack(subsets).to(device),
    )


def _set_fused(groups: list[dict[str, Any]], fused: bool | None) -> list[dict[str, Any]]:
    """Copies of optimizer param groups with the ``fused`` option set.

    The stacked optimizer runs fused (True); a seed's saved state keeps torch's default (None), the
    value a separate run's optimizer holds, so its resume state is exactly a separate run's.
    """
    return [{**group, "fused": fused} for group in groups]


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
    return {"state": stacked, "param_groups": _set_fused(states[0]["param_groups"], True)}


def _member_optimizer_state(state: dict[str, Any], s: int) -> dict[str, Any]:
    """A copy of seed ``s``'s optimizer state, exactly as its separate run's optimizer would hold it.

    Every tensor is copied, the shared 0-dim ``step`` too (the optimizer increments it in place), so
    the copy stays valid while training goes on.
    """

    def own(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        return value[s].clone() if value.dim() > 0 else value.clone()

    per_seed = {pid: {k: own(v) for k, v in entries.items()} for pid, entries in state["state"].items()}
    return {"state": per_seed, "param_groups": _set_fused(state["param_groups"], None)}


def member_state_dict(e: Ensemble, s: int) -> dict[str, torch.Tensor]:
    """Seed ``s``'s weights in its separate run's state_dict order."""
    stacked = {**e.params, **e.buffers}
    return {k: stacked[k][s].detach() for k in e.state_keys}


def _outputs(e: Ensemble, x: torch.Tensor, *, shared: bool = False) -> torch.Tensor:
    """Every seed's model outputs, ``[S, n, ...]``: on its own inputs ``x`` ``[S, n, ...]``, or with
    ``shared`` on the same inputs ``x`` ``[n, ...]`` for all seeds."""

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(e.base, (p, b), (xb,))

    return vmap(one, in_dims=(0, 0, None if shared else 0))(e.params, e.buffers, x)


def ensemble_step(e: Ensemble) -> None:
    """One optimizer step of every seed, each on the next batch of its own epoch order."""
    S, P = e.subsets.shape
    local = [next_batch(m.at, P, e.batch_size, m.order, e.device) for m in e.members]
    if local[0] is None:  # full batch: every seed's P samples in their stored order
        gidx = e.subsets
    else:
        gidx = torch.gather(e.subsets, 1, torch.stack(local))  # type: ignore[arg-type]
    B = int(gidx.shape[1])
    out = _outputs(e, e.x_all[gidx])
    # Per-sample losses of all seeds in one call, then each seed's mean: its separate run's loss. The
    # seeds share no parameter, so the gradient of the sum over seeds is, slice by slice, each seed's own.
    losses = e.objective.loss(out.flatten(0, 1), e.y_all[gidx].flatten(), reduction="none").view(S, B)
    e.optimizer.zero_grad(set_to_none=True)
    losses.mean(dim=1).sum().backward()
    e.optimizer.step()
    for m in e.members:
        m.at.step += 1
        m.at.samples_seen += B


def _per_seed_sums(e: Ensemble, x: torch.Tensor, y: torch.Tensor, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss (float64) and error count per seed over one chunk; ``shared``: one x and y for all seeds.

    The forward pass is vmapped; the loss and error count are then taken seed by seed with the
    objective's own reductions, exactly as the separate run's evaluation takes them.
    """
    out = _outputs(e, x, shared=shared)
    ys = [y] * len(out) if shared else list(y)
    loss = torch.stack([e.objective.loss(o, t, reduction="sum") for o, t in zip(out, ys)])
    errors = torch.stack([e.objective.errors(o, t) for o, t in zip(out, ys)])
    return loss.double(), errors


def evaluate_members(e: Ensemble) -> list[dict[str, float]]:
    """Each seed's train error/loss on its P samples and test error/loss (the separate run's metrics)."""
    S, P = e.subsets.shape
    # eval_batch_size samples per forward pass over all seeds: a separate run's activation memory (and on
    # the CPU, intermediates that stay in cache; S times larger chunks ran at half the speed here)
    # (the vmapped forward has a fixed cost per call, so the ensemble keeps 2048 when the config leaves it open)
    bs = max(1, (e.members[0].config.eval_batch_size or EVAL_BATCH_OTHER) // S)
    e.base.eval()
    with torch.no_grad():
        train = [
            torch.zeros(S, dtype=torch.float64, device=e.device),
            torch.zeros(S, dtype=torch.int64, device=e.device),
        ]
        for start in range(0, P, bs):
            gidx = e.subsets[:, start : start + bs]
            loss, errors = _per_seed_sums(e, e.x_all[gidx], e.y_all[gidx], shared=False)
            train[0] += loss
            train[1] += errors
        n_test = int(e.x_test.shape[0])
        test = [
            torch.zeros(S, dtype=torch.float64, device=e.device),
            torch.zeros(S, dtype=torch.int64, device=e.device),
        ]
        for start in range(0, n_test, bs):
            loss, errors = _per_seed_sums(e, e.x_test[start : start + bs], e.y_test[start : start + bs], shared=True)
            test[0] += loss
            test[1] += errors
    e.base.train()
    nan = float("nan")
    out = []
    for s in range(S):
        metrics = {
            "train_error": int(train[1][s]) / P,
            "train_loss": float(train[0][s]) / P,
            "test_error": int(test[1][s]) / n_test if n_test else nan,
            "test_loss": float(test[0][s]) / n_test if n_test else nan,
        }
        if e.exact_test_error is not None:
            e.template.load_state_dict(member_state_dict(e, s))
            e.template.eval()
            with torch.no_grad():
                exact = e.exact_test_error(e.template)
            if exact is not None:  # None: not a model the exact formula covers
                metrics["test_error"] = float(exact)
        out.append(metrics)
    return out


@dataclass
class _SeedPoint:
    """What one seed's run stores at a schedule point, copied out of the live ensemble."""

    member: Member
    at: Position
    weights: dict[str, torch.Tensor] | None  # None: the checkpoint of this step is stored already
    metrics: dict[str, float] | None
    order: torch.Generator  # a copy of the seed's data-order generator
    optimizer_state: dict[str, Any] | None  # None: the last point, which needs no resume state


def _snapshot_point(e: Ensemble) -> Callable[[], None]:
    """Evaluate every seed at the current step, copy what its run stores there, and return the writes.

    The returned function writes, seed after seed, the checkpoint (where not stored yet), then the
    resume state (except at the last step): the separate loop's order. It touches only copies, so
    training may go on while it runs.
    """
    step = e.members[0].at.step
    metrics = evaluate_members(e) if any(step not in m.stored for m in e.members) else None
    optimizer_state = e.optimizer.state_dict() if step < e.total_steps else None
    points = []
    for s, m in enumerate(e.members):
        point = _SeedPoint(m, replace(m.at), None, None, torch.Generator(), None)
        point.order.set_state(m.order.get_state())
        if step not in m.stored:
            point.weights = {k: v.clone() for k, v in member_state_dict(e, s).items()}
            point.metrics = metrics[s]  # type: ignore[index]
            m.stored.add(step)
        if optimizer_state is not None:
            point.optimizer_state = _member_optimizer_state(optimizer_state, s)
        points.append(point)

    def write() -> None:
        for p in points:
            if p.weights is not None:
                p.member.run.append_checkpoint(
                    p.weights,
                    step=step,
                    epoch=step / e.batches_per_epoch,
                    samples_seen=p.at.samples_seen,
                    metrics=p.metrics,
                )
            if p.optimizer_state is not None:
                write_resume(p.member.run, p.at, p.order, p.optimizer_state, p.member.rng)

    return write


class _PointWriter:
    """Runs the writes of one schedule point at a time on a background thread, in submission order.

    ``submit`` first waits for the previous point's writes and re-raises their error, so at most one
    point is held in memory and a failed write stops training at the next point. Leaving the context
    waits for the writes in flight, also when training failed (what they write is a valid point).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="normdyn-ensemble-writer")
        self._pending: Future[None] | None = None

    def submit(self, write: Callable[[], None]) -> None:
        """Wait for the previous point, then start ``write``."""
        self.wait()
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        """Wait for the point in flight, if any; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> _PointWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._pool.shutdown(wait=True)


def train_ensemble(configs: list[TrainConfig], *, progress: bool = True) -> list[tuple[Run, str]]:
    """Train the seeds of ``configs`` (one config, several seeds) together; return (run, action) per seed.

    New runs are created; existing ones continue from their resume states,
    which must all be at one step. On an exception every run is marked failed.
    """
    e = prepare_ensemble(configs)
    points = {p for p in e.points if p >= e.members[0].at.step}
    desc = f"ensemble {configs[0].model}-{configs[0].dataset}-P{configs[0].P} x{len(configs)}"
    bar = tqdm(
        total=e.total_steps,
        initial=e.members[0].at.step,
        desc=desc,
        unit="step",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        with _PointWriter() as writer:
            if e.members[0].at.step in points:
                writer.submit(_snapshot_point(e))
            while e.members[0].at.step < e.total_steps:
                ensemble_step(e)
                bar.update(1)
                if e.members[0].at.step in points:
                    writer.submit(_snapshot_point(e))
            writer.wait()
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
