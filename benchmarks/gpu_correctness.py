"""GPU correctness checks (``python gpu_correctness.py [cuda|cpu]``; one line per check).

1. Training on cuda vs cpu, same seed (MLP on teacher-student data): the
   final weights and errors agree to float tolerance (not bitwise: cuBLAS
   and CPU BLAS sum in different orders).
2. Analysis on cuda vs cpu of the same checkpoints: every weight-based
   measure agrees to 1e-5 relative.
3. A seed ensemble on cuda vs separate cuda runs of the same seeds (2 epochs).
4. The exact conv operator norms (conv_operator_norm, spectral_complexity_op)
   on cuda vs cpu over three drifting checkpoints of the resnet family's
   CIFAR-sized preset cut to its first stage (the float32 Krylov iteration, its float64
   certification, the warm starts): agree to 1e-6 relative (each side is within 5e-7
   of the exact value).
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
from normdyn.core import plugins
from normdyn.core.store import Run
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


def conv_check(acc: str, store: Path) -> bool:
    """Check 4: conv operator norms on ``acc`` vs cpu (module docstring); prints one line."""
    family = plugins.get("models", "resnet")
    spec = family.spec(input_shape=(3, 32, 32), num_classes=10, preset="resnet18")
    spec["layers"] = [d for d in spec["layers"] if d["name"].startswith(("stem", "stages.0."))]
    torch.manual_seed(0)
    state = family.build(spec).state_dict()
    run = Run.create(store, "resnet-stage1", config={}, model_spec=spec, dataset={}, P=1, seed=0)
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        state = {
            k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()
        }
        run.append_checkpoint(state, step=step, epoch=float(step))
    measures = ["conv_operator_norm", "spectral_complexity_op"]
    vals = {}
    for dev in ("cpu", acc):
        summary = analyze_store(store, measures, device=dev, force=True)
        vals[dev] = {m: run.read_measure(m).values.copy() for m in run.measures()}
    worst = max(float(np.max(np.abs(vals[acc][m] - vals["cpu"][m]) / np.abs(vals["cpu"][m]))) for m in vals["cpu"])
    good = worst < 1e-6 and summary.ok
    verdict = "ok" if good else "FAILED"
    print(f"conv operator norms {acc} vs cpu ({len(vals['cpu'])} records): max_rel_diff={worst:.2e} {verdict}")
    return good


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
    ok &= conv_check(acc, tmp / "conv")
    print(f"gpu_correctness={'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
