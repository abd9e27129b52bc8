"""Seed ensembles: S seeds trained together (torch.func) against one after another.

Both sides are normdyn's real code paths, end to end, into temporary stores:
``train(config)`` for each seed in turn, and ``train_ensemble(configs)`` for
all seeds at once (same configs, same schedule points, checkpoints,
evaluations and resume states). Repeated with the order alternating; the
speedup of each repeat is printed, and the median of them last.

Models:
- ``mlp`` (CPU default): the MNIST-1D MLP (widths 100-100, as in the
  MNIST-1D paper) on MNIST-1D generated locally (needs the mnist1d package),
  P = 4000, batch 128, Adam.
- ``cnn``: the paper's MNIST CNN (standard preset) on MNIST-shaped
  synthetic images (benchmarks/train_bench.py's SyntheticMNIST: no download,
  no mnist1d), P = 2048, batch 128, Adam.

Run length: 30 epochs with ``log:5`` (6 points, 160 steps per point for
the MLP). The writes at a point (checkpoint, index, resume state) are the
same work on both sides, so the speedup falls as points get denser: 10
epochs (53 steps per point) measured 1.79 where 30 epochs measured 2.43 on
the idle 2-core CPU. The demo saves a point every 97 steps, the paper's
CNN-MNIST runs (P = 6000, 1000 epochs, log:50) every 920.

It also prints, for the first repeat, each seed's largest relative weight
difference between its ensemble run and its separate run (float32 rounding:
see docs/training.md).

Last line: ``ensemble_speedup=X`` (the median over repeats; X > 1: the ensemble is faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from machine import describe  # benchmarks/machine.py, beside this script

from normdyn.core import plugins
from normdyn.core.hookspecs import hookimpl
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.ensemble import train_ensemble
from normdyn.trainer.loop import train
from normdyn.trainer.setup import load_data


def _configs(args: argparse.Namespace, data_root: str | None) -> list[TrainConfig]:
    if args.model == "mlp":
        base = TrainConfig(
            model="mlp", dataset="mnist1d", P=4000, model_params={"widths": [100, 100]}, data_root=data_root
        )
    else:
        base = TrainConfig(model="cnn", dataset="bench_mnist", P=2048, data_root=None)
    base = replace(
        base,
        epochs=args.epochs,
        schedule=f"log:{args.points}",
        batch_size=128,
        optimizer="adam",
        lr=1e-3,
        device=args.device,
        eval_batch_size=args.eval_batch_size,
    )
    return [replace(base, seed=s) for s in range(args.seeds)]


def _register_synthetic_mnist(n_train: int, n_test: int) -> None:
    from train_bench import SyntheticMNIST  # benchmarks/ is on sys.path when this file is run

    source = SyntheticMNIST(n_train, n_test)

    class Plugin:
        @hookimpl
        def register_datasets(self, register: Any) -> None:
            register(source)

    plugins.register_plugin(Plugin(), name="bench-mnist")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _sequential(configs: list[TrainConfig], store: Path) -> tuple[float, list[dict[str, torch.Tensor]]]:
    _sync(configs[0].device)
    start = time.perf_counter()
    runs = [train(replace(c, store=str(store)), progress=False) for c in configs]
    _sync(configs[0].device)
    return time.perf_counter() - start, [r.load_state_dict(-1) for r in runs]


def _ensemble(configs: list[TrainConfig], store: Path) -> tuple[float, list[dict[str, torch.Tensor]]]:
    _sync(configs[0].device)
    start = time.perf_counter()
    runs = train_ensemble([replace(c, store=str(store), ensemble=True) for c in configs], progress=False)
    _sync(configs[0].device)
    return time.perf_counter() - start, [r.load_state_dict(-1) for r, _ in runs]


def _max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--seeds", type=int, default=8, help="ensemble size S")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30)")
    ap.add_argument("--points", type=int, default=5, help="log:K schedule points per run (over epochs)")
    ap.add_argument("--eval-batch-size", type=int, default=2048)
    ap.add_argument("--test-size", type=int, default=2000, help="cnn: synthetic test images")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    print(describe(), flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.epochs = args.epochs or 30

    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "cnn":
            _register_synthetic_mnist(4096, args.test_size)
        configs = _configs(args, data_root=str(Path(tmp) / "data"))
        load_data(configs[0])  # MNIST-1D is generated and cached here, outside the timings
        steps = configs[0].epochs * -(-configs[0].P // 128)  # type: ignore[operator]
        print(
            f"device={args.device} torch_threads={torch.get_num_threads()} model={args.model} S={args.seeds} "
            f"P={configs[0].P} batch=128 epochs={args.epochs} steps/seed={steps} schedule=log:{args.points} "
            f"({steps // args.points} steps per point)"
        )
        # One-time costs outside the timings, for both sides: the optimizer's first construction imports
        # torch._dynamo (seconds on this CPU, paid by whichever side ran first), the CUDA context, cuDNN.
        _ensemble([replace(c, epochs=1, schedule="log:1") for c in configs[:2]], Path(tmp) / "warm-e")
        _sequential([replace(c, epochs=1, schedule="log:1") for c in configs[:1]], Path(tmp) / "warm-s")
        ratios = []
        for r in range(args.repeats):
            order = [_sequential, _ensemble] if r % 2 == 0 else [_ensemble, _sequential]
            timed = {fn.__name__: fn(configs, Path(tmp) / f"{fn.__name__}-{r}") for fn in order}
            (t_seq, w_seq), (t_ens, w_ens) = timed["_sequential"], timed["_ensemble"]
            ratios.append(t_seq / t_ens)
            print(
                f"repeat {r}: one after another {t_seq:.2f} s ({args.seeds * steps / t_seq:.0f} seed-steps/s), "
                f"ensemble {t_ens:.2f} s ({args.seeds * steps / t_ens:.0f} seed-steps/s), speedup {ratios[-1]:.2f}"
            )
            if r == 0:
                diffs = [_max_rel(a, b) for a, b in zip(w_seq, w_ens)]
                print(
                    "max relative weight difference per seed (ensemble vs separate): "
                    + " ".join(f"{d:.1e}" for d in diffs)
                )
        print(f"speedup min {min(ratios):.2f} median {statistics.median(ratios):.2f} max {max(ratios):.2f}")
        print(f"ensemble_speedup={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
