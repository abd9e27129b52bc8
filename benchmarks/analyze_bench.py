"""Analysis speed: normdyn's spectral_complexity over a run vs full SVDs vs reading the bytes.

Writes one run of the paper's CIFAR-10 CNN (conv 32-64-128, FC 512 -> 10,
16.9M parameters) with ``--checkpoints`` checkpoints whose weights drift
slightly, as a training run's do: each layer is its initialisation (PyTorch's
default times the paper's init factor 0.05) plus a low-rank component that
grows like log(step) to the size of a default-initialised layer (trained
layers develop a few outlying singular values) plus small noise. Then, side by side in one process:

- read:   the time to merely read every checkpoint's bytes (the I/O floor);
- read+sha256: reading and hashing them, the floor of a verified read (every
  read path checks each checkpoint's sha256 against the index); also printed
  (not in the ratios) into one reused buffer, the floor of normdyn's reads,
  which reuse theirs;
- normdyn: ``normdyn.analyzers.analyze_store(..., ["spectral_complexity"])``
  over all checkpoints (reading, computing, storing in run.h5);
- svd:    the reference approach, ``torch.linalg.svdvals`` of every layer of
  every checkpoint (reshaped kernels, as deep_norm does), then Bartlett's formula.

Last line: ``ratio_vs_svd=X ratio_vs_read=Y ratio_vs_verified_read=V max_rel_err=Z``
with X = t_svd / t_normdyn, Y = t_normdyn / t_read, V = t_normdyn / t_read+sha256
and Z the largest relative difference between the two spectral complexities
over all checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe  # benchmarks/machine.py, beside this script
from safetensors.torch import load_file

from normdyn.analyzers.api import analyze_store
from normdyn.core import plugins
from normdyn.core.store import Run
from normdyn.plugins.measures.spectral import bartlett


def write_run(store: Path, checkpoints: int, drift: float, seed: int, init_factor: float) -> Run:
    """A run of the paper's CIFAR-10 CNN whose weights drift slightly from checkpoint to checkpoint."""
    family = plugins.get("models", "cnn")
    spec = family.spec(input_shape=(3, 32, 32), num_classes=10)
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in family.build(spec).state_dict().items()}
    for layer in spec["layers"]:  # the paper's small initialisation: weights (not biases) times the factor
        state[layer["weight"]] *= init_factor
    gen = torch.Generator().manual_seed(seed + 1)
    directions = {}
    for layer in spec["layers"]:
        w = state[layer["weight"]]
        rows, cols = w.shape[0], w[0].numel()
        u = torch.randn(rows, 4, generator=gen)
        v = torch.randn(cols, 4, generator=gen)
        strength = (
            torch.tensor([4.0, 2.5, 1.6, 1.2])
            * float(w.std())
            / init_factor
            * math.sqrt(max(rows, cols))
            / math.sqrt(rows * cols)
        )
        directions[layer["weight"]] = ((u * strength) @ v.T).reshape(w.shape)
    run = Run.create(
        store,
        "cnn-cifar10",
        config={"benchmark": "analyze_bench"},
        model_spec=spec,
        dataset={"name": "cifar10"},
        P=50000,
        seed=seed,
    )
    steps = np.unique(np.round(np.logspace(0, 4, checkpoints - 1)).astype(int))
    steps = [0, *steps.tolist()]
    while len(steps) < checkpoints:
        steps.append(steps[-1] + 1)
    for i, step in enumerate(steps[:checkpoints]):
        grow = math.log1p(step) / math.log1p(steps[checkpoints - 1])
        tensors = {}
        for k, v in state.items():
            noise = drift * float(v.std()) * torch.randn(v.shape, generator=gen) if v.is_floating_point() else 0
            state[k] = v + noise
            tensors[k] = state[k] + grow * directions[k] if k in directions else state[k]
        run.append_checkpoint(tensors, step=step, epoch=float(i), metrics={"test_error": 0.9 - 0.5 * grow})
    run.set_status("complete")
    return run


def time_read(run: Run, *, hashed: bool = False, reuse: bool = False) -> float:
    """Seconds to read every checkpoint file's bytes (and, with ``hashed``, their sha256), each into a
    fresh buffer or, with ``reuse``, all into one (no page faults after the first)."""
    files = [run.path / f for f in run.checkpoints()["file"]]
    start = time.perf_counter()
    shared = bytearray(max(path.stat().st_size for path in files)) if reuse else None
    for path in files:
        size = path.stat().st_size
        buf = bytearray(size) if shared is None else memoryview(shared)[:size]
        with open(path, "rb") as fh:
            fh.readinto(buf)
        if hashed:
            hashlib.sha256(buf).hexdigest()
    return time.perf_counter() - start


def reference_values(run: Run, device: str) -> tuple[list[float], float]:
    """Bartlett's spectral complexity by full svdvals of every layer of every checkpoint, and seconds."""
    layers = run.model_spec["layers"]
    values = []
    start = time.perf_counter()
    for f in run.checkpoints()["file"]:
        sd = load_file(str(run.path / f), device=device)
        sigma, rows21 = [], []
        for layer in layers:
            w = sd[layer["weight"]]
            m = w.reshape(w.shape[0], -1)
            sigma.append(float(torch.linalg.svdvals(m)[0]))
            rows21.append(float(torch.linalg.vector_norm(m, dim=1).double().sum()))
        values.append(bartlett(sigma, rows21))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return values, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=40, help="Checkpoints in the run (default 40).")
    parser.add_argument(
        "--drift", type=float, default=1e-3, help="Noise per checkpoint, relative to each tensor's std."
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-factor",
        type=float,
        default=0.05,
        help="Initial weights times this (the paper's small init, 0.05; 1 = PyTorch's default init).",
    )
    parser.add_argument("--keep", type=Path, default=None, help="Write the store here and keep it.")
    args = parser.parse_args()
    print(describe(), flush=True)
    store = args.keep or Path(tempfile.mkdtemp(prefix="normdyn-analyze-bench-"))
    try:
        t0 = time.perf_counter()
        run = write_run(store, args.checkpoints, args.drift, args.seed, args.init_factor)
        first = run.checkpoint(0, verify=False)  # the header is enough to count parameters
        nparams = sum(int(np.prod(first.shape(k))) for k in first.keys())
        print(f"wrote {len(run)} checkpoints of {nparams / 1e6:.1f}M parameters in {time.perf_counter() - t0:.1f}s")
        time_read(run)  # warm the page cache: all three contenders then read from memory
        t_read = time_read(run)
        print(f"read bytes:       {t_read:.2f}s")
        t_verified = time_read(run, hashed=True)
        print(f"read + sha256:    {t_verified:.2f}s")
        # the floor of normdyn's own reads, which reuse their buffers (core.checkpoint.ReadBuffers)
        print(f"read + sha256 into one reused buffer: {time_read(run, hashed=True, reuse=True):.2f}s")
        start = time.perf_counter()
        summary = analyze_store(store, ["spectral_complexity"], device=args.device)
        t_nd = time.perf_counter() - start
        print(f"normdyn analyze:  {t_nd:.2f}s ({summary.line()})")
        ref, t_svd = reference_values(run, args.device)
        print(f"full svdvals:     {t_svd:.2f}s")
        ours = run.read_measure("spectral_complexity").values
        err = max(abs(a - b) / abs(b) for a, b in zip(ours, ref))
        print(
            f"ratio_vs_svd={t_svd / t_nd:.2f} ratio_vs_read={t_nd / t_read:.2f} "
            f"ratio_vs_verified_read={t_nd / t_verified:.2f} max_rel_err={err:.2e}"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
