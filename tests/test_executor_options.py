"""Executor options without running tasks: SLURM and PBS job scripts (checked
for the requested resources, and against dask-jobqueue's own cluster object),
bad input failing before any task starts, and the shared click options."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from dask_jobqueue import PBSCluster, SLURMCluster

from normdyn.core.cli import NormdynGroup, cli
from normdyn.core.errors import ConfigError
from normdyn.core.executor import PREVIEW_SCHEDULER, job_script, map_tasks
from normdyn.core.executor_cli import executor_options

REQUEST = {"queue": "gpu", "walltime": "02:00:00", "cores": 4, "memory": "16GiB", "gpus": 2}


def never_called(task: Any) -> Any:
    raise AssertionError("a task ran although the executor options were invalid")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_slurm_job_script_requests_the_resources() -> None:
    lines = job_script(cluster="slurm", account="proj42", **REQUEST).splitlines()
    for line in (
        "#SBATCH -p gpu",
        "#SBATCH -A proj42",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16G",
        "#SBATCH -t 02:00:00",
        "#SBATCH --gres=gpu:2",
        "export OMP_NUM_THREADS=1",
    ):
        assert line in lines
    [worker] = [line for line in lines if "distributed.cli.dask_worker" in line]
    # four single-threaded worker processes of 16GiB / 4 each: one task per process
    assert f"dask_worker {PREVIEW_SCHEDULER} " in worker
    assert "--nthreads 1 --memory-limit 4.00GiB --nworkers 4" in worker


def test_pbs_job_script_requests_the_resources() -> None:
    lines = job_script(cluster="pbs", **REQUEST).splitlines()
    for line in (
        "#PBS -q gpu",
        "#PBS -l select=1:ncpus=4:mem=16GB:ngpus=2",
        "#PBS -l walltime=02:00:00",
        "export OMP_NUM_THREADS=1",
    ):
        assert line in lines
    assert "--nthreads 1 --memory-limit 4.00GiB --nworkers 4" in lines[-1]


def test_job_scripts_without_gpus_request_none() -> None:
    slurm = job_script(cluster="slurm", cores=2, memory="8GiB")
    pbs = job_script(cluster="pbs", cores=2, memory="8GiB")
    assert "gres" not in slurm and "#SBATCH --cpus-per-task=2" in slurm.splitlines()
    assert "ngpus" not in pbs and "#PBS -l select=1:ncpus=2:mem=8192MB" in pbs.splitlines()


@pytest.mark.parametrize(
    "kind, cls, gpu_kwargs",
    [
        ("slurm", SLURMCluster, {"job_extra_directives": ["--gres=gpu:2"]}),
        ("pbs", PBSCluster, {"resource_spec": "select=1:ncpus=4:mem=16GB:ngpus=2"}),
    ],
)
def test_preview_is_the_script_dask_jobqueue_submits(kind: str, cls: type, gpu_kwargs: dict[str, Any]) -> None:
    """The preview equals the cluster object's own job_script() (no job is submitted)."""
    with cls(
        cores=4,
        processes=4,
        memory="16GiB",
        queue="gpu",
        walltime="02:00:00",
        job_script_prologue=["export OMP_NUM_THREADS=1"],
        **gpu_kwargs,
        scheduler_options={"host": "127.0.0.1", "dashboard_address": None},
    ) as cluster:
        expected = cluster.job_script()
        address = cluster.scheduler_address
    preview = job_script(cluster=kind, **REQUEST)
    assert preview.replace(PREVIEW_SCHEDULER, address).replace("normdyn-worker", "dummy-name") == expected


def test_unreachable_scheduler_fails_fast_naming_the_address() -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"cannot reach the Dask scheduler at {address} within 1 s"):
        map_tasks(never_called, [1], executor="dask", scheduler=address, connect_timeout=1)
    assert time.monotonic() - start < 10


def test_malformed_scheduler_address() -> None:
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler at nonsense://x .*unknown address scheme"):
        map_tasks(never_called, [1], executor="dask", scheduler="nonsense://x")


def test_unknown_cluster_kind_lists_the_supported_ones() -> None:
    with pytest.raises(ConfigError, match=r"^unknown cluster kind 'sge'; supported: slurm, pbs$"):
        map_tasks(never_called, [1], executor="dask", cluster="sge", memory="1GiB")


def test_missing_dask_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    with pytest.raises(
        ConfigError, match=r"needs Dask distributed, which is not installed: pip install normdyn\[dask\]"
    ):
        map_tasks(never_called, [1], executor="dask")


def test_missing_dask_jobqueue_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with pytest.raises(ConfigError, match=r"--cluster needs dask-jobqueue, .*pip install normdyn\[dask\]"):
        job_script(cluster="slurm", memory="1GiB")


def test_cluster_without_the_batch_system_fails_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ConfigError, match=r"--cluster slurm: `sbatch` is not on PATH"):
        map_tasks(never_called, [1], executor="dask", cluster="slurm", memory="1GiB")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"scheduler": "tcp://h:1", "cluster": "slurm"}, "either --scheduler .* or --cluster .*, not both"),
        ({"scheduler": "tcp://h:1", "jobs": 3}, "--jobs 3 has no effect with --scheduler"),
        ({"walltime": "01:00:00", "gpus": 1}, r"--walltime, --gpus: batch-job options need --cluster slurm\|pbs"),
        ({"cluster": "slurm", "memory": "1GiB", "walltime": "2h"}, r"--walltime '2h': use \[D-\]HH:MM:SS"),
        ({"cluster": "pbs", "memory": "lots"}, "--memory 'lots': not a size"),
        ({"cluster": "pbs", "memory": "1GiB", "gpus": -1}, "--gpus -1: must be >= 0"),
        ({"cluster": "pbs", "memory": "1GiB", "cores": 0}, "--cores 0: must be >= 1"),
        ({"retries": -1}, "--retries -1: must be >= 0"),
        ({"nodes": 3}, "executor 'dask' has no option.s. nodes"),
    ],
)
def test_bad_dask_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        map_tasks(never_called, [1], executor="dask", **options)


def test_cluster_needs_memory() -> None:
    with pytest.raises(ConfigError, match="--cluster pbs needs --memory"):
        job_script(cluster="pbs", cores=2)


def test_local_executor_rejects_dask_options() -> None:
    with pytest.raises(ConfigError, match="executor 'local' does not take scheduler; add --executor dask"):
        map_tasks(never_called, [1], scheduler="tcp://h:1")


# ------------------------------------------------------------------ click options
@click.group(cls=NormdynGroup)
def group() -> None:
    """A stand-in for the normdyn group."""


@group.command("work")
@executor_options
def work(executor_opts: dict[str, Any]) -> None:
    click.echo(json.dumps(executor_opts, sort_keys=True))


def test_cli_defaults_to_the_local_executor() -> None:
    result = CliRunner().invoke(group, ["work"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {"executor": "local", "jobs": 1}


def test_cli_passes_only_the_given_dask_options() -> None:
    result = CliRunner().invoke(
        group, ["work", "--executor", "dask", "--scheduler", "tcp://10.0.0.5:8786", "--retries", "0"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "executor": "dask",
        "jobs": 1,
        "scheduler": "tcp://10.0.0.5:8786",
        "retries": 0,
    }


def test_cli_rejects_dask_options_with_the_local_executor() -> None:
    result = CliRunner().invoke(group, ["work", "--scheduler", "tcp://h:1"])
    assert result.exit_code == 2
    assert "Error: --scheduler: only with --executor dask" in result.output


def test_cli_reports_bad_dask_options_before_the_command_runs() -> None:
    result = CliRunner().invoke(group, ["work", "--executor", "dask", "--gpus", "1"])
    assert result.exit_code == 1
    assert result.output == "Error: --gpus: batch-job options need --cluster slurm|pbs\n"


def test_cli_unknown_cluster_kind() -> None:
    result = CliRunner().invoke(group, ["work", "--executor", "dask", "--cluster", "sge"])
    assert result.exit_code == 2
    assert "'sge' is not one of 'slurm', 'pbs'" in result.output


def test_cli_job_script_prints_the_script_and_runs_nothing() -> None:
    args = [
        "work",
        "--executor",
        "dask",
        "--cluster",
        "slurm",
        "--queue",
        "gpu",
        "--walltime",
        "02:00:00",
        "--cores",
        "4",
        "--memory",
        "16GiB",
        "--gpus",
        "2",
        "--job-script",
    ]
    result = CliRunner().invoke(group, args)
    assert result.exit_code == 0, result.output
    assert result.output == job_script(cluster="slurm", **REQUEST)
    assert '"executor"' not in result.output  # the command body never ran


def test_cli_job_script_needs_a_cluster() -> None:
    result = CliRunner().invoke(group, ["work", "--executor", "dask", "--job-script"])
    assert result.exit_code == 1
    assert result.output == "Error: --job-script previews a batch job: add --cluster slurm|pbs\n"


def test_normdyn_sweep_job_script_trains_nothing(tmp_path: Path) -> None:
    args = [
        "sweep",
        str(tmp_path / "absent.toml"),
        "--store",
        str(tmp_path / "store"),
        "--executor",
        "dask",
        "--cluster",
        "pbs",
        "--queue",
        "gpu",
        "--walltime",
        "02:00:00",
        "--cores",
        "4",
        "--memory",
        "16GiB",
        "--gpus",
        "2",
        "--job-script",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output == job_script(cluster="pbs", **REQUEST)
    assert not (tmp_path / "store").exists()
