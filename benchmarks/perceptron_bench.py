"""The perceptron experiment's gradient descent: batched against one system at a time.

Both sides train the same S x A systems (``normdyn perceptron``'s default
grid: N = 1000, alpha = 0.5..16 x2, 3 seeds, the ``teacher`` data) from
v = 0 with the same adaptive step rule (trainer/perceptron.py) for a fixed
number of steps, every system running throughout (no lambda stop), and
without store writes (in the experiment those overlap in a writer thread on
both sides):

- ``loop``: the former implementation, kept here as the baseline: each
  system in turn, one ``torch.mv`` for its margins and one for its gradient
  on its own rows, the step rule in Python floats.
- ``batched``: :class:`normdyn.trainer.perceptron.BatchedDescent`, with each
  of its kernels (``chunked-mv``, ``blocked-bmm``), as ``train_perceptrons``
  drives it (products, lambda, one host synchronisation, step).

Each repeat runs every side once, in alternating order, so a change in the
load of a shared machine hits all sides alike; the speedups printed are the
medians of the per-repeat ratios. Two phases are timed: ``grid`` (all alphas, the start of an experiment) and
``tail`` (only the largest alpha, which runs alone for most of the steps of a
full experiment). For each: seconds per step, the speedup of every kernel
over the loop, and the largest relative difference of the final v between
the loop and the kernel (rounding, amplified by the step rule once the step
is large: see tests/test_perceptron_experiment.py).

Last line: ``perceptron_speedup=X``, the grid phase's median with the
device's default kernel (X > 1: batched is faster).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from machine import describe  # benchmarks/machine.py, beside this script

from normdyn.core import plugins
from normdyn.core.sampling import subset_indices
from normdyn.plugins.commands.perceptron_experiment import PerceptronExperiment
from normdyn.trainer.perceptron import KERNELS, BatchedDescent, default_kernel


def _data(exp: PerceptronExperiment, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per seed: the largest system's inputs x (P_max, N) and labels y (+-1), as the engine selects them."""
    data = plugins.get("datasets", "teacher").load(**exp.dataset_params())
    P_max = max(exp.P(a) for a in exp.alphas)
    xs, ys = [], []
    for seed in exp.seeds:
        idx = subset_indices(len(data.x_train), P_max, seed)
        xs.append(data.x_train[idx].double().to(device))
        ys.append((data.y_train[idx].double() * 2 - 1).to(device))
    return xs, ys


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _loop(
    exp: PerceptronExperiment, xs: list[torch.Tensor], ys: list[torch.Tensor], steps: int, device: str
) -> tuple[float, list[torch.Tensor]]:
    """The former per-system loop: seconds, final v of every system (seed-major, alpha ascending)."""
    systems = []
    for x, y in zip(xs, ys):
        for alpha in sorted(exp.alphas):
            P = exp.P(alpha)
            systems.append(
                {
                    "x": x[:P],
                    "y": y[:P],
                    "v": torch.zeros(exp.N, dtype=torch.float64, device=device),
                    "eta": exp.lr0,
                    "theta": math.inf,
                    "v_prev": None,
                    "g_prev": None,
                }
            )
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        for s in systems:
            lam = float(torch.linalg.vector_norm(s["v"]))
            m = s["y"] * torch.mv(s["x"], s["v"])
            g = torch.mv(s["x"].T, -s["y"] * torch.special.expit(-m)) / len(m)
            if s["v_prev"] is not None:
                dg = float(torch.linalg.vector_norm(g - s["g_prev"]))
                dv = float(torch.linalg.vector_norm(s["v"] - s["v_prev"]))
                curvature = exp.lr_safety * dv / dg if dg > 0 else math.inf
                g_norm = float(torch.linalg.vector_norm(g))
                relative = exp.max_rel_step * lam / g_norm if g_norm > 0 else math.inf
                eta = min(math.sqrt(1 + s["theta"]) * s["eta"], curvature, relative)
                s["theta"], s["eta"] = eta / s["eta"], eta
            s["v_prev"], s["g_prev"] = s["v"], g
            s["v"] = s["v"] - s["eta"] * g
    _sync(device)
    return time.perf_counter() - start, [s["v"] for s in systems]


def _batched(
    exp: PerceptronExperiment, xs: list[torch.Tensor], ys: list[torch.Tensor], steps: int, device: str, kernel: str
) -> tuple[float, list[torch.Tensor]]:
    """BatchedDescent as train_perceptrons drives it: seconds, final v of every system."""
    Z = torch.stack([y.unsqueeze(1) * x for x, y in zip(xs, ys)])
    gd = BatchedDescent(
        Z,
        [exp.P(a) for a in sorted(exp.alphas)],
        lr0=exp.lr0,
        safety=exp.lr_safety,
        rho=exp.max_rel_step,
        kernel=kernel,
    )
    running = [[True] * len(exp.alphas) for _ in exp.seeds]
    moving = torch.tensor(running, device=device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        gd.products(running)
        gd.lam().cpu()  # the engine's one synchronisation per step (the stop test)
        gd.step(moving)
    _sync(device)
    return time.perf_counter() - start, list(gd.V.reshape(-1, exp.N))


def _phase(name: str, exp: PerceptronExperiment, steps: int, repeats: int, device: str) -> dict[str, float]:
    """Time the loop and every kernel on ``exp``, order alternating per repeat; print; return median speedups."""
    xs, ys = _data(exp, device)
    sides: list[str] = ["loop", *KERNELS]
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    final: dict[str, list[torch.Tensor]] = {}
    for r in range(repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            t, v = _loop(exp, xs, ys, steps, device) if side == "loop" else _batched(exp, xs, ys, steps, device, side)
            seconds[side].append(t)
            final[side] = v
    print(f"{name}: {len(exp.seeds)} seeds x alphas {list(exp.alphas)}, N={exp.N}, {steps} steps x {repeats} repeats")
    print(f"  {'loop':<15} {statistics.median(seconds['loop']) / steps * 1e3:9.2f} ms/step")
    speedups = {}
    for kernel in KERNELS:
        speedups[kernel] = statistics.median(a / b for a, b in zip(seconds["loop"], seconds[kernel]))
        diff = max(
            float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a))
            for a, b in zip(final["loop"], final[kernel])
        )
        per_repeat = ", ".join(f"{a / b:.2f}" for a, b in zip(seconds["loop"], seconds[kernel]))
        print(
            f"  {kernel:<15} {statistics.median(seconds[kernel]) / steps * 1e3:9.2f} ms/step  speedup "
            f"{speedups[kernel]:5.2f} (per-repeat {per_repeat})"
            f"  max rel |v - v_loop| {diff:.1e}"
        )
    return speedups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--N", type=int, default=1000)
    parser.add_argument("--alphas", default="0.5,1,2,4,8,16", help="comma-separated loads")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="steps per repeat, phase and side")
    parser.add_argument("--repeats", type=int, default=3, help="repeats, the order of the sides alternating")
    args = parser.parse_args()
    print(describe(), flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    alphas = tuple(float(a) for a in args.alphas.split(","))
    exp = PerceptronExperiment(N=args.N, alphas=alphas, seeds=tuple(range(args.seeds)), device=args.device)
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, float64; no store writes"
    )
    grid = _phase("grid", exp, args.steps, args.repeats, args.device)
    _phase(
        "tail",
        PerceptronExperiment(N=args.N, alphas=(max(alphas),), seeds=exp.seeds, device=args.device),
        args.steps,
        args.repeats,
        args.device,
    )
    print(f"perceptron_speedup={grid[default_kernel(args.device)]:.2f}")


if __name__ == "__main__":
    main()
