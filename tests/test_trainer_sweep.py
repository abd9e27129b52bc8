"""Sweeps: grid expansion, skip/resume on re-run, CLI output, example configs."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import ConfigError
from normdyn.core.hookspecs import hookimpl
from normdyn.core.store import Run
from normdyn.trainer.config import read_toml
from normdyn.trainer.sweep import expand_grid, run_sweep_task, sweep_tasks

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class Blobs:
    """48 train / 16 test 4-d points, 2 classes."""

    name = "blobs"

    def load(self, *, root: Any = None, download: bool = False, **params: Any) -> DatasetTensors:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long()
        return DatasetTensors(x[:48], y[:48], x[48:], y[48:], num_classes=2, input_shape=(4,))


class _Plugin:
    @hookimpl
    def register_datasets(self, register: Any) -> None:
        register(Blobs())


@pytest.fixture(autouse=True)
def blobs_plugin():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plugins.register_plugin(_Plugin(), name="test-sweep-blobs")
    try:
        yield
    finally:
        plugins.unregister_plugin(name="test-sweep-blobs")
        torch.set_num_threads(threads)


SWEEP = """
[train]
model = "mlp"
dataset = "blobs"
epochs = 3
schedule = "log:2"
batch_size = 8
data_root = "unused"
device = "cpu"

[train.model_params]
widths = [4]

[sweep]
P = [16, 32]
seed = [0, 1]
"""


def test_grid_is_the_product_of_the_axes_in_file_order() -> None:
    doc = {
        "train": {"model": "mlp", "dataset": "blobs", "epochs": 2, "schedule": "log:2"},
        "sweep": {"P": [8, 16], "lr": [0.1, 0.01], "model_params.widths": [[3], [5]]},
    }
    configs = expand_grid(doc)
    assert [(c.P, c.lr, c.model_params["widths"]) for c in configs] == [
        (P, lr, w) for P in (8, 16) for lr in (0.1, 0.01) for w in ([3], [5])
    ]
    assert len({c.run_id() for c in configs}) == 8


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"train": {"epochs": 2}, "sweep": {"P": 8}}, "sweep axis 'P' must be a non-empty list, got 8"),
        ({"train": {"epochs": 2}, "sweep": {"rate": [1]}}, "unknown config key\\(s\\) rate"),
        ({"train": {"epochs": 2}, "grid": {}}, "unknown table\\(s\\) grid"),
        ({"train": {"epochs": 2, "schedule": "log:2", "model": "nope"}, "sweep": {"P": [8]}}, "unknown model 'nope'"),
        ({"train": {"epochs": 2, "schedule": "log:2"}, "sweep": {"seed": [1, 1]}}, "repeats a configuration"),
    ],
)
def test_bad_sweep_files_fail_before_any_run(doc: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        expand_grid(doc, source="s.toml")


def test_sweep_trains_then_skips_then_resumes(tmp_path: Path) -> None:
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(SWEEP)
    store = tmp_path / "store"
    first = CliRunner().invoke(cli, ["sweep", str(cfg), "--store", str(store), "--quiet"])
    assert first.exit_code == 0, first.output
    runs = sorted(p for p in store.iterdir())
    assert len(runs) == 4 and all(Run(p).status == "complete" for p in runs)
    assert sorted(first.stdout.splitlines()[:4]) == sorted(f"trained  {p}" for p in runs)
    assert first.stdout.splitlines()[-1] == "4 runs: 4 trained, 0 resumed, 0 skipped, 0 failed"
    assert sorted((Run(p).P, Run(p).seed) for p in runs) == [(16, 0), (16, 1), (32, 0), (32, 1)]

    Run(runs[0]).set_status("failed")
    again = CliRunner().invoke(cli, ["sweep", str(cfg), "--store", str(store), "--quiet"])
    assert again.exit_code == 0, again.output
    assert f"resumed  {runs[0]}" in again.stdout.splitlines()
    assert again.stdout.splitlines()[-1] == "4 runs: 0 trained, 1 resumed, 3 skipped, 0 failed"

    dry = CliRunner().invoke(cli, ["sweep", str(cfg), "--store", str(store), "--dry-run"])
    assert sorted(dry.stdout.splitlines()) == sorted(f"complete  {p}" for p in runs)


def test_a_failing_run_is_reported_and_the_rest_continue(tmp_path: Path) -> None:
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(SWEEP.replace("P = [16, 32]", "P = [16, 64]"))  # 64 > 48 samples
    result = CliRunner().invoke(cli, ["sweep", str(cfg), "--store", str(tmp_path / "store"), "--quiet"])
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == "4 runs: 2 trained, 0 resumed, 0 skipped, 2 failed"
    assert "P=64 is larger than the training set (48 samples)" in result.stderr


def test_sweep_tasks_are_plain_picklable_and_idempotent(tmp_path: Path) -> None:
    configs = expand_grid(read_toml_text(tmp_path, SWEEP))[:1]
    (task,) = sweep_tasks(configs, store=str(tmp_path / "store"), progress=False)
    assert pickle.loads(pickle.dumps(task)) == task
    assert run_sweep_task(task)["action"] == "trained"
    assert run_sweep_task(task)["action"] == "skipped"


def read_toml_text(tmp_path: Path, text: str) -> dict[str, Any]:
    path = tmp_path / "x.toml"
    path.write_text(text)
    return read_toml(path)


@pytest.mark.parametrize("name", ["cnn_mnist", "cnn_cifar10", "resnet_cifar10", "vit_cifar10", "mnist1d_sweep"])
def test_example_configs_expand(name: str) -> None:
    configs = expand_grid(read_toml(EXAMPLES / f"{name}.toml"), source=name)
    assert len(configs) >= 5 and all(c.schedule == "log:50" for c in configs)
    assert len({c.P for c in configs}) >= 5 and len({c.seed for c in configs}) == 5


def test_perceptron_example_is_the_perceptron_command_grid(tmp_path: Path) -> None:
    from normdyn.plugins.commands.perceptron_experiment import PerceptronExperiment

    configs = expand_grid(read_toml(EXAMPLES / "perceptron_sweep.toml"), source="perceptron_sweep")
    assert sorted(c.run_id() for c in configs) == sorted(c.run_id() for c in PerceptronExperiment().configs(tmp_path))
    assert len(configs) == 18 and {c.optimizer for c in configs} == {"gd-adaptive"}


def test_unreadable_sweep_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    result = CliRunner().invoke(cli, ["sweep", str(bad), "--store", str(tmp_path / "s")])
    assert result.exit_code == 1 and result.output.startswith(f"Error: {bad}: invalid TOML")
    with pytest.raises(ConfigError, match="config file not found"):
        read_toml(tmp_path / "missing.toml")
