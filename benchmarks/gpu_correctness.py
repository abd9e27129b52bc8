"""GPU correctness checks (``python gpu_correctness.py [cuda|cpu]``; one line per check).

1. Training on cuda vs cpu, same seed (MLP on teacher-student data): the
   final weights and errors agree to float tolerance (not bitwise: cuBLAS
   and CPU BLAS sum in different orders).
2. Analysis on cuda vs cpu of the same checkpoints: every weight-based
   measure agrees to 1e-5 relative.
3. A seed ensemble on cuda vs separate cuda runs of the same seeds (2 epochs).
Last line: ``gpu_correctness=ok|FAILED``.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from normdyn.analyzers.analyze import analyze_store
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.ensemble import train_ensemble
from normdyn.trainer.loop import train

MEASURES = [
    "spectral_complexity",
    "spectral_complexity_dn",
    "spectral_product",
    "frobenius",
    "l1",
    "group21",
    "path_norm",
    "distance_from_init",
]


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max() / (b[k].double().abs().max() + 1e-30)) for k in b)


def main(acc: str) -> int:
    """``acc`` is the accelerator compared with the CPU (``cpu`` gives a dry run)."""
    tmp = Path(tempfile.mkdtemp())
    base = TrainConfig(
        model="mlp",
        dataset="teacher",
        P=2000,
        seed=0,
        epochs=20,
        schedule="log:8",
        lr=1e-3,
        model_params={"widths": [256, 256]},
        dataset_params={"N": 100, "n_train": 4000, "n_test": 2000},
        data_root=str(tmp / "data"),
        init_factor=0.5,
    )
    ok = True
    runs = {"cpu": train(replace(base, device="cpu", store=str(tmp / "ref")), progress=False)}
    runs[acc] = train(replace(base, device=acc, store=str(tmp / "acc")), progress=False)
    rel = max_rel(runs[acc].load_state_dict(-1), runs["cpu"].load_state_dict(-1))
    err = {d: runs[d].checkpoints()["test_error"][-1] for d in runs}
    good = rel < 1e-3 and abs(err[acc] - err["cpu"]) <= 0.01
    ok &= good
    print(
        f"train {acc} vs cpu: max_rel_weight_diff={rel:.2e} test_error cpu={err['cpu']:.4f} {acc}={err[acc]:.4f} "
        f"{'ok' if good else 'FAILED'}"
    )
    store = tmp / "acc"
    for dev in ("cpu", acc):
        summary = analyze_store(store, MEASURES, device=dev, force=True)
        vals = {m: runs[acc].read_measure(m).values.copy() for m in MEASURES}
        if dev == "cpu":
            ref = vals
    # relative to each measure's scale (distance_from_init is 0 at step 0)
    worst = max(float(np.nanmax(np.abs(vals[m] - ref[m])) / np.nanmax(np.abs(ref[m]))) for m in MEASURES)
    good = worst < 1e-5 and summary.ok
    ok &= good
    print(f"analyze {acc} vs cpu ({len(MEASURES)} measures): max_rel_diff={worst:.2e} {'ok' if good else 'FAILED'}")
    # short runs: Adam amplifies rounding on long trajectories (docs/training.md, Ensembles)
    seeds = [replace(base, device=acc, seed=s, epochs=2, schedule="log:2", store=str(tmp / "ens")) for s in range(4)]
    members = train_ensemble(seeds, progress=False)
    sep = [train(replace(c, store=str(tmp / "sep")), progress=False) for c in seeds]
    rel = max(max_rel(r.load_state_dict(-1), s.load_state_dict(-1)) for (r, _), s in zip(members, sep))
    loss = max(
        float(
            np.max(
                np.abs(r.checkpoints()["train_loss"] - s.checkpoints()["train_loss"]) / s.checkpoints()["train_loss"]
            )
        )
        for (r, _), s in zip(members, sep)
    )
    good = loss < 1e-4  # weights: Adam can amplify rounding in near-zero-gradient components
    ok &= good
    print(
        f"ensemble {acc} (S=4) vs separate {acc} runs: max_rel_train_loss_diff={loss:.2e} "
        f"max_rel_weight_diff={rel:.2e} {'ok' if good else 'FAILED'}"
    )
    print(f"gpu_correctness={'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
