"""The checkpoint layouts `normdyn import` detects, each written in its real format by the test.

Every layout holds the same two sets of weights of a small torchvision ViT (cheap enough for every
measure), is imported with the same factory, and must measure exactly like the plain `.pt` import.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from normdyn.analyzers.analyze import analyze_store
from normdyn.analyzers.api import load_curves
from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.store import Run

pytest.importorskip("torchvision")

TARGET = "torchvision.models:VisionTransformer"
KWARGS = {"image_size": 16, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
FACTORY = ["--model-factory", TARGET, "--model-kwargs", json.dumps(KWARGS), "--input-shape", "3,16,16"]
STEPS = (500, 1000)
NO_DATA = sorted(n for n, m in plugins.registry("measures").items.items() if set(m.needs) <= {"weights", "model"})


def _states() -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(len(STEPS)):
        torch.manual_seed(seed)
        out.append(dict(plugins.get("models", "factory").make(TARGET, KWARGS).state_dict()))
    return out


def _import(src: Path, store: Path, run_id: str, *extra: str) -> tuple[int, str]:
    args = ["import", str(src), "--store", str(store), "--run-id", run_id, *FACTORY, *extra]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def _same_as_pt(tmp_path: Path, src: Path, *extra: str) -> str:
    """Import ``src`` and the plain `.pt` reference; every measure must agree; return the import's output."""
    ref = tmp_path / "ref"
    ref.mkdir()
    for step, sd in zip(STEPS, _states(), strict=True):
        torch.save(sd, ref / f"ckpt_{step}.pt")
    store = tmp_path / "store"
    assert _import(ref, store, "ref")[0] == 0
    code, out = _import(src, store, "layout", *extra)
    assert code == 0, out
    analyze_store(store, NO_DATA)
    a, b = load_curves(Run(store / "ref")), load_curves(Run(store / "layout"))
    assert list(b["step"]) == list(STEPS)
    measured = sorted(set(a) - {"step", "epoch", "train_error", "train_loss", "test_error", "test_loss"})
    assert "spectral_complexity_dn" in measured  # order-dependent: the layout kept the module's order
    for name in measured:
        # identical tensors in identical order: the values agree to float rounding, far below 1e-6 relative
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=0, equal_nan=True, err_msg=name)
    return out


def _trainer_state(folder: Path, step: int) -> None:
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": step / 500}))


def test_hf_trainer_folders_with_model_safetensors(tmp_path: Path) -> None:
    out_dir = tmp_path / "hf"
    for step, sd in zip(STEPS, _states(), strict=True):
        folder = out_dir / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))  # sorted keys
        _trainer_state(folder, step)
    save_file({"final": torch.zeros(1)}, str(out_dir / "model.safetensors"))  # the Trainer's final model: not a step
    out = _same_as_pt(tmp_path, out_dir)
    assert (
        out
        == f"steps from its global_step (2)\n{tmp_path / 'store' / 'layout'}: 2 imported, 0 already present, 0 failed\n"
    )
    assert list(Run(tmp_path / "store" / "layout").checkpoints()["epoch"]) == [1.0, 2.0]


def test_pythia_step_folders_with_pytorch_model_bin(tmp_path: Path) -> None:
    out_dir = tmp_path / "pythia"
    for step, sd in zip(STEPS, _states(), strict=True):
        (out_dir / f"step{step}").mkdir(parents=True)
        torch.save(sd, out_dir / f"step{step}" / "pytorch_model.bin")
    out = _same_as_pt(tmp_path, out_dir)
    assert (
        out
        == f"steps from the folder name (2)\n{tmp_path / 'store' / 'layout'}: 2 imported, 0 already present, 0 failed\n"
    )


def write_shards(folder: Path, sd: dict[str, torch.Tensor], n: int = 2) -> dict[str, str]:
    """``sd`` as ``n`` safetensors shards plus ``model.safetensors.index.json``, as transformers writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(sd)
    weight_map = {}
    for i in range(n):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = keys[i::n]
        save_file({k: sd[k].contiguous() for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return weight_map


def test_sharded_step_folders_read_as_one_checkpoint(tmp_path: Path) -> None:
    out_dir = tmp_path / "sharded"
    for step, sd in zip(STEPS, _states(), strict=True):
        write_shards(out_dir / f"step{step}", sd)
    out = _same_as_pt(tmp_path, out_dir)
    assert out.endswith(": 2 imported, 0 already present, 0 failed\n")


def test_lightning_ckpt_with_prefix_and_global_step(tmp_path: Path) -> None:
    out_dir = tmp_path / "lightning"
    out_dir.mkdir()
    for i, (step, sd) in enumerate(zip(STEPS, _states(), strict=True)):
        ckpt = {
            "epoch": i,
            "global_step": step,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in sd.items()},
            "loops": {"fit_loop": {"state_dict": {}}},
            "callbacks": {},
            "optimizer_states": [{"state": {0: {"momentum_buffer": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]}],
            "lr_schedulers": [],
            "hyper_parameters": {"lr": 0.1, "width": 16},
        }
        torch.save(ckpt, out_dir / f"epoch={i}-step={step}.ckpt")
    out = _same_as_pt(tmp_path, out_dir, "--strip-prefix", "model.")
    assert (
        out
        == f"steps from its global_step (2)\n{tmp_path / 'store' / 'layout'}: 2 imported, 0 already present, 0 failed\n"
    )
    assert list(Run(tmp_path / "store" / "layout").checkpoints()["epoch"]) == [0.0, 1.0]


def test_a_steps_file_wins_over_metadata(tmp_path: Path) -> None:
    src = tmp_path / "lightning"
    src.mkdir()
    torch.save({"state_dict": _states()[0], "global_step": 7}, src / "last.ckpt")
    steps = tmp_path / "steps.txt"
    steps.write_text("last.ckpt 3\n")
    code, out = _import(src, tmp_path / "s", "r", "--steps", str(steps))
    assert code == 0
    assert (
        out
        == f"steps from the steps file {steps} (1)\n{tmp_path / 's' / 'r'}: 1 imported, 0 already present, 0 failed\n"
    )
    assert list(Run(tmp_path / "s" / "r").checkpoints()["step"]) == [3]
