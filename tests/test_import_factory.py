"""`normdyn import --model-factory`: the user's own architecture, loaded strictly, every measure as on `.pt`.

For each model, checkpoints (random inits) are written as `{"state_dict": ...}` `.pt` files and as
sorted-key `.safetensors` files (what `safetensors.torch.save_file` writes), both imported with the same
factory; every measure that needs only weights or the model is then computed on both runs and compared.
On CPU, full-width resnet18 and vgg11_bn take minutes per checkpoint for the spectral and operator-norm
measures, so there they get one checkpoint and the cheap measures unless NORMDYN_ALL_MEASURES=1 (with
NORMDYN_TEST_DEVICE=cuda on a GPU machine); the ViT and the user's module get every measure always.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from normdyn.analyzers.analyze import analyze_store
from normdyn.analyzers.api import load_curves
from normdyn.core import plugins
from normdyn.core.checkpoint import CheckpointFile
from normdyn.core.cli import cli
from normdyn.core.store import Run

pytest.importorskip("torchvision")

#: measures computable without data (the data measures need a dataset the synthetic runs lack)
NO_DATA = sorted(n for n, m in plugins.registry("measures").items.items() if set(m.needs) <= {"weights", "model"})

VIT_KWARGS = {
    "image_size": 32,
    "patch_size": 8,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 32,
    "mlp_dim": 64,
    "num_classes": 10,
}
#: measures that take about a second per checkpoint even for full-width resnet18 / vgg11_bn on CPU
CHEAP = ["frobenius", "path_norm", "spectral_product"]
ALL = os.environ.get("NORMDYN_ALL_MEASURES") == "1"
DEVICE = os.environ.get("NORMDYN_TEST_DEVICE", "cpu")
MODELS = {
    "resnet18": ("torchvision.models:resnet18", {"num_classes": 10}),
    "vgg11_bn": ("torchvision.models:vgg11_bn", {"num_classes": 10}),
    "vit": ("torchvision.models:VisionTransformer", VIT_KWARGS),
}

USER_MODULE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(width * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))
"""


def _states(target: str, kwargs: dict, n: int = 2) -> list[dict[str, torch.Tensor]]:
    family = plugins.get("models", "factory")
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append({k: v.clone() for k, v in family.make(target, kwargs).state_dict().items()})
    return out


def _import(src: Path, store: Path, run_id: str, target: str, kwargs: dict, shape: str, *extra: str) -> str:
    args = ["import", str(src), "--store", str(store), "--run-id", run_id, "--model-factory", target]
    result = CliRunner().invoke(cli, [*args, "--model-kwargs", json.dumps(kwargs), "--input-shape", shape, *extra])
    assert result.exit_code == 0, result.output
    return result.output


def _compare(store: Path, a: str, b: str, measures: list[str]) -> dict[str, np.ndarray]:
    summary = analyze_store(store, measures, device=DEVICE)
    assert not summary.run_errors
    ca, cb = load_curves(Run(store / a)), load_curves(Run(store / b))
    assert set(ca) == set(cb)
    for name in set(ca) - {"step", "epoch", "train_error", "train_loss", "test_error", "test_loss"}:
        # the same weights in the same order: only float summation order may differ, far below 1e-6 relative
        np.testing.assert_allclose(ca[name], cb[name], rtol=1e-6, atol=0, equal_nan=True, err_msg=name)
    return ca


def _write(tmp_path: Path, states: list[dict[str, torch.Tensor]]) -> tuple[Path, Path]:
    pt, st = tmp_path / "pt", tmp_path / "st"
    pt.mkdir()
    st.mkdir()
    for i, sd in enumerate(states):
        torch.save({"state_dict": sd}, pt / f"ckpt_{10 * i}.pt")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(st / f"ckpt_{10 * i}.safetensors"))
    return pt, st


@pytest.mark.parametrize("model", sorted(MODELS))
def test_torchvision_models_measure_alike_from_pt_and_sorted_safetensors(tmp_path: Path, model: str) -> None:
    if model == "vgg11_bn" and not ALL:
        pytest.skip("vgg11_bn has 128M parameters (a 4096x25088 classifier): a minute on CPU; NORMDYN_ALL_MEASURES=1")
    target, kwargs = MODELS[model]
    big = model != "vit" and not ALL
    states = _states(target, kwargs, n=1 if big else 2)
    pt, st = _write(tmp_path, states)
    store = tmp_path / "store"
    assert (
        _import(pt, store, "pt", target, kwargs, "3,32,32")
        == f"{store / 'pt'}: {len(states)} imported, 0 already present, 0 failed\n"
    )
    _import(st, store, "st", target, kwargs, "3,32,32")
    run = Run(store / "st")
    assert run.model_spec["name"] == "factory" and run.model_spec["factory"] == target
    assert CheckpointFile(run.path / run.checkpoints()["file"][0]).keys() == list(states[0])  # the module's order
    for i, sd in enumerate(states):
        assert all(torch.equal(a, b) for a, b in zip(run.load_state_dict(i).values(), sd.values(), strict=True))
    curves = _compare(store, "pt", "st", CHEAP if big else NO_DATA)
    for name in ("spectral_complexity_dn", "spectral_complexity_op") if not big else ():
        assert np.isfinite(curves[name]).all(), name
    if model == "vit":  # attention is not a positively homogeneous network: path_norm refuses it by design
        assert np.isnan(curves["path_norm"]).all()
        assert "path_norm" in Run(store / "pt").read_measure("path_norm").errors[0]
    else:
        assert np.isfinite(curves["path_norm"]).all()


def test_user_module_in_a_file_with_wrapper_prefixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "import_factory_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(code))
    target, kwargs = "import_factory_models:TinyNet", {"width": 4, "num_classes": 3}
    states = _states(target, kwargs, n=3)
    lightning, plain = tmp_path / "lightning", tmp_path / "plain"
    lightning.mkdir()
    plain.mkdir()
    for i, sd in enumerate(states):
        wrapped = {f"model.module.{k}": v for k, v in sd.items()}  # a DDP module inside a LightningModule
        torch.save({"state_dict": wrapped, "global_step": 100 * i, "epoch": i}, lightning / f"epoch={i}.ckpt")
        torch.save(sd, plain / f"step_{100 * i}.pt")
    store = tmp_path / "store"
    out = _import(
        lightning, store, "l", target, kwargs, "1,8,8", "--strip-prefix", "model.", "--strip-prefix", "module."
    )
    assert out == f"steps from its global_step (3)\n{store / 'l'}: 3 imported, 0 already present, 0 failed\n"
    _import(plain, store, "p", target, kwargs, "1,8,8")
    assert list(Run(store / "l").checkpoints()["step"]) == [0, 100, 200]
    assert list(Run(store / "l").checkpoints()["epoch"]) == [0.0, 1.0, 2.0]
    curves = _compare(store, "l", "p", NO_DATA)
    assert all(math.isfinite(v) for v in curves["path_norm"])
    analyze = CliRunner().invoke(cli, ["analyze", str(store), "-m", "conv_operator_norm", "-q", "--force"])
    assert analyze.output == "2 run(s): 6 computed, 0 skipped, 0 failed\n"  # no flags: the spec rebuilds the model
