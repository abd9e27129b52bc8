"""The dask executor on a real Dask LocalCluster (worker processes, loopback):
same stored runs as the local executor (for a toy task, and for `normdyn
sweep` followed by `normdyn analyze`), a killed worker's task rerun and resumed without lost or duplicated
checkpoint rows, retries of a task that raised, and a local Dask cluster
started by map_tasks itself."""

from __future__ import annotations

import operator
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from distributed import LocalCluster
from distributed.utils import get_mp_context

from normdyn.core.cli import cli
from normdyn.core.executor import map_tasks
from normdyn.core.fsck import fsck_run
from normdyn.core.plugins import builtin_entry_points
from normdyn.core.store import MeasureRecord, Run, run_dirs

N_CKPT = 5
STEPS = [0, 1, 3, 7, 15]
KILL_AFTER = 2  # checkpoints appended before the first attempt kills its worker


def _weights(seed: int, row: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * seed + row)
    return {"layer.weight": torch.randn(4, 3, generator=gen), "layer.bias": torch.randn(4, generator=gen)}


def write_run(task: tuple[str, str, int, str | None]) -> str:
    """A tiny idempotent training task: resumes after its last stored checkpoint.

    With a marker path, the first attempt (marker absent) SIGKILLs its own
    worker process after KILL_AFTER checkpoints, as a preempted job would die.
    """
    store, run_id, seed, marker = task
    run = Run.create(
        store,
        run_id,
        config={"seed": seed},
        model_spec={"name": "toy"},
        dataset={"name": "toy"},
        P=8 * (seed + 1),
        seed=seed,
        exist_ok=True,
    )
    for row in range(len(run), N_CKPT):
        run.append_checkpoint(
            _weights(seed, row),
            step=STEPS[row],
            epoch=float(row),
            samples_seen=8 * STEPS[row],
            metrics={
                "train_error": 0.5 / (row + 1),
                "train_loss": 0.5**row,
                "test_error": 1.0 / (row + 1 + seed),
                "test_loss": 2.0**-row,
            },
        )
        if marker is not None and row + 1 == KILL_AFTER and not Path(marker).exists():
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
    sha = list(run.checkpoints()["sha256"])
    values = np.array(
        [float(torch.linalg.vector_norm(run.load_state_dict(i)["layer.weight"])) for i in range(len(run))]
    )
    run.write_measure("frob", MeasureRecord(values=values, plugin="toy", version="1", sha256=sha))
    run.set_status("complete")
    return run_id


def fail_once(marker: str) -> str:
    """Raises on its first attempt (marker absent), succeeds on the next."""
    if not Path(marker).exists():
        Path(marker).touch()
        raise RuntimeError("transient failure")
    return "ok"


@pytest.fixture(scope="module")
def worker_processes() -> Iterator[None]:
    """Worker processes fork from a server that has torch and the store loaded
    (a spawned worker would import them anew, at every restart after a kill);
    test functions travel by value, as workers cannot import this test module."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
            get_mp_context().set_forkserver_preload(
                [
                    "distributed",
                    "torch",
                    "h5py",
                    "normdyn.core.store",
                    "normdyn.trainer.sweep",
                    "normdyn.analyzers.analyze",
                    *(ep.value for ep in builtin_entry_points()),
                ]
            )
            yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def scheduler(worker_processes: None) -> Iterator[str]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def _tasks(store: Path, marker_dir: Path | None = None) -> list[tuple[str, str, int, str | None]]:
    store.mkdir()
    return [
        (
            str(store),
            f"run-{seed}",
            seed,
            str(marker_dir / f"killed-{seed}") if marker_dir is not None and seed % 2 == 0 else None,
        )
        for seed in range(4)
    ]


def _stored(store: Path) -> dict[str, dict[str, Any]]:
    """Everything a run stores except wall-clock values (and the hashes and sizes they enter)."""
    out = {}
    for path in run_dirs(store):
        run = Run(path)
        attrs = {k: v for k, v in run.attrs.items() if k != "created"}
        attrs["config"] = {k: v for k, v in attrs["config"].items() if k != "store"}
        table = {k: v.tolist() for k, v in run.checkpoints().items() if k not in ("wall_time", "sha256", "bytes")}
        assert not np.isnan(np.array(table["test_loss"])).any()  # NaN != NaN would fail the comparison
        tensors = [{k: t.tolist() for k, t in run.load_state_dict(i).items()} for i in range(len(run))]
        measures = {name: run.read_measure(name).values.tolist() for name in run.measures()}
        out[path.name] = {"attrs": attrs, "table": table, "tensors": tensors, "measures": measures}
    return out


def test_dask_stores_the_same_runs_as_local(tmp_path: Path, scheduler: str) -> None:
    local = dict(map_tasks(write_run, _tasks(tmp_path / "local"), executor="local", jobs=1))
    dask = dict(map_tasks(write_run, _tasks(tmp_path / "dask"), executor="dask", scheduler=scheduler))
    assert sorted(local.values()) == sorted(dask.values()) == ["run-0", "run-1", "run-2", "run-3"]
    stored = _stored(tmp_path / "dask")
    assert stored == _stored(tmp_path / "local")
    assert stored["run-3"]["table"]["step"] == STEPS
    assert stored["run-3"]["attrs"]["status"] == "complete"
    expected_frob = [float(np.linalg.norm(_weights(3, i)["layer.weight"].numpy())) for i in range(N_CKPT)]
    np.testing.assert_allclose(stored["run-3"]["measures"]["frob"], expected_frob, rtol=1e-6)


def test_killed_worker_task_is_rerun_and_resumes(tmp_path: Path, scheduler: str) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    outcomes = dict(map_tasks(write_run, _tasks(tmp_path / "store", markers), executor="dask", scheduler=scheduler))
    assert sorted(outcomes.values()) == ["run-0", "run-1", "run-2", "run-3"]
    assert sorted(p.name for p in markers.iterdir()) == ["killed-0", "killed-2"]  # two workers really died
    for path in run_dirs(tmp_path / "store"):
        run = Run(path)
        assert run.status == "complete"
        assert run.checkpoints()["step"].tolist() == STEPS  # no lost and no duplicated row
        assert sorted(p.name for p in (path / "ckpt").iterdir()) == [f"step-{s:010d}.safetensors" for s in STEPS]
        assert not np.isnan(run.read_measure("frob").values).any()
        report = fsck_run(path)
        assert report.ok, report.problems


def test_task_that_raises_is_retried(tmp_path: Path, scheduler: str) -> None:
    marker = str(tmp_path / "failed-once")
    [(_, outcome)] = map_tasks(fail_once, [marker], executor="dask", scheduler=scheduler)
    assert outcome == "ok"


def test_without_retries_the_exception_is_the_outcome(tmp_path: Path, scheduler: str) -> None:
    marker = str(tmp_path / "failed-once")
    [(task, outcome)] = map_tasks(fail_once, [marker], executor="dask", scheduler=scheduler, retries=0)
    assert task == marker
    assert isinstance(outcome, RuntimeError) and str(outcome) == "transient failure"


def test_dask_without_scheduler_starts_a_local_cluster(worker_processes: None) -> None:
    outcomes = sorted(map_tasks(operator.neg, [1, 2, 3], executor="dask", jobs=2))
    assert outcomes == [(1, -1), (2, -2), (3, -3)]


SWEEP = """
[train]
model = "perceptron"
dataset = "teacher"
steps = 20
schedule = "log:4"
batch_size = "full"
optimizer = "sgd"
lr = 0.5
momentum = 0.0
device = "cpu"

[train.dataset_params]
N = 20
n_train = 64
n_test = 16

[sweep]
P = [8, 16]
seed = [0, 1]
"""


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_sweep_and_analyze_commands_on_dask_store_the_same_as_local(tmp_path: Path, scheduler: str) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP)
    outputs = {}
    for name, executor in (("local", []), ("dask", ["--executor", "dask", "--scheduler", scheduler])):
        store = str(tmp_path / name)
        swept = _invoke(["sweep", str(config), "--store", store, "-q", *executor])
        outputs[name] = sorted(swept.replace(store, "STORE").splitlines())
        assert _invoke(["analyze", store, "-q", *executor]) == "4 run(s): 20 computed, 0 skipped, 0 failed\n"
    assert outputs["dask"] == outputs["local"]
    assert outputs["local"][0] == "4 runs: 4 trained, 0 resumed, 0 skipped, 0 failed"
    stored = _stored(tmp_path / "dask")
    assert len(stored) == 4
    for run in stored.values():
        assert len(run["tensors"]) == 5 and run["attrs"]["status"] == "complete"
        assert list(run["measures"]) == ["spectral_complexity"]
        assert not np.isnan(run["measures"]["spectral_complexity"]).any()
    assert stored == _stored(tmp_path / "local")
    # Rerunning either command is a no-op: a retried task redoes nothing.
    dask = ["--executor", "dask", "--scheduler", scheduler]
    store = str(tmp_path / "dask")
    assert _invoke(["sweep", str(config), "--store", store, "-q", *dask]).endswith(
        "4 runs: 0 trained, 0 resumed, 4 skipped, 0 failed\n"
    )
    assert _invoke(["analyze", store, "-q", *dask]) == "4 run(s): 0 computed, 20 skipped, 0 failed\n"
    assert _stored(tmp_path / "dask") == stored


def test_perceptron_sweep_on_dask_stores_the_same_as_local(tmp_path: Path, scheduler: str) -> None:
    """The perceptron engine's grid is one sweep task: on Dask it writes exactly the local runs."""
    from normdyn.plugins.commands.perceptron_experiment import PerceptronExperiment

    exp = PerceptronExperiment(N=30, alphas=(1.0, 2.0), seeds=(0, 1), steps=40, schedule="log:6", n_test=20)
    config = tmp_path / "perceptron.toml"
    config.write_text(exp.sweep_toml())
    for name, executor in (("local", []), ("dask", ["--executor", "dask", "--scheduler", scheduler])):
        out = _invoke(["sweep", str(config), "--store", str(tmp_path / name), "-q", *executor])
        assert out.splitlines()[-1] == "4 runs: 4 trained, 0 resumed, 0 skipped, 0 failed"
    stored = _stored(tmp_path / "dask")
    assert sorted(stored) == sorted(c.run_id() for c in exp.configs(tmp_path))
    assert stored == _stored(tmp_path / "local")
