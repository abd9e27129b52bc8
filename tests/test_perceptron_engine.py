"""The perceptron engine's runs are ordinary runs: config-hash ids, resumable after a crash or a SIGKILL
(bit for bit on the CPU), trainable by `normdyn train` and `normdyn sweep`, checked like any config."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normdyn.core.cli import cli
from normdyn.core.errors import ConfigError, StoreError
from normdyn.core.fsck import fsck_run
from normdyn.core.store import Run, list_runs
from normdyn.plugins.commands.perceptron_experiment import PerceptronExperiment
from normdyn.trainer import perceptron as engine
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.perceptron import train_perceptrons

# Stops by lambda at several steps and by the step limit; checkpoints every few steps, so a crash falls
# between points of different systems.
EXP = PerceptronExperiment(
    N=40, alphas=(0.5, 1.0, 2.0, 4.0), seeds=(0, 1), steps=120, schedule="linear:12", lam_stop=2.0, n_test=50
)


def _everything(store: Path) -> dict[str, Any]:
    """Every run's checkpoint steps, metrics and tensors (not wall times, hashes, sizes), by run id."""
    out = {}
    for run in list_runs(store):
        table = run.checkpoints()
        cols = ("step", "epoch", "samples_seen", "train_error", "train_loss", "test_error", "test_loss", "lr")
        out[run.run_id] = {
            "status": run.status,
            "table": {k: table[k].tolist() for k in cols},
            "tensors": [run.load_state_dict(i)["fc.weight"] for i in range(len(run))],
        }
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for run_id in a:
        assert a[run_id]["status"] == b[run_id]["status"] == "complete", run_id
        assert a[run_id]["table"] == b[run_id]["table"], run_id
        assert all(torch.equal(x, y) for x, y in zip(a[run_id]["tensors"], b[run_id]["tensors"])), run_id


def _crash_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The n-th checkpoint's metrics raise KeyboardInterrupt (a crash; the engine marks its runs failed)."""
    real, calls = engine._metrics, {"n": 0}

    def crash(*args: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(engine, "_metrics", crash)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store = tmp_path_factory.mktemp("whole")
    results = train_perceptrons(EXP.configs(store), progress=False)
    assert [a for _, a in results] == ["trained"] * 8
    return _everything(store)


def test_a_crash_mid_point_resumes_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict[str, Any]
) -> None:
    _crash_at(monkeypatch, 21)  # inside the third point: some systems have written it, the others not
    with pytest.raises(KeyboardInterrupt):
        train_perceptrons(EXP.configs(tmp_path), progress=False)
    monkeypatch.undo()
    runs = list_runs(tmp_path)
    assert {r.status for r in runs} == {"failed"}
    starts = {int(r.load_resume()[1]["step"]) for r in runs if r.load_resume() is not None}
    assert len(starts) == 2  # the group resumes from two different steps
    results = train_perceptrons(EXP.configs(tmp_path), progress=False)
    assert {a for _, a in results} == {"resumed"}
    _same(_everything(tmp_path), uninterrupted)
    assert all(fsck_run(r.path).ok for r, _ in results)


_KILLER = """
import os, signal, sys
from normdyn.plugins.commands.perceptron_experiment import PerceptronExperiment
from normdyn.trainer import perceptron as engine
exp = PerceptronExperiment(**{exp!r})
real, calls = engine._metrics, [0]
def kill(*args):
    calls[0] += 1
    if calls[0] == {at}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all, the writer thread may be mid-write
    return real(*args)
engine._metrics = kill
engine.train_perceptrons(exp.configs(sys.argv[1]), progress=False)
"""


def test_sigkill_then_rerun_loses_nothing_and_matches(tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    fields = {k: getattr(EXP, k) for k in ("N", "alphas", "seeds", "steps", "schedule", "lam_stop", "n_test")}
    script = textwrap.dedent(_KILLER).format(exp=fields, at=27)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    killed = {r.run_id: r.checkpoints()["step"].tolist() for r in list_runs(tmp_path)}
    assert len(killed) == 8 and any(killed.values())
    assert {r.status for r in list_runs(tmp_path)} == {"running"}  # as the SIGKILL left them
    results = train_perceptrons(EXP.configs(tmp_path), progress=False)
    assert {a for _, a in results} == {"resumed"}
    after = _everything(tmp_path)
    for run_id, steps in killed.items():  # every point stored before the kill is still there, unchanged
        assert after[run_id]["table"]["step"][: len(steps)] == steps
    _same(after, uninterrupted)


def test_sweep_file_trains_the_same_runs(tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(EXP.sweep_toml())
    store = tmp_path / "store"
    result = CliRunner().invoke(cli, ["sweep", str(sweep), "--store", str(store), "-q"])
    assert result.exit_code == 0, result.output + result.stderr
    assert result.output.splitlines()[-1] == "8 runs: 8 trained, 0 resumed, 0 skipped, 0 failed"
    _same(_everything(store), uninterrupted)  # one task, the same group: the same runs, bit for bit
    again = CliRunner().invoke(cli, ["sweep", str(sweep), "--store", str(store), "-q"])
    assert again.output.splitlines()[-1] == "8 runs: 0 trained, 0 resumed, 8 skipped, 0 failed"


def test_train_command_trains_and_resumes_one_config(tmp_path: Path) -> None:
    exp = PerceptronExperiment(N=30, alphas=(2.0,), seeds=(3,), steps=30, schedule="log:5", n_test=20)
    (config,) = exp.configs(tmp_path / "store")
    toml = tmp_path / "one.toml"
    toml.write_text(exp.sweep_toml().split("[sweep]")[0] + "P = 60\nseed = 3\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(toml), "--store", str(tmp_path / "store"), "-q"])
    assert result.exit_code == 0, result.output + result.stderr
    run = Run(result.output.strip())
    assert run.run_id == config.run_id() and run.status == "complete"
    again = CliRunner().invoke(cli, ["train", "--resume", str(run.path), "-q"])
    assert again.exit_code == 0 and "already complete" in again.stderr


def test_gd_adaptive_configs_are_checked() -> None:
    base = dict(model="perceptron", dataset="teacher", steps=60, optimizer="gd-adaptive", batch_size="full")
    with pytest.raises(ConfigError) as exc:
        TrainConfig(
            **{
                **base,
                "model": "mlp",
                "batch_size": 32,
                "weight_decay": 0.1,
                "optimizer_params": {"safety": 2.0, "beta": 1},
            }
        ).validate()
    assert str(exc.value).splitlines() == [
        "optimizer_params beta: optimizer 'gd-adaptive' takes safety, max_rel_step, lam_stop",
        "optimizer_params.safety=2.0: must be in (0, 1]",
        "optimizer 'gd-adaptive' trains model 'perceptron' only (got model 'mlp')",
        "optimizer 'gd-adaptive' is full-batch: set batch_size='full' (got 32)",
        "optimizer 'gd-adaptive' has no weight decay (got weight_decay=0.1)",
    ]
    with pytest.raises(ConfigError, match="optimizer_params lam_stop: optimizer 'adam' takes none"):
        TrainConfig(steps=60, optimizer_params={"lam_stop": 3}).validate()
    with pytest.raises(ConfigError, match="optimizer_params.lam_stop='x': must be a positive number"):
        TrainConfig(**{**base, "optimizer_params": {"lam_stop": "x"}}).validate()


def test_run_ids_made_before_optimizer_params_existed_hold() -> None:
    # These ids were made by normdyn before TrainConfig had optimizer_params: a store trained then
    # must still find (and skip or resume) its runs.
    assert TrainConfig(steps=10).run_id() == "cnn-mnist-P1000-s0-a2beffc694"
    assert TrainConfig(
        model="mlp", dataset="mnist1d", P=250, seed=2, epochs=5, model_params={"widths": [8]}
    ).run_id() == ("mlp-mnist1d-P250-s2-aee6b8e1ef")


def test_equal_computations_have_one_run_id() -> None:
    base = dict(model="perceptron", dataset="teacher", steps=60, optimizer="gd-adaptive", batch_size="full")
    explicit = TrainConfig(**base, optimizer_params={"safety": 0.5, "max_rel_step": 0.05, "lam_stop": 6.0})
    assert TrainConfig(**base, optimizer_params={"lam_stop": 6}).run_id() == explicit.run_id()
    assert explicit.optimizer_params == {"safety": 0.5, "max_rel_step": 0.05, "lam_stop": 6.0}
    assert TrainConfig(**base).run_id() != explicit.run_id()  # no lam_stop: another computation


def test_runs_made_before_optimizer_params_pool_with_new_ones(tmp_path: Path) -> None:
    """A store trained before the field existed, extended after: one experiment for the fit, not two."""
    from dataclasses import asdict

    from normdyn.analyzers.fit.store_curves import store_groups
    from normdyn.core.store import MeasureRecord

    for P, drop in ((100, True), (200, False)):
        config = asdict(TrainConfig(model="mlp", dataset="mnist1d", P=P, steps=10))
        if drop:
            del config["optimizer_params"]  # as normdyn wrote it then
        run = Run.create(tmp_path, f"run-{P}", config=config, model_spec={"name": "mlp"}, dataset={}, P=P, seed=0)
        run.append_checkpoint({"w": torch.ones(2)}, step=1, epoch=1.0, metrics={"test_error": 0.3})
        sha = [str(x) for x in run.checkpoints()["sha256"]]
        run.write_measure("m", MeasureRecord(np.array([1.0]), "t", "1", {}, sha))
    groups, notes = store_groups(tmp_path, "m")
    assert notes == [] and len(groups) == 1 and len(groups[0].curves) == 2


def test_a_group_must_share_everything_but_P_and_seed(tmp_path: Path) -> None:
    a, b = (
        PerceptronExperiment(N=30, alphas=(1.0,), seeds=(0,), steps=5, schedule="log:2").configs(tmp_path),
        PerceptronExperiment(N=30, alphas=(1.0,), seeds=(0,), steps=6, schedule="log:2").configs(tmp_path),
    )
    with pytest.raises(ConfigError, match=r"differ in steps; the perceptron engine trains configs that differ in P"):
        train_perceptrons([*a, *b], progress=False)
    with pytest.raises(ConfigError, match=r"the group repeats a \(P, seed\)"):
        train_perceptrons([*a, *a], progress=False)
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_a_resume_state_unlike_its_checkpoint_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = PerceptronExperiment(N=20, alphas=(1.0,), seeds=(0,), steps=40, schedule="linear:10", n_test=10)
    _crash_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train_perceptrons(exp.configs(tmp_path), progress=False)
    monkeypatch.undo()
    (run,) = list_runs(tmp_path)
    tensors, meta = run.load_resume()
    tensors["optim.0.v"] = tensors["optim.0.v"] * 1.01
    run.save_resume(tensors, meta)
    before = run.checkpoints()["sha256"].tolist()
    with pytest.raises(StoreError, match="the resume state at step 10 does not match its checkpoint's weights"):
        train_perceptrons(exp.configs(tmp_path), progress=False)
    assert run.checkpoints()["sha256"].tolist() == before  # nothing stored is touched


def test_a_failed_write_stops_the_group_and_leaves_it_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict[str, Any]
) -> None:
    """The write of one point fails (disk full): nothing after it is written (no resume state without its
    checkpoint, no run marked complete with a hole), every unfinished run is marked failed, and a rerun
    completes the grid exactly as an uninterrupted one."""
    real = Run.append_checkpoint

    def full_disk(self: Run, *args: Any, **kw: Any) -> None:
        if kw["step"] == 24 and self.P == 40 and self.seed == 1:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kw)

    monkeypatch.setattr(Run, "append_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        train_perceptrons(EXP.configs(tmp_path), progress=False)
    monkeypatch.undo()
    statuses = set()
    for run in list_runs(tmp_path):
        steps = run.checkpoints()["step"].tolist()
        whole = uninterrupted[run.run_id]["table"]["step"]
        assert steps == whole[: len(steps)], run.run_id  # a prefix: no hole
        saved = run.load_resume()
        assert saved is None or int(saved[1]["step"]) in steps  # every resume state has its checkpoint
        assert run.status == "failed" or (run.status == "complete" and steps == whole), run.run_id
        statuses.add(run.status)
    assert "failed" in statuses
    results = train_perceptrons(EXP.configs(tmp_path), progress=False)
    assert "resumed" in {a for _, a in results}
    _same(_everything(tmp_path), uninterrupted)


def test_a_failure_before_the_first_step_marks_the_runs_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*args: Any, **kw: Any) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(engine.BatchedDescent, "__init__", no_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_perceptrons(EXP.configs(tmp_path), progress=False)
    assert {r.status for r in list_runs(tmp_path)} == {"failed"}


def test_train_resume_continues_the_directory_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = PerceptronExperiment(N=20, alphas=(1.0,), seeds=(0,), steps=40, schedule="linear:10", n_test=10)
    _crash_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train_perceptrons(exp.configs(tmp_path / "s"), progress=False)
    monkeypatch.undo()
    (run,) = list_runs(tmp_path / "s")
    moved = tmp_path / "s" / "my-run"
    run.path.rename(moved)
    result = CliRunner().invoke(cli, ["train", "--resume", str(moved), "-q"])
    assert result.exit_code == 0, result.output + result.stderr
    assert [r.path.name for r in list_runs(tmp_path / "s")] == ["my-run"]
    assert Run(moved).status == "complete" and Run(moved).checkpoints()["step"].tolist() == [0, 10, 20, 30, 40]


def test_blocked_bmm_resumes_to_rounding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """blocked-bmm multiplies the running systems together, so waiting ones change its shapes: to rounding."""
    whole = tmp_path / "whole"
    train_perceptrons(EXP.configs(whole), progress=False, kernel="blocked-bmm")
    _crash_at(monkeypatch, 21)
    with pytest.raises(KeyboardInterrupt):
        train_perceptrons(EXP.configs(tmp_path / "b"), progress=False, kernel="blocked-bmm")
    monkeypatch.undo()
    train_perceptrons(EXP.configs(tmp_path / "b"), progress=False, kernel="blocked-bmm")
    a, b = _everything(whole), _everything(tmp_path / "b")
    assert a.keys() == b.keys()
    for run_id in a:
        assert a[run_id]["table"]["step"] == b[run_id]["table"]["step"]
        # stops at lambda = 2 alpha before rounding grows (see test_batched_descent_matches_one_system...)
        for x, y in zip(a[run_id]["tensors"], b[run_id]["tensors"]):
            assert torch.allclose(x, y, rtol=0, atol=1e-10 * max(1.0, float(x.abs().max()))), run_id


def test_a_parallel_sweep_splits_a_perceptron_group_by_seed(tmp_path: Path) -> None:
    from normdyn.trainer.sweep import sweep_tasks

    configs = EXP.configs(tmp_path)
    assert len(sweep_tasks(configs, store=str(tmp_path))) == 1  # one local worker: the whole group
    tasks = sweep_tasks(configs, store=str(tmp_path), jobs=4)
    assert [sorted({c["seed"] for c in t["configs"]}) for t in tasks] == [[0], [1]]
    assert {t["engine"] for t in tasks} == {"perceptron"} and all(len(t["configs"]) == 4 for t in tasks)
    assert len(sweep_tasks(configs, store=str(tmp_path), executor="dask")) == 2
