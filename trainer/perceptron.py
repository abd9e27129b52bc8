"""The teacher-student perceptron experiment: every (seed, alpha) system
trained together by full-batch gradient descent, written as ordinary runs.

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
after ``steps`` steps; its last state is always checkpointed, and from then on
its weights are frozen.

Vectorisation (:class:`BatchedDescent`). The state of all S x A systems is
held in tensors: V, the gradients and the previous V and gradient as
(S, A, N), the step sizes as (S, A); the step rule above is applied to all of
them at once, masked to the systems still running, with one host
synchronisation per step (the stop test). The inputs are stored once per seed
as Z = y * X (S, P_max, N; y = +-1, so y (X v) = Z v exactly). Within a seed the
training sets are nested: rows [P_{a-1}, P_a) of Z ("block a") are used by the
alphas >= a, so the margins and gradients of all alphas need each block once,
and no product is done on rows a system does not own. Two kernels evaluate
these block products (``kernel``):

- ``blocked-bmm`` (default on CUDA): per block, one ``bmm`` over the seed axis
  for the margins of the alphas >= a and one for their gradient contribution:
  2 A kernel launches per step, whatever S.
- ``chunked-mv`` (default on CPU): the blocks cut into chunks of about
  ``CHUNK_BYTES``; per chunk and running system, the margins (``mv``), the
  residuals and the gradient contribution (``addmv``) while the chunk is in
  cache, so Z is read from memory once per step instead of twice per system.

Measured on the 2-core CPU (AMD EPYC, MKL, float64, N = 1000, alphas
0.5..16, 3 seeds; ``benchmarks/perceptron_bench.py``): reading Z is
memory-bound (one ``mv`` pass over a seed's 128 MB takes about 18 ms).
``chunked-mv`` takes 127 ms per step on the whole grid against 210 ms for the
former loop of one ``mv`` pair per system (1.55x), and 83 against 91 ms when
only the largest alpha runs. ``blocked-bmm`` takes 354 ms there: thin ``bmm``
and GEMM calls run slower than the same work as ``mv`` (MKL packs the large
operand); a padded variant (one ``bmm`` of all A columns over all P_max rows,
residuals masked) does 3x the arithmetic and took 558 ms against 138 ms.
On a GPU a step's memory traffic takes well under a millisecond, so the
fewest launches should win, hence ``blocked-bmm`` there; that choice is not
measured yet (no GPU here): ``perceptron_bench.py --device cuda`` times both.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from normdyn.core import plugins
from normdyn.core.errors import ConfigError
from normdyn.core.sampling import subset_indices
from normdyn.core.schedule import parse_schedule
from normdyn.core.store import Run

__all__ = [
    "PerceptronExperiment",
    "ExperimentSummary",
    "BatchedDescent",
    "KERNELS",
    "default_kernel",
    "run_experiment",
    "run_id",
]

#: The block-product kernels of :class:`BatchedDescent` (module docstring).
KERNELS = ("chunked-mv", "blocked-bmm")
#: Chunk size of ``chunked-mv``: a few MB stay in the last-level cache between the two passes.
CHUNK_BYTES = 4 << 20


@dataclass
class PerceptronExperiment:
    """The grid and the optimiser of one perceptron experiment."""

    N: int = 1000  # input dimension
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # loads alpha = P/N
    seeds: tuple[int, ...] = (0, 1, 2)  # seeds: P-subset of the pool per run
    inputs: str = "rademacher"  # rademacher (the paper) | gaussian
    teacher_seed: int = 0  # one teacher and pool for the whole experiment
    pool_factor: float = 2.0  # pool size n_train = pool_factor * max P
    steps: int = 20000  # at most this many gradient steps per system
    schedule: str = "log:60"  # checkpoint steps (normdyn.core.schedule)
    lr0: float = 0.01  # first step size on v (small: the early norms are resolved)
    lr_safety: float = 0.5  # s in eta_k <= s |dv| / |dg|
    max_rel_step: float = 0.05  # rho in eta_k <= rho |v_k| / |g_k|
    lam_stop: float = 6.0  # stop a system once lambda >= lam_stop * alpha
    n_test: int = 1000  # test samples (the test loss; the test error is exact)
    device: str = "cpu"  # where the systems are trained (cpu | cuda | cuda:K)
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
            raise ConfigError(
                f"alphas {list(self.alphas)} give P = {[self.P(a) for a in self.alphas]} at N={self.N}: "
                f"each P must be >= 1 and distinct; use a larger N"
            )
        if self.pool_factor < 1:
            raise ConfigError(f"pool_factor={self.pool_factor}: the pool must hold at least the largest P")
        if not (self.lr0 > 0 and 0 < self.lr_safety <= 1 and self.max_rel_step > 0 and self.lam_stop > 0):
            raise ConfigError(
                f"lr0={self.lr0}, lr_safety={self.lr_safety}, max_rel_step={self.max_rel_step}, "
                f"lam_stop={self.lam_stop}: need lr0 > 0, 0 < lr_safety <= 1, max_rel_step > 0, "
                f"lam_stop > 0"
            )
        parse_schedule(self.schedule, self.steps)
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"device={self.device!r}: use cpu, cuda or cuda:K") from None
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device={self.device!r}: use cpu, cuda or cuda:K")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device={self.device!r}: CUDA is not available here (torch.cuda.is_available() is False); use cpu"
            )

    def P(self, alpha: float) -> int:
        """The number of samples at load alpha: round(alpha N)."""
        return int(round(alpha * self.N))

    def dataset_spec(self) -> dict[str, Any]:
        """The ``teacher`` dataset spec shared by every run."""
        n_train = int(math.ceil(self.pool_factor * max(self.P(a) for a in self.alphas)))
        return {
            "name": "teacher",
            "N": self.N,
            "inputs": self.inputs,
            "n_train": n_train,
            "n_test": self.n_test,
            "teacher_seed": self.teacher_seed,
        }

    def run_config(self, P: int, seed: int) -> dict[str, Any]:
        """The stored training config of one run (P and seed included, as the trainer stores them)."""
        return {
            "experiment": "perceptron",
            "model": "perceptron",
            "dataset": "teacher",
            "P": P,
            "seed": seed,
            "N": self.N,
            "inputs": self.inputs,
            "teacher_seed": self.teacher_seed,
            "loss": "logistic",
            "optimizer": "gd-adaptive-mm",
            "batch_size": "full",
            "lr0": self.lr0,
            "lr_safety": self.lr_safety,
            "max_rel_step": self.max_rel_step,
            "steps": self.steps,
            "schedule": self.schedule,
            "lam_stop": self.lam_stop,
            "init": "zero",
            "device": self.device,
            **self.extra,
        }


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


def default_kernel(device: str | torch.device) -> str:
    """``chunked-mv`` on CPU, ``blocked-bmm`` elsewhere (measurements: module docstring)."""
    return "chunked-mv" if torch.device(device).type == "cpu" else "blocked-bmm"


class BatchedDescent:
    """S x A perceptrons trained together: seed s, system a uses rows [0, P[a]) of ``Z[s]``.

    ``Z`` (S, P_max, N) holds y_mu x_mu per row, ``P`` the increasing sample
    counts; the state lives on ``Z``'s device. A round is :meth:`products`
    (margins and gradients at the current V of the systems in ``running``),
    then :meth:`step` (the adaptive step of the module docstring for the
    systems in ``moving``; the others keep V, eta and theta unchanged).
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
        self.G = torch.zeros(
            S, A, N, dtype=dtype, device=device
        )  # sum_mu -y_mu x_mu sigma(-m_mu): P times the gradient
        self.M = torch.zeros(S, A, P_max, dtype=dtype, device=device)  # margins y_mu v.x_mu; row mu valid for mu < P[a]
        self.eta = torch.full((S, A), lr0, dtype=dtype, device=device)
        self.theta = torch.full((S, A), math.inf, dtype=dtype, device=device)
        self.v_prev: torch.Tensor | None = None
        self.g_prev: torch.Tensor | None = None
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
        if self.v_prev is not None and self.g_prev is not None:
            dg = torch.linalg.vector_norm(g - self.g_prev, dim=-1)
            dv = torch.linalg.vector_norm(self.V - self.v_prev, dim=-1)
            curvature = torch.where(dg > 0, self.safety * dv / dg, math.inf)
            g_norm = torch.linalg.vector_norm(g, dim=-1)
            relative = torch.where(g_norm > 0, self.rho * self.lam() / g_norm, math.inf)
            eta = torch.minimum(torch.minimum(torch.sqrt(1 + self.theta) * self.eta, curvature), relative)
            self.theta = torch.where(moving, eta / self.eta, self.theta)
            self.eta = torch.where(moving, eta, self.eta)
        self.v_prev, self.g_prev = self.V, g
        self.V = torch.where(moving.unsqueeze(-1), self.V - self.eta.unsqueeze(-1) * g, self.V)


def _checkpoint(
    run: Run,
    step: int,
    v: torch.Tensor,
    m: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    module: torch.nn.Module,
    data: Any,
    test: tuple[torch.Tensor, torch.Tensor],
    writer: ThreadPoolExecutor,
) -> Future[int]:
    """Metrics now (the shared module is not thread-safe), the store write in ``writer``.

    ``v`` is the system's weight vector on v's scale, ``m`` its P margins,
    ``y`` its P labels (+-1) and ``test`` the float64 test inputs and labels, all on the CPU.
    """
    w = (v * math.sqrt(len(v))).reshape(1, -1)
    module.load_state_dict({"fc.weight": w})
    with torch.no_grad():
        test_logit = module(test[0]).flatten()
        test_loss = (
            float(torch.nn.functional.binary_cross_entropy_with_logits(test_logit, test[1]))
            if len(test_logit)
            else math.nan
        )
    logit = y * m  # y = +-1
    metrics = {
        "train_error": float(((logit > 0) != (y > 0)).double().mean()),
        "train_loss": float(torch.nn.functional.softplus(-m).mean()),
        "test_error": data.exact_test_error(module),
        "test_loss": test_loss,
        "lr": lr,
    }
    return writer.submit(
        run.append_checkpoint,
        {"fc.weight": w},
        step=step,
        epoch=float(step),
        samples_seen=step * len(m),
        metrics=metrics,
    )


def run_experiment(
    exp: PerceptronExperiment,
    store: str | os.PathLike[str],
    progress: Callable[[int, int], None] | None = None,
    *,
    kernel: str | None = None,
) -> ExperimentSummary:
    """Train every (seed, alpha) system of ``exp`` into ``store``; return the runs and timings.

    ``progress(step, running)`` is called after every step. ``kernel`` picks
    the block products (:data:`KERNELS`; default :func:`default_kernel` of
    ``exp.device``): the results agree to rounding. Existing runs are never
    overwritten: a run id already in ``store`` is an error.
    """
    exp.validate()
    t0 = time.perf_counter()
    spec = exp.dataset_spec()
    data = plugins.get("datasets", "teacher").load(**{k: v for k, v in spec.items() if k != "name"})
    family = plugins.get("models", "perceptron")
    model_spec = family.spec(input_shape=(exp.N,), num_classes=2)
    module = family.build(model_spec).double()
    test = (data.x_test.double(), data.y_test.double())
    points = set(parse_schedule(exp.schedule, exp.steps))
    alphas = sorted(exp.alphas)
    Ps = [exp.P(a) for a in alphas]
    for seed in exp.seeds:
        for alpha in alphas:
            if (Path(store) / run_id(alpha, seed)).exists():
                raise ConfigError(f"{Path(store) / run_id(alpha, seed)} already exists; choose an empty --out")
    ys = []
    Z = torch.empty(len(exp.seeds), Ps[-1], exp.N, dtype=torch.float64)
    for s, seed in enumerate(exp.seeds):
        idx = subset_indices(len(data.x_train), Ps[-1], seed)  # nested: P's samples are the first P of these
        ys.append(data.y_train[idx].double() * 2 - 1)
        torch.mul(ys[s].unsqueeze(1), data.x_train[idx].double(), out=Z[s])  # y = +-1: exact
    runs = [
        [
            Run.create(
                store,
                run_id(alpha, seed),
                config=exp.run_config(P, seed),
                model_spec=model_spec,
                dataset=spec,
                P=P,
                seed=seed,
            )
            for alpha, P in zip(alphas, Ps)
        ]
        for seed in exp.seeds
    ]
    device = torch.device(exp.device)
    gd = BatchedDescent(
        Z.to(device),
        Ps,
        lr0=exp.lr0,
        safety=exp.lr_safety,
        rho=exp.max_rel_step,
        kernel=kernel or default_kernel(device),
    )
    del Z  # on a GPU, the host copy
    lam_stop = exp.lam_stop * torch.tensor(alphas, dtype=torch.float64, device=device)
    running = [[True] * len(alphas) for _ in exp.seeds]
    steps = [[0] * len(alphas) for _ in exp.seeds]
    # one writer thread: the index fsyncs overlap the next steps' products, in order per run
    writer = ThreadPoolExecutor(max_workers=1)
    pending: list[Future[Any]] = []
    try:
        for step in range(exp.steps + 1):
            gd.products(running)
            lam = gd.lam()
            done = torch.full_like(lam, step == exp.steps, dtype=torch.bool) | ((lam >= lam_stop) & (step > 0))
            lam_host, done_host = torch.stack((lam, done.to(lam.dtype))).cpu().tolist()  # the one synchronisation
            for s in range(len(exp.seeds)):
                for a in range(len(alphas)):
                    if not running[s][a]:
                        continue
                    if not math.isfinite(lam_host[s][a]):
                        raise ConfigError(f"{runs[s][a].run_id}: the weights became non-finite at step {step}")
                    if step in points or done_host[s][a]:
                        pending.append(
                            _checkpoint(
                                runs[s][a],
                                step,
                                gd.V[s, a].cpu(),
                                gd.M[s, a, : Ps[a]].cpu(),
                                ys[s][: Ps[a]],
                                float(gd.eta[s, a]),
                                module,
                                data,
                                test,
                                writer,
                            )
                        )
                    if done_host[s][a]:
                        pending.append(writer.submit(runs[s][a].set_status, "complete"))
                        running[s][a] = False
                    else:
                        steps[s][a] += 1
            n_running = sum(map(sum, running))
            if n_running:
                gd.step(torch.tensor(running, device=device))
            if progress is not None:
                progress(step, n_running)
            if not n_running:
                break
        for fut in pending:
            fut.result()
    except BaseException:
        writer.shutdown(wait=True)
        for s in range(len(exp.seeds)):
            for a in range(len(alphas)):
                if running[s][a]:
                    runs[s][a].set_status("failed")
        raise
    writer.shutdown(wait=True)
    flat = [(runs[s][a], steps[s][a]) for s in range(len(exp.seeds)) for a in range(len(alphas))]
    return ExperimentSummary(
        [r.path for r, _ in flat], {r.run_id: n for r, n in flat}, time.perf_counter() - t0, asdict(exp)
    )
