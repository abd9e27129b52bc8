"""The training loop: exact schedule points, metrics that match an
independent evaluation, nested P subsets, bitwise resume, binary/exact
objectives, init factor, and clear errors on bad input before training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import ConfigError, NormdynError, UnknownNameError
from normdyn.core.hookspecs import hookimpl
from normdyn.core.sampling import subset_indices
from normdyn.core.schedule import parse_schedule
from normdyn.core.store import Run
from normdyn.trainer import loop
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.loop import resume, train
from normdyn.trainer.setup import prepare


class Tiny:
    """64 train / 32 test 1x6x6 images, 3 classes from a fixed linear teacher."""

    name = "tiny"

    def load(self, *, root: Any = None, download: bool = False, n_train: int = 64, **params: Any) -> DatasetTensors:
        g = torch.Generator().manual_seed(123)
        x = torch.randn(n_train + 32, 1, 6, 6, generator=g)
        teacher = torch.randn(36, 3, generator=g)
        y = (x.flatten(1) @ teacher).argmax(1)
        return DatasetTensors(x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=3, input_shape=(1, 6, 6))


class TinyBinary:
    """Binary labels in {0, 1}, no test set, exact test error 0.25 whatever the model."""

    name = "tiny_binary"

    def load(self, *, root: Any = None, download: bool = False, **params: Any) -> DatasetTensors:
        g = torch.Generator().manual_seed(7)
        x = torch.randn(40, 5, generator=g)
        y = (x[:, 0] > 0).long()
        return DatasetTensors(x, y, x[:0], y[:0], num_classes=2, input_shape=(5,), exact_test_error=lambda model: 0.25)


class OneLogit:
    """A linear model with a single output and no bias."""

    name = "one_logit"

    def spec(self, *, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "layers": [
                {"name": "0", "kind": "linear", "weight": "0.weight", "bias": None, "in_channels": input_shape[0]}
            ],
        }

    def build(self, spec: dict[str, Any]) -> nn.Module:
        return nn.Sequential(nn.Linear(spec["input_shape"][0], 1, bias=False))


class _TestPlugin:
    @hookimpl
    def register_datasets(self, register: Any) -> None:
        register(Tiny())
        register(TinyBinary())

    @hookimpl
    def register_models(self, register: Any) -> None:
        register(OneLogit())


@pytest.fixture(autouse=True)
def tiny_plugin():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention
    plugins.register_plugin(_TestPlugin(), name="test-trainer-tiny")
    try:
        yield
    finally:
        plugins.unregister_plugin(name="test-trainer-tiny")
        torch.set_num_threads(threads)


def _config(tmp_path: Path, **kw: Any) -> TrainConfig:
    base = dict(
        model="mlp",
        dataset="tiny",
        P=40,
        seed=3,
        epochs=12,
        schedule="log:5",
        batch_size=16,
        model_params={"widths": [8]},
        store=str(tmp_path / "store"),
        data_root=None,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_schedule_points_are_saved_exactly(tmp_path: Path) -> None:
    run = train(_config(tmp_path), progress=False)
    table = run.checkpoints()
    per_epoch = 3  # ceil(40 / 16)
    epochs = parse_schedule("log:5", 12)
    assert epochs == [0, 1, 2, 4, 7, 12]
    assert table["step"].tolist() == [e * per_epoch for e in epochs]
    assert table["epoch"].tolist() == [float(e) for e in epochs]
    assert table["samples_seen"].tolist() == [e * 40 for e in epochs]
    assert run.status == "complete"
    assert sorted(p.name for p in (run.path / "ckpt").iterdir()) == [
        f"step-{e * per_epoch:010d}.safetensors" for e in epochs
    ]


def test_metrics_match_an_independent_evaluation(tmp_path: Path) -> None:
    run = train(_config(tmp_path), progress=False)
    data = Tiny().load()
    idx = subset_indices(64, 40, 3)
    spec = run.model_spec
    table = run.checkpoints()
    for i in (0, 3, len(table["step"]) - 1):
        model = plugins.get("models", spec["name"]).build(spec)
        model.load_state_dict(run.load_state_dict(i))
        model.eval()
        with torch.no_grad():
            out_train, out_test = model(data.x_train[idx]), model(data.x_test)
        assert table["train_error"][i] == pytest.approx(
            (out_train.argmax(1) != data.y_train[idx]).float().mean().item()
        )
        assert table["train_loss"][i] == pytest.approx(F.cross_entropy(out_train, data.y_train[idx]).item(), rel=1e-5)
        assert table["test_error"][i] == pytest.approx((out_test.argmax(1) != data.y_test).float().mean().item())
        assert table["test_loss"][i] == pytest.approx(F.cross_entropy(out_test, data.y_test).item(), rel=1e-5)
    assert table["train_loss"][-1] < table["train_loss"][0]


def test_training_uses_the_nested_P_subsets(tmp_path: Path) -> None:
    data = Tiny().load()
    small = prepare(_config(tmp_path, P=20))
    large = prepare(_config(tmp_path, P=50))
    assert torch.equal(small.x_train, data.x_train[subset_indices(64, 20, 3)])
    assert torch.equal(large.x_train[:20], small.x_train)  # the P=50 set starts with the P=20 set
    rows = {tuple(r.tolist()) for r in large.x_train.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in small.x_train.flatten(1))


def _final_weights(run: Run) -> dict[str, torch.Tensor]:
    return run.load_state_dict(-1)


@pytest.mark.parametrize("status_after_crash", ["failed", "running"])
def test_resume_is_bitwise_equal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status_after_crash: str) -> None:
    # dropout (global RNG), batches that do not divide P, points in mid-epoch (steps schedule)
    kw = dict(
        model="cnn",
        steps=14,
        epochs=None,
        schedule="linear:3",
        batch_size=6,
        P=20,
        optimizer="adam",
        model_params={"conv_channels": [2, 4], "hidden": [8], "dropout": 0.5},
    )
    whole = train(_config(tmp_path / "a", **kw), progress=False)

    calls = {"n": 0}
    real = loop.measure_point

    def crash_on_third(t: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(t)

    monkeypatch.setattr(loop, "measure_point", crash_on_third)
    if status_after_crash == "running":  # a SIGKILL leaves the index as it was: status running
        monkeypatch.setattr(Run, "set_status", lambda self, status: None)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path / "b", **kw), progress=False)
    monkeypatch.undo()
    broken = Run(next((tmp_path / "b" / "store").iterdir()))
    assert broken.status == status_after_crash
    assert broken.checkpoints()["step"].tolist() == [0, 3]

    resumed = resume(broken.path, progress=False)
    assert resumed.status == "complete"
    a, b = whole.checkpoints(), resumed.checkpoints()
    assert b["step"].tolist() == a["step"].tolist() == [0, 3, 6, 9, 12]
    for col in ("train_error", "train_loss", "test_error", "test_loss", "samples_seen"):
        assert b[col].tolist() == a[col].tolist()
    wa, wb = _final_weights(whole), _final_weights(resumed)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_of_a_complete_run_changes_nothing(tmp_path: Path) -> None:
    run = train(_config(tmp_path, epochs=3, schedule="log:2"), progress=False)
    before = run.checkpoints()["sha256"].tolist()
    assert resume(run.path, progress=False).checkpoints()["sha256"].tolist() == before


def test_single_logit_uses_bce_and_exact_test_error(tmp_path: Path) -> None:
    run = train(
        _config(
            tmp_path,
            model="one_logit",
            dataset="tiny_binary",
            P=40,
            model_params={},
            batch_size="full",
            optimizer="sgd",
            momentum=0.0,
            lr=0.5,
            epochs=4,
            schedule="log:2",
        ),
        progress=False,
    )
    table = run.checkpoints()
    data = TinyBinary().load()
    idx = subset_indices(40, 40, 3)
    w = run.load_state_dict(-1)["0.weight"]
    logit = (data.x_train[idx] @ w.T).reshape(-1)
    y = data.y_train[idx]
    assert table["train_loss"][-1] == pytest.approx(
        F.binary_cross_entropy_with_logits(logit, y.float()).item(), rel=1e-5
    )
    assert table["train_error"][-1] == pytest.approx(((logit > 0).long() != y).float().mean().item())
    assert table["test_error"].tolist() == [0.25, 0.25, 0.25]
    assert np.isnan(table["test_loss"]).all()


def test_init_factor_scales_every_weight_matrix_including_attention_in_proj(tmp_path: Path) -> None:
    kw = dict(model="vit", model_params={"patch": 3, "dim": 8, "depth": 1, "heads": 2}, epochs=1, schedule="log:1")
    plain = prepare(_config(tmp_path, **kw)).model.state_dict()
    scaled = prepare(_config(tmp_path, init_factor=0.5, **kw)).model.state_dict()
    matrices = {
        "patch_embed.weight",
        "blocks.0.attn.in_proj_weight",
        "blocks.0.attn.out_proj.weight",
        "blocks.0.mlp.0.weight",
        "blocks.0.mlp.2.weight",
        "head.weight",
    }
    for key, value in plain.items():
        expected = value * 0.5 if key in matrices else value
        assert torch.equal(scaled[key], expected), key


def test_run_stores_config_specs_and_a_deterministic_id(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=2, schedule="log:2")
    run = train(config, progress=False)
    assert run.path.name == config.run_id() == TrainConfig(**json.loads(json.dumps(run.config))).run_id()
    assert run.dataset == {"name": "tiny", "root": None}
    assert run.model_spec["name"] == "mlp" and run.model_spec["widths"] == [8]
    assert [layer["weight"] for layer in run.model_spec["layers"]] == ["net.1.weight", "net.3.weight"]
    with pytest.raises(NormdynError, match="already exists.*--resume"):
        train(config, progress=False)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"model": "nope"}, UnknownNameError, "unknown model 'nope'; available: .*cnn.*mlp"),
        ({"dataset": "nope"}, UnknownNameError, "unknown dataset 'nope'; available: .*mnist.*tiny"),
        ({"P": 65}, ConfigError, "P=65 is larger than the training set \\(64 samples\\)"),
        ({"lr": -0.1}, ConfigError, "lr=-0.1: must be a positive number"),
        ({"schedule": "log:x"}, ConfigError, "schedule 'log:x'.*not an integer list"),
        ({"schedule": "log:50"}, ConfigError, "asks for 50 distinct points but the run has only 12"),
        ({"epochs": None}, ConfigError, "set exactly one of epochs and steps"),
        ({"batch_size": "half"}, ConfigError, "batch_size='half'"),
    ],
)
def test_bad_input_fails_before_training(tmp_path: Path, changes: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        train(_config(tmp_path, **changes), progress=False)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_cli_train_prints_the_run_directory_and_resume_rejects_new_values(tmp_path: Path) -> None:
    store = tmp_path / "store"
    args = [
        "train",
        "--model",
        "mlp",
        "--dataset",
        "tiny",
        "--P",
        "16",
        "--seed",
        "1",
        "--epochs",
        "2",
        "--schedule",
        "log:2",
        "--store",
        str(store),
        "--device",
        "cpu",
        "--quiet",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = store.iterdir()
    assert result.stdout == f"{run_dir}\n"
    again = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--quiet"])
    assert again.exit_code == 0 and again.stdout == f"{run_dir}\n"
    bad = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--lr", "0.1"])
    assert bad.exit_code == 2
    assert "only --device and --data-root may be given with it (got --lr)" in bad.output


def test_cli_config_file_unknown_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "mlp"\ndataset = "tiny"\nepochs = 2\nlearning_rate = 0.1\n')
    result = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--store", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert f"Error: {cfg}: unknown config key(s) learning_rate; known keys: " in result.output
    assert not (tmp_path / "s").exists()
