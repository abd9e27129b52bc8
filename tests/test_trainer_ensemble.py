"""Seed ensembles: equal to separate runs, same store format, resumable, refused where they cannot match."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import ConfigError, StoreError
from normdyn.core.hookspecs import hookimpl
from normdyn.core.store import Run
from normdyn.trainer import ensemble as ensemble_module
from normdyn.trainer.config import TrainConfig, read_toml
from normdyn.trainer.ensemble import train_ensemble, train_ensemble_or_resume
from normdyn.trainer.loop import resume, train
from normdyn.trainer.sweep import expand_grid, sweep_tasks

# float32 rounding differs between one batched matmul and S single ones; after
# these few dozen steps the weights agree to ~1e-6 relative (docs/training.md)
REL_TOL = 1e-5


class Pixels:
    """120 train / 40 test 1x6x6 images, 3 classes from a fixed linear rule."""

    name = "pixels"

    def load(self, *, root: Any = None, download: bool = False, **params: Any) -> DatasetTensors:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(160, 1, 6, 6, generator=g)
        flat = x.flatten(1)
        y = (flat[:, 0] + flat[:, 1] > 0).long() + (flat[:, 2] > 0.5).long()
        return DatasetTensors(x[:120], y[:120], x[120:], y[120:], num_classes=3, input_shape=(1, 6, 6))


class _Plugin:
    @hookimpl
    def register_datasets(self, register: Any) -> None:
        register(Pixels())


@pytest.fixture(autouse=True)
def pixels_plugin():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plugins.register_plugin(_Plugin(), name="test-ensemble-pixels")
    try:
        yield
    finally:
        plugins.unregister_plugin(name="test-ensemble-pixels")
        torch.set_num_threads(threads)


MODEL_PARAMS = {"mlp": {"widths": [12, 12]}, "cnn": {"conv_channels": [3, 4], "hidden": [8], "dropout": 0.0}}


def configs(
    store: Path, *, model: str = "mlp", optimizer: str = "adam", seeds: tuple[int, ...] = (0, 1, 2), **changes: Any
) -> list[TrainConfig]:
    base = TrainConfig(
        model=model,
        dataset="pixels",
        P=50,
        epochs=6,
        schedule="log:3",
        batch_size=16,
        optimizer=optimizer,
        lr=1e-2,
        weight_decay=1e-3,
        model_params=MODEL_PARAMS[model],
        store=str(store),
        data_root=None,
        device="cpu",
        ensemble=True,
    )
    return [replace(base, seed=s, **changes) for s in seeds]


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a)


def assert_same_resume_state(run: Run, alone: Run) -> None:
    """The resume state a seed's ensemble run saved is its separate run's: the same JSON (optimizer
    options and position), the same tensors by name, the RNG and data-order states bit for bit, the
    optimizer's moments within the weights' tolerance."""
    (ours, ours_meta), (theirs, theirs_meta) = run.load_resume(), alone.load_resume()
    assert ours_meta == theirs_meta
    assert ours_meta["optimizer"]["param_groups"][0]["fused"] is None  # torch's default, as a separate run
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape
        if name.startswith("optim."):
            assert max_rel_diff({name: ours[name]}, {name: tensor}) < REL_TOL
        else:
            assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize(("model", "optimizer"), [("mlp", "adam"), ("mlp", "sgd"), ("cnn", "adamw")])
def test_each_seed_matches_its_separate_run(tmp_path: Path, model: str, optimizer: str) -> None:
    members = configs(tmp_path / "ens", model=model, optimizer=optimizer)
    results = train_ensemble(members, progress=False)
    for config, (run, action) in zip(members, results):
        alone = train(replace(config, store=str(tmp_path / "sep"), ensemble=False), progress=False)
        assert action == "trained" and run.status == "complete"
        assert run.run_id == alone.run_id == config.run_id()
        assert run.config == {**alone.config, "store": str(tmp_path / "ens"), "ensemble": True}
        assert run.model_spec == alone.model_spec and run.dataset == alone.dataset
        ours, theirs = run.checkpoints(), alone.checkpoints()
        assert list(ours["step"]) == list(theirs["step"]) == [0, 4, 8, 24]  # log:3 over 6 epochs of 4 steps
        assert list(ours["samples_seen"]) == list(theirs["samples_seen"])
        for i in range(len(ours["step"])):
            assert max_rel_diff(run.load_state_dict(i), alone.load_state_dict(i)) < REL_TOL
        for column in ("train_loss", "test_loss"):
            assert ours[column] == pytest.approx(theirs[column], rel=REL_TOL)
        for column in ("train_error", "test_error"):
            assert list(ours[column]) == list(theirs[column])
        assert_same_resume_state(run, alone)
    assert max_rel_diff(results[0][0].load_state_dict(-1), results[1][0].load_state_dict(-1)) > 0.1  # seeds differ


def test_a_rerun_skips_complete_runs_and_trains_only_the_new_seed(tmp_path: Path) -> None:
    train_ensemble(configs(tmp_path, seeds=(0, 1)), progress=False)
    results = train_ensemble_or_resume(configs(tmp_path, seeds=(0, 1, 2)), progress=False)
    assert [action for _, action in results] == ["skipped", "skipped", "trained"]
    assert all(run.status == "complete" for run, _ in results)


def _crash_at_write(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """Make the nth resume-state write of the ensemble raise (a kill while it saved a point)."""
    calls = {"n": 0}
    real = ensemble_module.write_resume

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            raise KeyboardInterrupt("killed")
        real(*args, **kwargs)

    monkeypatch.setattr(ensemble_module, "write_resume", flaky)


def test_an_interrupted_ensemble_resumes_bitwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = train_ensemble(configs(tmp_path / "whole"), progress=False)
    _crash_at_write(monkeypatch, 7)  # the first seed's write at the third point (step 8): all left at step 4
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(configs(tmp_path / "cut"), progress=False)
    monkeypatch.undo()
    assert {Run(tmp_path / "cut" / r.run_id).status for r, _ in whole} == {"failed"}
    results = train_ensemble_or_resume(configs(tmp_path / "cut"), progress=False)
    assert [action for _, action in results] == ["resumed"] * 3
    for (run, _), (ref, _) in zip(results, whole):
        assert run.status == "complete"
        assert list(run.checkpoints()["step"]) == [0, 4, 8, 24]
        ours, theirs = run.load_state_dict(-1), ref.load_state_dict(-1)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_seeds_left_at_different_steps_resume_in_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_at_write(monkeypatch, 8)  # second seed's write at step 8: seed 0 at 8, seeds 1 and 2 at 4
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(configs(tmp_path / "cut"), progress=False)
    monkeypatch.undo()
    calls: list[list[int]] = []
    real = ensemble_module.train_ensemble
    monkeypatch.setattr(
        ensemble_module,
        "train_ensemble",
        lambda group, progress: calls.append([c.seed for c in group]) or real(group, progress=progress),
    )
    results = train_ensemble_or_resume(configs(tmp_path / "cut"), progress=False)
    assert calls == [[1, 2]]  # seed 0 continued alone in the separate loop
    assert [action for _, action in results] == ["resumed"] * 3
    for config, (run, _) in zip(configs(tmp_path / "cut"), results):
        alone = train(replace(config, store=str(tmp_path / "sep")), progress=False)
        assert list(run.checkpoints()["step"]) == [0, 4, 8, 24]
        assert max_rel_diff(run.load_state_dict(-1), alone.load_state_dict(-1)) < REL_TOL


def test_an_ensemble_run_continues_alone_with_train_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_at_write(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(configs(tmp_path / "cut", seeds=(0, 1, 2)), progress=False)
    monkeypatch.undo()
    config = configs(tmp_path / "cut")[1]
    run = resume(tmp_path / "cut" / config.run_id(), progress=False)
    alone = train(replace(config, store=str(tmp_path / "sep")), progress=False)
    assert run.status == "complete"
    assert max_rel_diff(run.load_state_dict(-1), alone.load_state_dict(-1)) < REL_TOL


def test_an_ensemble_refuses_a_member_whose_checkpoint_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_at_write(monkeypatch, 7)  # every seed left at step 4
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(configs(tmp_path), progress=False)
    monkeypatch.undo()
    runs = [Run(tmp_path / c.run_id()) for c in configs(tmp_path)]
    ckpt = runs[1].path / "ckpt" / "step-0000000004.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0x01
    ckpt.write_bytes(bytes(data))
    before = [run.checkpoints()["sha256"].tolist() for run in runs]
    with pytest.raises(StoreError, match=f"cannot resume {runs[1].path} from step 4: {ckpt}: sha256 mismatch"):
        train_ensemble_or_resume(configs(tmp_path), progress=False)
    assert [run.checkpoints()["sha256"].tolist() for run in runs] == before
    assert [run.status for run in runs] == ["failed"] * 3  # no seed was marked running before all were checked


def test_models_that_cannot_match_separate_runs_are_refused(tmp_path: Path) -> None:
    members = configs(tmp_path, model="cnn", model_params={**MODEL_PARAMS["cnn"], "dropout": 0.2})
    with pytest.raises(
        ConfigError,
        match=r"model 'cnn' cannot be trained as an ensemble: it has dropout "
        r"'classifier.2' \(p=0.2\)\. Ensembles support models without",
    ):
        train_ensemble(members, progress=False)
    assert not (tmp_path / members[0].run_id()).exists()
    with pytest.raises(ConfigError, match="ensemble members must differ in seed only; .* also differs in lr"):
        train_ensemble([members[0], replace(members[1], lr=0.5)], progress=False)


SWEEP = """
[train]
model = "mlp"
dataset = "pixels"
epochs = 3
schedule = "log:2"
batch_size = 16
data_root = "unused"
device = "cpu"

[train.model_params]
widths = [6]

[sweep]
P = [30, 40]
seed = [0, 1, 2]
"""


def test_cli_sweep_ensemble_writes_the_same_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(SWEEP)
    ens = CliRunner().invoke(cli, ["sweep", str(cfg), "--store", str(tmp_path / "ens"), "--ensemble", "-q"])
    assert ens.exit_code == 0, ens.output
    assert ens.stdout.splitlines()[-1] == "6 runs: 6 trained, 0 resumed, 0 skipped, 0 failed"
    sep = CliRunner().invoke(cli, ["sweep", str(cfg), "--store", str(tmp_path / "sep"), "-q"])
    assert sep.exit_code == 0, sep.output
    names = sorted(p.name for p in (tmp_path / "ens").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "sep").iterdir()) and len(names) == 6
    for name in names:
        a, b = Run(tmp_path / "ens" / name), Run(tmp_path / "sep" / name)
        assert a.config["ensemble"] is True and b.config["ensemble"] is False
        assert max_rel_diff(a.load_state_dict(-1), b.load_state_dict(-1)) < REL_TOL
    again = CliRunner().invoke(cli, ["sweep", str(cfg), "--store", str(tmp_path / "ens"), "--ensemble", "-q"])
    assert again.stdout.splitlines()[-1] == "6 runs: 0 trained, 0 resumed, 6 skipped, 0 failed"


def test_sweep_tasks_group_seeds_and_share_cores_only_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(SWEEP)
    grid = expand_grid(read_toml(cfg))
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    tasks = sweep_tasks([replace(c, ensemble=True) for c in grid], store="s", jobs=2)
    assert [[c["seed"] for c in t["configs"]] for t in tasks] == [[0, 1, 2], [0, 1, 2]]
    assert [t["configs"][0]["P"] for t in tasks] == [30, 40] and {t["threads"] for t in tasks} == {4}
    assert [t["threads"] for t in sweep_tasks(grid, store="s", jobs=2, executor="dask")] == [0] * 6
    assert [t["threads"] for t in sweep_tasks(grid, store="s", jobs=1)] == [0] * 6
