"""The teacher-student perceptron experiment: every (seed, alpha) system
trained in one process by full-batch gradient descent, written as ordinary runs.

Each system is the ``perceptron`` model on P = alpha N samples of the
``teacher`` dataset (the first P of the seed's permutation of the pool, as
:func:`normdyn.core.sampling.subset_indices` selects them, so the subsets of
one seed are nested across alpha). Training minimises the mean logistic loss

    L(v) = (1/P) sum_mu log(1 + exp(-y_mu v.x_mu)),   v = w / sqrt(N),

from v = 0, so lambda = |v| = |w|/sqrt(N) and the first step is the Hebb rule.

Step size. In v the Hessian is (1/P) sum_mu sigma'(m_mu) x_mu x_mu^T, at most
(1 + alpha^{-1/2})^2 / 4 at v = 0 and decaying like the loss once the data are
separated; a constant step would crawl (lambda grows like log t). We use the
parameter-free adaptive rule of Malitsky & Mishchenko (ICML 2020, Alg. 1):

    eta_k = min( sqrt(1 + theta_{k-1}) eta_{k-1},  s |v_k - v_{k-1}| / |g_k - g_{k-1}| ),
    theta_k = eta_k / eta_{k-1},  eta_0 = ``lr0``,  s = ``lr_safety`` (1/2 in the paper),

so each step stays below s / (local curvature): plain gradient descent whose
step follows the curvature. In addition a step may change v by at most the
fraction ``max_rel_step`` of its norm (eta_k <= rho |v_k| / |g_k|, from step
1 on), which keeps the log-spaced checkpoints dense in lambda while the step
size ramps up. lambda then grows about linearly in steps where the loss is
small, and the trajectory (the curve eps(lambda)) is the gradient flow's,
time reparametrised. The equivalent step on w is N eta_k.

A system stops once lambda >= ``lam_stop`` * alpha (the theory's
lambda* is about 1.8 alpha, so the default 6 alpha is about 3.3 lambda*), or
after ``steps`` steps; its last state is always checkpointed.

Vectorisation: all systems advance together step by step; the matrix-vector
products use one BLAS call per system (torch.mv on the nested row block of
the seed's data). On a 2-core CPU this beat batched (bmm) and multi-right-hand
-side products, which BLAS runs 2-8x slower per element for such thin shapes.
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from normdyn.core import plugins
from normdyn.core.errors import ConfigError
from normdyn.core.sampling import subset_indices
from normdyn.core.schedule import parse_schedule
from normdyn.core.store import Run

__all__ = ["PerceptronExperiment", "ExperimentSummary", "run_experiment", "run_id"]


@dataclass
class PerceptronExperiment:
    """The grid and the optimiser of one perceptron experiment."""

    N: int = 1000                                   # input dimension
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # loads alpha = P/N
    seeds: tuple[int, ...] = (0, 1, 2)              # seeds: P-subset of the pool per run
    inputs: str = "rademacher"                      # rademacher (the paper) | gaussian
    teacher_seed: int = 0                           # one teacher and pool for the whole experiment
    pool_factor: float = 2.0                        # pool size n_train = pool_factor * max P
    steps: int = 20000                              # at most this many gradient steps per system
    schedule: str = "log:60"                        # checkpoint steps (normdyn.core.schedule)
    lr0: float = 0.01                               # first step size on v (small: the early norms are resolved)
    lr_safety: float = 0.5                          # s in eta_k <= s |dv| / |dg|
    max_rel_step: float = 0.05                      # rho in eta_k <= rho |v_k| / |g_k|
    lam_stop: float = 6.0                           # stop a system once lambda >= lam_stop * alpha
    n_test: int = 1000                              # test samples (the test loss; the test error is exact)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the config, e.g. {"mode": "quick"}

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value."""
        if self.N < 2:
            raise ConfigError(f"N={self.N}: the input dimension must be >= 2")
        if not self.alphas or any(not (a > 0 and math.isfinite(a)) for a in self.alphas):
            raise ConfigError(f"alphas={list(self.alphas)}: give positive loads, e.g. 0.5,1,2,4")
        if len(set(self.alphas)) != len(self.alphas) or len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ConfigError(f"alphas {list(self.alphas)} and seeds {list(self.seeds)} must be non-empty and distinct")
        if len({self.P(a) for a in self.alphas}) != len(self.alphas) or min(self.P(a) for a in self.alphas) < 1:
            raise ConfigError(f"alphas {list(self.alphas)} give P = {[self.P(a) for a in self.alphas]} at N={self.N}: "
                              f"each P must be >= 1 and distinct; use a larger N")
        if self.pool_factor < 1:
            raise ConfigError(f"pool_factor={self.pool_factor}: the pool must hold at least the largest P")
        if not (self.lr0 > 0 and 0 < self.lr_safety <= 1 and self.max_rel_step > 0 and self.lam_stop > 0):
            raise ConfigError(f"lr0={self.lr0}, lr_safety={self.lr_safety}, max_rel_step={self.max_rel_step}, "
                              f"lam_stop={self.lam_stop}: need lr0 > 0, 0 < lr_safety <= 1, max_rel_step > 0, "
                              f"lam_stop > 0")
        parse_schedule(self.schedule, self.steps)

    def P(self, alpha: float) -> int:
        """The number of samples at load alpha: round(alpha N)."""
        return int(round(alpha * self.N))

    def dataset_spec(self) -> dict[str, Any]:
        """The ``teacher`` dataset spec shared by every run."""
        n_train = int(math.ceil(self.pool_factor * max(self.P(a) for a in self.alphas)))
        return {"name": "teacher", "N": self.N, "inputs": self.inputs, "n_train": n_train, "n_test": self.n_test,
                "teacher_seed": self.teacher_seed}

    def run_config(self, P: int, seed: int) -> dict[str, Any]:
        """The stored training config of one run (P and seed included, as the trainer stores them)."""
        return {"experiment": "perceptron", "model": "perceptron", "dataset": "teacher", "P": P, "seed": seed,
                "N": self.N, "inputs": self.inputs, "teacher_seed": self.teacher_seed, "loss": "logistic",
                "optimizer": "gd-adaptive-mm", "batch_size": "full", "lr0": self.lr0, "lr_safety": self.lr_safety,
                "max_rel_step": self.max_rel_step,
                "steps": self.steps, "schedule": self.schedule, "lam_stop": self.lam_stop, "init": "zero",
                **self.extra}


@dataclass
class ExperimentSummary:
    """What a finished experiment produced: run directories, steps per run, wall time."""

    runs: list[Path]
    steps: dict[str, int]
    wall_seconds: float
    config: dict[str, Any]


def run_id(alpha: float, seed: int) -> str:
    """The run id of one system, e.g. ``perceptron-alpha0.5-seed0``."""
    return f"perceptron-alpha{alpha:g}-seed{seed}"


class _System:
    """One (seed, alpha) system: its data block, weights and step-size state."""

    def __init__(self, run: Run, x: torch.Tensor, y: torch.Tensor, alpha: float, lr0: float):
        self.run, self.x, self.y, self.alpha = run, x, y, alpha
        self.P, self.N = x.shape
        self.v = torch.zeros(self.N, dtype=torch.float64)
        self.eta, self.theta = lr0, math.inf
        self.v_prev: torch.Tensor | None = None
        self.g_prev: torch.Tensor | None = None
        self.steps = 0

    def lam(self) -> float:
        return float(torch.linalg.vector_norm(self.v))

    def margins(self) -> torch.Tensor:
        return self.y * torch.mv(self.x, self.v)

    def step(self, m: torch.Tensor, safety: float, rho: float) -> None:
        """One gradient step from the current margins ``m`` (step-size rule: module docstring)."""
        g = torch.mv(self.x.T, -self.y * torch.special.expit(-m)) / self.P
        if self.v_prev is not None:
            dg = float(torch.linalg.vector_norm(g - self.g_prev))
            curvature = safety * float(torch.linalg.vector_norm(self.v - self.v_prev)) / dg if dg > 0 else math.inf
            g_norm = float(torch.linalg.vector_norm(g))
            relative = rho * self.lam() / g_norm if g_norm > 0 else math.inf
            eta = min(math.sqrt(1 + self.theta) * self.eta, curvature, relative)
            self.theta, self.eta = eta / self.eta, eta
        self.v_prev, self.g_prev = self.v, g
        self.v = self.v - self.eta * g
        self.steps += 1
        if not bool(torch.isfinite(self.v).all()):
            raise ConfigError(f"{self.run.run_id}: the weights became non-finite at step {self.steps}")


def _checkpoint(sys_: _System, step: int, m: torch.Tensor, module: torch.nn.Module, data: Any,
                writer: ThreadPoolExecutor) -> Future[int]:
    """Metrics now (the shared module is not thread-safe), the store write in ``writer``."""
    w = (sys_.v * math.sqrt(sys_.N)).reshape(1, -1)
    module.load_state_dict({"fc.weight": w})
    with torch.no_grad():
        test_logit = module(data.x_test.double()).flatten()
        test_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(
            test_logit, data.y_test.double())) if len(test_logit) else math.nan
    logit = sys_.y * m  # y = +-1
    metrics = {"train_error": float(((logit > 0) != (sys_.y > 0)).double().mean()),
               "train_loss": float(torch.nn.functional.softplus(-m).mean()),
               "test_error": data.exact_test_error(module), "test_loss": test_loss, "lr": sys_.eta}
    return writer.submit(sys_.run.append_checkpoint, {"fc.weight": w}, step=step, epoch=float(step),
                         samples_seen=step * sys_.P, metrics=metrics)


def run_experiment(exp: PerceptronExperiment, store: str | os.PathLike[str],
                   progress: Callable[[int, int], None] | None = None) -> ExperimentSummary:
    """Train every (seed, alpha) system of ``exp`` into ``store``; return the runs and timings.

    ``progress(step, active)`` is called after every step. Existing runs are
    never overwritten: a run id already in ``store`` is an error.
    """
    exp.validate()
    t0 = time.perf_counter()
    spec = exp.dataset_spec()
    data = plugins.get("datasets", "teacher").load(**{k: v for k, v in spec.items() if k != "name"})
    family = plugins.get("models", "perceptron")
    model_spec = family.spec(input_shape=(exp.N,), num_classes=2)
    module = family.build(model_spec).double()
    points = set(parse_schedule(exp.schedule, exp.steps))
    P_max = max(exp.P(a) for a in exp.alphas)
    for seed in exp.seeds:
        for alpha in exp.alphas:
            if (Path(store) / run_id(alpha, seed)).exists():
                raise ConfigError(f"{Path(store) / run_id(alpha, seed)} already exists; choose an empty --out")
    systems: list[_System] = []
    for seed in exp.seeds:
        idx = subset_indices(len(data.x_train), P_max, seed)  # nested: P's samples are the first P of these
        x = data.x_train[idx].double()
        y = data.y_train[idx].double() * 2 - 1
        for alpha in sorted(exp.alphas):
            P = exp.P(alpha)
            run = Run.create(store, run_id(alpha, seed), config=exp.run_config(P, seed), model_spec=model_spec,
                             dataset=spec, P=P, seed=seed)
            systems.append(_System(run, x[:P], y[:P], alpha, exp.lr0))
    active = list(systems)
    # one writer thread: the index fsyncs overlap the next steps' BLAS calls, in order per run
    writer = ThreadPoolExecutor(max_workers=1)
    pending: list[Future[Any]] = []
    try:
        for step in range(exp.steps + 1):
            still = []
            for s in active:
                m = s.margins()
                done = step == exp.steps or (step > 0 and s.lam() >= exp.lam_stop * s.alpha)
                if step in points or done:
                    pending.append(_checkpoint(s, step, m, module, data, writer))
                if done:
                    pending.append(writer.submit(s.run.set_status, "complete"))
                    continue
                s.step(m, exp.lr_safety, exp.max_rel_step)
                still.append(s)
            active = still
            if progress is not None:
                progress(step, len(active))
            if not active:
                break
        for fut in pending:
            fut.result()
    except BaseException:
        writer.shutdown(wait=True)
        for s in active:
            s.run.set_status("failed")
        raise
    writer.shutdown(wait=True)
    return ExperimentSummary([s.run.path for s in systems], {s.run.run_id: s.steps for s in systems},
                             time.perf_counter() - t0, asdict(exp))
