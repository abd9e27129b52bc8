"""The perceptron engine: teacher-student perceptrons trained together by full-batch adaptive gradient descent.

Every system is an ordinary run: a :class:`~normdyn.trainer.config.TrainConfig`
with model ``perceptron``, optimizer ``gd-adaptive`` and batch size ``full``,
its id the config hash, its checkpoints, metrics and resume state written in
the store format by the same calls as the single-run loop
(:mod:`normdyn.trainer.checkpointing`), so ``normdyn train``, ``normdyn train
--resume``, ``normdyn sweep`` (local or Dask) and every analysis apply. The
engine is to these runs what the ensemble is to seeds: :func:`train_perceptrons`
trains the configs of one group (configs that differ in P and seed only) in one
set of tensors; a config alone is a group of one.

Each system is the ``perceptron`` model on the P samples of the seed (the
first P of the seed's permutation of the pool, as
:func:`normdyn.core.sampling.subset_indices` selects them, so the subsets of
one seed are nested across P). Training minimises the mean logistic loss

    L(v) = (1/P) sum_mu log(1 + exp(-y_mu v.x_mu)),   v = w / sqrt(N),

from v = 0, so lambda = |v| = |w|/sqrt(N) and the first step is the Hebb rule.

Step size. In v the Hessian is (1/P) sum_mu sigma'(m_mu) x_mu x_mu^T, at most
(1 + alpha^{-1/2})^2 / 4 at v = 0 (alpha = P/N) and decaying like the loss once
the data are separated; a constant step would crawl (lambda grows like log t).
The parameter-free adaptive rule of Malitsky & Mishchenko (ICML 2020, Alg. 1):

    eta_k = min( sqrt(1 + theta_{k-1}) eta_{k-1},  s |v_k - v_{k-1}| / |g_k - g_{k-1}| ),
    theta_k = eta_k / eta_{k-1},  eta_0 = ``lr``,  s = ``optimizer_params.safety`` (1/2 in the paper),

so each step stays below s / (local curvature): plain gradient descent whose
step follows the curvature. In addition a step may change v by at most the
fraction ``optimizer_params.max_rel_step`` of its norm (eta_k <= rho |v_k| /
|g_k|, from step 1 on), which keeps the log-spaced checkpoints dense in lambda
while the step size ramps up. The step sizes are on v (``lr`` is eta_0 on v,
the same for every N); the equivalent step on w is N eta_k.

A system stops once lambda >= ``optimizer_params.lam_stop`` * P/N (the
theory's lambda* is about 1.8 alpha, so 6 is about 3.3 lambda*), or after
``steps`` steps; its last state is always checkpointed, and from then on its
weights are frozen.

Vectorisation (:class:`BatchedDescent`). The state of all S x A systems (S
seeds, A sample sizes) is held in tensors: V, the gradients and the previous
V and gradient as (S, A, N), the step sizes as (S, A); the step rule above is
applied to all of them at once, masked to the systems still running, with one
host synchronisation per step (the stop test). The inputs are stored once per
seed as Z = y * X (S, P_max, N; y = +-1, so y (X v) = Z v exactly). Within a
seed the training sets are nested: rows [P_{a-1}, P_a) of Z ("block a") are
used by the sizes >= P_a, so the margins and gradients of all systems need each
block once, and no product is done on rows a system does not own. Two kernels
evaluate these block products (``kernel``; measured in docs/perceptron.md):

- ``blocked-bmm`` (default on CUDA): per block, one ``bmm`` over the seed axis
  for the margins of the sizes >= P_a and one for their gradient contribution:
  2 A kernel launches per step, whatever S.
- ``chunked-mv`` (default on CPU): the blocks cut into chunks of about
  ``CHUNK_BYTES``; per chunk and running system, the margins (``mv``), the
  residuals and the gradient contribution (``addmv``) while the chunk is in
  cache, so Z is read from memory once per step instead of twice per system.

Resume. At every schedule point a system's checkpoint is written, then its
resume state (v, the previous v and gradient, eta and theta, exactly), so a
run killed at any moment continues from a point whose weights are on disk.
Systems of one group may resume from different steps: each waits, frozen,
until the group's step reaches its own. On the CPU a resumed system's
products are the uninterrupted run's, bit for bit, when the group is the same
(``chunked-mv`` computes each system alone; a different group changes the
chunk boundaries of the gradient's sum, hence its rounding).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from normdyn.core import plugins
from normdyn.core.errors import ConfigError, StoreError
from normdyn.core.sampling import subset_indices
from normdyn.core.store import INDEX, Run, group_identity
from normdyn.trainer.checkpointing import Position, current_rng, read_resume, write_resume
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.setup import (
    ORDER_SEED_OFFSET,
    dataset_spec,
    load_data,
    new_model_spec,
    resolve_device,
    step_plan,
)

__all__ = [
    "BatchedDescent",
    "KERNELS",
    "OPTIMIZER",
    "default_kernel",
    "check_group",
    "group_key",
    "train_perceptrons",
]

#: The optimizer name of the configs this engine trains.
OPTIMIZER = "gd-adaptive"
#: The block-product kernels of :class:`BatchedDescent` (module docstring).
KERNELS = ("chunked-mv", "blocked-bmm")
#: Chunk size of ``chunked-mv``: a few MB stay in the last-level cache between the two passes.
CHUNK_BYTES = 4 << 20


def default_kernel(device: str | torch.device) -> str:
    """``chunked-mv`` on CPU, ``blocked-bmm`` elsewhere (measurements: docs/perceptron.md)."""
    return "chunked-mv" if torch.device(device).type == "cpu" else "blocked-bmm"


class BatchedDescent:
    """S x A perceptrons trained together: seed s, system a uses rows [0, P[a]) of ``Z[s]``.

    ``Z`` (S, P_max, N) holds y_mu x_mu per row, ``P`` the increasing sample
    counts; the state lives on ``Z``'s device. A round is :meth:`products`
    (margins and gradients at the current V of the systems in ``running``),
    then :meth:`step` (the adaptive step of the module docstring for the
    systems in ``moving``; the others keep their state unchanged). A system
    is ``fresh`` until its first step (which takes eta_0); :meth:`restore`
    puts a resumed system's state back.
    """

    def __init__(
        self, Z: torch.Tensor, P: Sequence[int], *, lr0: float, safety: float, rho: float, kernel: str
    ) -> None:
        if kernel not in KERNELS:
            raise ConfigError(f"kernel={kernel!r}: use one of {', '.join(KERNELS)}")
        S, P_max, N = Z.shape
        if list(P) != sorted(set(P)) or P[-1] != P_max or P[0] < 1:
            raise ConfigError(f"P={list(P)}: need increasing sample counts ending at Z's {P_max} rows")
        self.Z, self.P, self.kernel = Z, list(P), kernel
        self.safety, self.rho = safety, rho
        dtype, device = Z.dtype, Z.device
        A = len(self.P)
        self.V = torch.zeros(S, A, N, dtype=dtype, device=device)
        # sum_mu -y_mu x_mu sigma(-m_mu): P times the gradient
        self.G = torch.zeros(S, A, N, dtype=dtype, device=device)
        self.M = torch.zeros(S, A, P_max, dtype=dtype, device=device)  # margins y_mu v.x_mu; row mu valid for mu < P[a]
        self.eta = torch.full((S, A), lr0, dtype=dtype, device=device)
        self.theta = torch.full((S, A), math.inf, dtype=dtype, device=device)
        self.v_prev = torch.zeros_like(self.V)
        self.g_prev = torch.zeros_like(self.V)
        self.fresh = torch.ones(S, A, dtype=torch.bool, device=device)
        self._P = torch.tensor(self.P, dtype=dtype, device=device).reshape(1, A, 1)
        starts = [0, *self.P[:-1]]
        self.blocks = [(a, lo, hi) for a, (lo, hi) in enumerate(zip(starts, self.P))]
        rows = max(1, CHUNK_BYTES // (Z.element_size() * N))
        self.chunks = [(a, c, min(c + rows, hi)) for a, lo, hi in self.blocks for c in range(lo, hi, rows)]

    def lam(self) -> torch.Tensor:
        """lambda = |v| of every system, (S, A)."""
        return torch.linalg.vector_norm(self.V, dim=-1)

    def gradient(self) -> torch.Tensor:
        """The gradient of the mean loss at the current V, (S, A, N), from the last :meth:`products`."""
        return self.G / self._P

    def state(self, s: int, a: int) -> dict[str, Any]:
        """System (s, a)'s state between :meth:`products` and :meth:`step`: CPU copies (tensors) and ``fresh``."""
        tensors = {
            "v": self.V[s, a],
            "v_prev": self.v_prev[s, a],
            "g_prev": self.g_prev[s, a],
            "eta": self.eta[s, a],
            "theta": self.theta[s, a],
        }
        return {**{k: t.detach().to("cpu", copy=True) for k, t in tensors.items()}, "fresh": bool(self.fresh[s, a])}

    def restore(self, s: int, a: int, state: dict[str, Any]) -> None:
        """Put back a :meth:`state` of system (s, a)."""
        for key in ("v", "v_prev", "g_prev", "eta", "theta"):
            target = {"v": self.V, "v_prev": self.v_prev, "g_prev": self.g_prev, "eta": self.eta, "theta": self.theta}
            target[key][s, a] = state[key].to(self.V.device, self.V.dtype)
        self.fresh[s, a] = bool(state["fresh"])

    def products(self, running: Sequence[Sequence[bool]]) -> None:
        """Fill the margins ``M`` and ``G`` of the systems ``running[s][a]`` (host booleans) at the current V."""
        if self.kernel == "chunked-mv":
            self._chunked_mv(running)
        else:
            self._blocked_bmm(running)

    def _chunked_mv(self, running: Sequence[Sequence[bool]]) -> None:
        self.G.zero_()
        for s, row in enumerate(running):
            for first, lo, hi in self.chunks:
                systems = [a for a in range(first, len(self.P)) if row[a]]
                if not systems:
                    continue
                z = self.Z[s, lo:hi]
                for a in systems:
                    m = self.M[s, a, lo:hi]
                    torch.mv(z, self.V[s, a], out=m)
                    self.G[s, a].addmv_(z.T, torch.special.expit(-m), alpha=-1)

    def _blocked_bmm(self, running: Sequence[Sequence[bool]]) -> None:
        # systems of any seed are computed together; those stopped in one seed are masked in step()
        alive = [a for a in range(len(self.P)) if any(row[a] for row in running)]
        if not alive:
            return
        self.G.zero_()
        for first, lo, hi in self.blocks:
            a0 = max(first, alive[0])
            if a0 > alive[-1]:
                continue
            z = self.Z[:, lo:hi]
            m = torch.bmm(self.V[:, a0:], z.transpose(1, 2))
            self.M[:, a0:, lo:hi] = m
            self.G[:, a0:].baddbmm_(torch.special.expit(-m), z, alpha=-1)

    def step(self, moving: torch.Tensor) -> None:
        """One gradient step of the systems ``moving`` (S, A bool on the device); the rest are frozen."""
        g = self.gradient()
        dg = torch.linalg.vector_norm(g - self.g_prev, dim=-1)
        dv = torch.linalg.vector_norm(self.V - self.v_prev, dim=-1)
        curvature = torch.where(dg > 0, self.safety * dv / dg, math.inf)
        g_norm = torch.linalg.vector_norm(g, dim=-1)
        relative = torch.where(g_norm > 0, self.rho * self.lam() / g_norm, math.inf)
        eta = torch.minimum(torch.minimum(torch.sqrt(1 + self.theta) * self.eta, curvature), relative)
        adapt = moving & ~self.fresh  # a fresh system's first step takes eta_0
        self.theta = torch.where(adapt, eta / self.eta, self.theta)
        self.eta = torch.where(adapt, eta, self.eta)
        self.fresh = self.fresh & ~moving
        move = moving.unsqueeze(-1)
        self.v_prev = torch.where(move, self.V, self.v_prev)
        self.g_prev = torch.where(move, g, self.g_prev)
        self.V = torch.where(move, self.V - self.eta.unsqueeze(-1) * g, self.V)


def group_key(config: TrainConfig) -> str:
    """What the configs of one engine group share: the run-id fields but P and seed (core.store.group_identity)."""
    return json.dumps(group_identity(asdict(config)), sort_keys=True)


#: Placement fields the configs of one group must share too: one device, one store, one data source.
_SHARED_PLACEMENT = ("device", "store", "data_root", "download")


def check_group(configs: Sequence[TrainConfig]) -> None:
    """The configs must be valid ``gd-adaptive`` configs of one group, each (P, seed) once; else a ConfigError."""
    if not configs:
        raise ConfigError("the perceptron engine needs at least one config")
    for config in configs:
        config.validate()
        if config.optimizer != OPTIMIZER:
            raise ConfigError(
                f"{config.run_id()}: optimizer {config.optimizer!r}; the perceptron engine trains {OPTIMIZER!r} configs"
            )
    first = configs[0]
    ident = group_identity(asdict(first))
    for config in configs[1:]:
        other = group_identity(asdict(config))
        keys = sorted(k for k in ident.keys() | other.keys() if ident.get(k) != other.get(k))
        keys += [k for k in _SHARED_PLACEMENT if getattr(config, k) != getattr(first, k)]
        if keys:
            raise ConfigError(
                f"{config.run_id()} and {first.run_id()} differ in {', '.join(keys)}; the perceptron engine trains "
                "configs that differ in P and seed only, on one device, into one store"
            )
    pairs = [(c.P, c.seed) for c in configs]
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"the group repeats a (P, seed): {sorted(pairs)}")


@dataclass
class _System:
    """One config of the group: its run (None until created), action, start step and stored steps."""

    config: TrainConfig
    path: Path  # its run directory
    s: int  # seed index in the group's tensors
    a: int  # P index
    run: Run | None
    action: str  # trained | resumed | skipped
    start: int = 0  # the step it continues from
    state: dict[str, Any] | None = None  # its resume state (None: a fresh start)
    stored: set[int] | None = None
    done: bool = False  # stopped (its last point is queued)
    completed: bool = False  # its status "complete" is written
    order: torch.Generator | None = None  # its data-order generator's state goes into its resume state


def _existing(path: Path, device: torch.device) -> tuple[Run | None, str, int, dict[str, Any] | None]:
    """(run, action, start step, resume state) of the run in ``path``, read and checked."""
    if not (path / INDEX).exists():
        return None, "trained", 0, None
    run = Run(path)
    if run.status == "complete":
        return run, "skipped", 0, None
    point = read_resume(run, device)
    if point is None:  # killed before its first resume state: it starts over (stored points are not rewritten)
        return run, "resumed", 0, None
    try:
        entry = point.optimizer["state"][0]
        state = {k: entry[k] for k in ("v", "v_prev", "g_prev", "eta", "theta")}
        state["fresh"] = bool(entry["fresh"])
        w = point.weights["fc.weight"].double().flatten()
    except (KeyError, TypeError) as exc:
        raise StoreError(
            f"{path / 'resume' / 'latest.safetensors'}: not a perceptron engine's resume state (no {exc}); "
            "train the config again into another store"
        ) from None
    N = w.numel()
    ok = all(state[k].shape == (N,) for k in ("v", "v_prev", "g_prev")) and state["eta"].numel() == 1
    # the same process wrote both from one v (w = v sqrt(N), rounded once)
    if not ok or not torch.allclose(state["v"].double() * math.sqrt(N), w, rtol=1e-12, atol=0):
        raise StoreError(
            f"{path}: the resume state at step {point.at.step} does not match its checkpoint's weights; "
            "train the config again into another store"
        )
    return run, "resumed", point.at.step, state


def _metrics(
    v: torch.Tensor, m: torch.Tensor, y: torch.Tensor, lr: float, module: torch.nn.Module, data: Any, test: Any
) -> dict[str, float]:
    """The checkpoint metrics of one system: ``v`` on v's scale, ``m`` its P margins, ``y`` its labels (+-1)."""
    module.load_state_dict({"fc.weight": (v * math.sqrt(len(v))).reshape(1, -1)})
    with torch.no_grad():
        test_logit = module(test[0]).flatten()
        test_loss = (
            float(torch.nn.functional.binary_cross_entropy_with_logits(test_logit, test[1]))
            if len(test_logit)
            else math.nan
        )
    logit = y * m  # y = +-1
    return {
        "train_error": float(((logit > 0) != (y > 0)).double().mean()),
        "train_loss": float(torch.nn.functional.softplus(-m).mean()),
        "test_error": data.exact_test_error(module),
        "test_loss": test_loss,
        "lr": lr,
    }


def _resume_tensors(state: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """The engine's state as an optimizer state dict (packed by the training core like any optimizer's)."""
    tensors = {k: state[k] for k in ("v", "v_prev", "g_prev", "eta", "theta")}
    group = {"lr": config.lr, **config.optimizer_params, "params": [0]}
    return {"state": {0: {**tensors, "fresh": state["fresh"]}}, "param_groups": [group]}


class _Writes:
    """The store writes of one descent, in order on one thread, overlapping the next steps' products.

    Once a write fails every later one is skipped (so no resume state or status follows a checkpoint
    that is not there), and :meth:`check` raises the failure in the training thread.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: list[Future[None]] = []
        self.error: BaseException | None = None

    def submit(self, write: Callable[[], None]) -> None:
        def guarded() -> None:
            if self.error is None:
                try:
                    write()
                except BaseException as exc:
                    self.error = exc

        self._pending.append(self._pool.submit(guarded))

    def check(self) -> None:
        """Raise the first failed write's exception, if any; drop the finished futures."""
        self._pending = [f for f in self._pending if not f.done()]
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait for every queued write (each skipped after a failure)."""
        self._pool.shutdown(wait=True)


def train_perceptrons(
    configs: Sequence[TrainConfig],
    *,
    progress: bool = True,
    kernel: str | None = None,
    paths: Sequence[str | os.PathLike[str]] | None = None,
) -> list[tuple[Run, str]]:
    """Train, resume or skip every config of one group together; (run, action) per config, in order.

    Idempotent, like :func:`normdyn.trainer.loop.train_or_resume`: a complete
    run is ``skipped``, an unfinished one ``resumed`` from its resume state, a
    new one ``trained``. ``paths`` are the run directories (default: each
    config's ``store/run_id``; ``normdyn train --resume DIR`` passes DIR).
    ``kernel`` picks the block products (:data:`KERNELS`; default
    :func:`default_kernel` of the device): the results agree to rounding.
    Everything is checked before a run is created; on an exception every
    run not yet complete is marked failed.
    """
    from normdyn.trainer.loop import check_store, new_run  # the loop dispatches gd-adaptive configs here

    configs = list(configs)
    check_group(configs)
    first = configs[0]
    dirs = [Path(c.store) / c.run_id() for c in configs] if paths is None else [Path(p) for p in paths]
    if len(dirs) != len(configs):
        raise ConfigError(f"{len(configs)} configs but {len(dirs)} run directories")
    check_store(first.store)
    device = resolve_device(first.device)
    kernel = kernel or default_kernel(device)
    if kernel not in KERNELS:
        raise ConfigError(f"kernel={kernel!r}: use one of {', '.join(KERNELS)}")
    data = load_data(first)
    if int(data.num_classes) != 2:
        raise ConfigError(f"dataset {first.dataset!r} has {data.num_classes} classes; a perceptron needs 2")
    spec = new_model_spec(first, data)
    N = math.prod(data.input_shape)
    seeds = sorted({c.seed for c in configs})
    Ps = sorted({c.P for c in configs})
    systems = []
    for c, path in zip(configs, dirs):
        run, action, start, state = _existing(path, device)
        if run is not None and json.dumps(run.model_spec, sort_keys=True) != json.dumps(spec, sort_keys=True):
            raise StoreError(
                f"{run.path}: its model_spec is not the perceptron its config builds (N={N}); the run's files "
                "changed: train the config again into another store"
            )
        systems.append(_System(c, path, seeds.index(c.seed), Ps.index(c.P), run, action, start, state))
    idx = {s: subset_indices(len(data.x_train), Ps[-1], s) for s in seeds}  # P's samples: the first P of these
    family = plugins.get("models", "perceptron")
    module = family.build(spec).double()
    test = (data.x_test.double().flatten(1), data.y_test.double())
    _, _, total, schedule = step_plan(first)
    for system in systems:  # every check passed: the new runs are created now
        if system.run is None:
            system.run = new_run(system.config, spec, dataset_spec(first))
        system.stored = {int(x) for x in system.run.checkpoints()["step"]}
        system.order = torch.Generator().manual_seed(system.config.seed + ORDER_SEED_OFFSET)  # full batch: unused
        if system.action == "resumed":
            system.run.set_status("running")
        system.completed = system.action == "skipped"
    active = [x for x in systems if x.action != "skipped"]
    try:
        if active:
            _descend(active, data, idx, Ps, N, first, total, set(schedule), module, test, device, kernel, progress)
    except BaseException:
        for x in active:
            if not x.completed and x.run is not None:
                try:
                    x.run.set_status("failed")
                except (OSError, StoreError):  # the store may be what failed: the first error is the one to see
                    pass
        raise
    return [(x.run, x.action) for x in systems]  # type: ignore[misc]


def _descend(
    systems: list[_System],
    data: Any,
    idx: dict[int, torch.Tensor],
    Ps: list[int],
    N: int,
    config: TrainConfig,
    total: int,
    points: set[int],
    module: torch.nn.Module,
    test: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    kernel: str,
    progress: bool,
) -> None:
    """The gradient descent of ``systems`` from the earliest start step to the end; writes every point."""
    seeds = sorted(idx)
    S, A = len(seeds), len(Ps)
    params = config.optimizer_params
    ys = []
    Z = torch.empty(S, Ps[-1], N, dtype=torch.float64)
    for s, seed in enumerate(seeds):
        ys.append(data.y_train[idx[seed]].double() * 2 - 1)
        torch.mul(ys[s].unsqueeze(1), data.x_train[idx[seed]].double().flatten(1), out=Z[s])  # y = +-1: exact
    gd = BatchedDescent(
        Z.to(device), Ps, lr0=float(config.lr), safety=params["safety"], rho=params["max_rel_step"], kernel=kernel
    )
    del Z  # on a GPU, the host copy
    for x in systems:
        if x.state is not None:
            gd.restore(x.s, x.a, x.state)
    lam_stop = params.get("lam_stop")
    stop_at = torch.full((S, A), math.inf, dtype=torch.float64, device=device)
    if lam_stop is not None:
        stop_at[:] = lam_stop * torch.tensor(Ps, dtype=torch.float64, device=device) / N
    grid: dict[tuple[int, int], _System] = {(x.s, x.a): x for x in systems}
    t0 = min(x.start for x in systems)
    bar = tqdm(
        total=total,
        initial=t0,
        desc=f"perceptrons x{len(systems)}",
        unit="step",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    writes = _Writes()
    try:
        for step in range(t0, total + 1):
            running = [
                [(s, a) in grid and grid[s, a].start <= step and not grid[s, a].done for a in range(A)]
                for s in range(S)
            ]
            gd.products(running)
            lam = gd.lam()
            done = torch.full_like(lam, step == total, dtype=torch.bool) | ((lam >= stop_at) & (step > 0))
            lam_host, done_host = torch.stack((lam, done.to(lam.dtype))).cpu().tolist()  # the one synchronisation
            for (s, a), x in grid.items():
                if running[s][a]:
                    if not math.isfinite(lam_host[s][a]):
                        raise ConfigError(f"{x.path.name}: the weights became non-finite at step {step}")
                    _point(
                        writes,
                        gd,
                        x,
                        step,
                        bool(done_host[s][a]),
                        step in points,
                        Ps[a],
                        N,
                        ys[s],
                        module,
                        data,
                        test,
                        device,
                    )
            writes.check()  # a failed write stops the training here
            moving = [[running[s][a] and not done_host[s][a] for a in range(A)] for s in range(S)]
            if all(x.done for x in systems):
                break
            bar.update(1)
            gd.step(torch.tensor(moving, device=device))
    finally:
        bar.close()
        writes.close()
    writes.check()


def _point(
    writes: _Writes,
    gd: BatchedDescent,
    x: _System,
    step: int,
    stop: bool,
    scheduled: bool,
    P: int,
    N: int,
    y: torch.Tensor,
    module: torch.nn.Module,
    data: Any,
    test: Any,
    device: torch.device,
) -> None:
    """Queue what system ``x`` writes at ``step``, as one write: its checkpoint, then its resume state or status.

    A resume state is written only with a checkpoint written now: at a point stored before (a resumed
    run), the weights just computed may differ from the stored ones by rounding (another group or
    kernel), and a resume state must hold the weights of its checkpoint.
    """
    run, stored = x.run, x.stored
    assert run is not None and stored is not None and x.order is not None
    write_checkpoint = (scheduled or stop) and step not in stored
    if not (write_checkpoint or stop):
        return
    checkpoint: dict[str, Any] | None = None
    if write_checkpoint:
        s, a = x.s, x.a
        v = gd.V[s, a].cpu()
        metrics = _metrics(v, gd.M[s, a, :P].cpu(), y[:P], float(gd.eta[s, a]), module, data, test)
        checkpoint = {"weights": {"fc.weight": (v * math.sqrt(N)).reshape(1, -1)}, "metrics": metrics}
        stored.add(step)
    resume = None
    if write_checkpoint and scheduled and not stop and step > x.start:
        resume = (Position(step=step, samples_seen=step * P), _resume_tensors(gd.state(x.s, x.a), x.config))
    rng = current_rng(device)
    order = x.order
    x.done = x.done or stop

    def write() -> None:
        if checkpoint is not None:
            run.append_checkpoint(
                checkpoint["weights"],
                step=step,
                epoch=float(step),
                samples_seen=step * P,
                metrics=checkpoint["metrics"],
            )
        if stop:
            run.set_status("complete")
            x.completed = True
        elif resume is not None:
            write_resume(run, resume[0], order, resume[1], rng)

    writes.submit(write)
