"""The store commands: ls, show, fsck (+ --repair), and their bad-input errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from normdyn.core.cli import cli
from normdyn.core.store import MeasureRecord, Run


def make_store(root: Path, n_runs: int = 2, n_ckpt: int = 3) -> list[Run]:
    runs = []
    for i in range(n_runs):
        run = Run.create(
            root,
            f"run{i}",
            config={"lr": 0.1},
            model_spec={"name": "mlp"},
            dataset={"name": "mnist1d"},
            P=100 * (i + 1),
            seed=i,
        )
        for s in range(n_ckpt):
            run.append_checkpoint(
                {"w": torch.full((4, 4), float(s))},
                step=10 * s,
                epoch=float(s),
                metrics={"test_error": 0.5 - 0.1 * s, "train_error": 0.25},
            )
        runs.append(run)
    return runs


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    return lines[-1]


def test_ls_lists_every_run(tmp_path: Path) -> None:
    runs = make_store(tmp_path)
    runs[0].set_status("complete")
    runs[0].write_measure("frobenius", MeasureRecord.empty(3))
    result = invoke("store", "ls", str(tmp_path))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["run", "model", "dataset", "P", "seed", "status", "checkpoints", "measures"]
    assert lines[2].split() == ["run0", "mlp", "mnist1d", "100", "0", "complete", "3", "frobenius"]
    assert lines[3].split() == ["run1", "mlp", "mnist1d", "200", "1", "running", "3", "-"]


def test_show_prints_checkpoint_table(tmp_path: Path) -> None:
    make_store(tmp_path, n_runs=1)
    result = invoke("store", "show", str(tmp_path / "run0"))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "run run0  status running  P 100  seed 0"
    assert lines[1].split() == ["step", "epoch", "train_error", "train_loss", "test_error", "test_loss"]
    assert lines[3].split() == ["0", "0", "0.25", "-", "0.5", "-"]
    assert lines[5].split() == ["20", "2", "0.25", "-", "0.3", "-"]


def test_fsck_clean_store(tmp_path: Path) -> None:
    make_store(tmp_path)
    result = invoke("store", "fsck", str(tmp_path))
    assert result.exit_code == 0
    assert result.output.strip() == "2 run(s) checked, 2 ok, 0 with problems"


def _corrupt(run: Run, how: str) -> Path:
    path = run.path / run.checkpoints()["file"][1]
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:-10])
    elif how == "header":
        path.write_bytes(data[:8] + b"#" * 20 + data[28:])
    elif how == "sha":
        path.write_bytes(data[:-4] + b"\x00\x00\x80\x7f")  # same size, other bytes (a NaN)
    return path


@pytest.mark.parametrize(
    "how,message",
    [
        ("truncated", "truncated safetensors file"),
        ("header", "corrupted safetensors header"),
        ("sha", "sha256 mismatch"),
    ],
)
def test_fsck_names_damaged_checkpoint(tmp_path: Path, how: str, message: str) -> None:
    runs = make_store(tmp_path)
    path = _corrupt(runs[1], how)
    before = path.read_bytes()
    for args in (("store", "fsck", str(tmp_path)), ("store", "fsck", "--repair", str(tmp_path))):
        result = invoke(*args)
        assert result.exit_code == 1
        problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
        assert len(problems) == 1 and str(path) in problems[0] and message in problems[0]
        assert result.output.strip().splitlines()[-1] == "2 run(s) checked, 1 ok, 1 with problems"
    assert path.read_bytes() == before, "repair never rewrites or deletes a checkpoint"


def test_garbage_index_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    runs = make_store(tmp_path)
    runs[0].write_measure("m", MeasureRecord.empty(3))
    index = runs[0].index
    index.write_bytes(b"this is not HDF5" * 10)
    result = invoke("store", "ls", str(tmp_path))
    assert result.exit_code == 1
    assert "run1" in result.output  # the other run is listed
    assert f"{index}: damaged index" in result.output
    result = invoke("store", "show", str(runs[0].path))
    assert result.exit_code == 1 and error_line(result).startswith(f"Error: {index}: damaged index")
    result = invoke("store", "fsck", str(tmp_path))
    assert result.exit_code == 1 and f"{index}: damaged index" in result.output
    result = invoke("store", "fsck", "--repair", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "rebuilt from 3 checkpoint files" in result.output
    aside = [p for p in runs[0].path.iterdir() if p.name.startswith("run.h5.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"this is not HDF5" * 10
    rebuilt = Run(runs[0].path)
    table = rebuilt.checkpoints()
    assert table["step"].tolist() == [0, 10, 20]
    assert table["test_error"].tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert (rebuilt.P, rebuilt.seed, rebuilt.config) == (100, 0, {"lr": 0.1})
    assert rebuilt.status == "failed"  # unknown after a rebuild: resumable, never claimed complete
    assert invoke("store", "fsck", str(tmp_path)).exit_code == 0


def test_missing_index_is_rebuilt(tmp_path: Path) -> None:
    runs = make_store(tmp_path, n_runs=1)
    os.remove(runs[0].index)
    assert invoke("store", "fsck", str(tmp_path)).exit_code == 1
    result = invoke("store", "fsck", "--repair", str(tmp_path))
    assert result.exit_code == 0 and "rebuilt from 3 checkpoint files" in result.output


def test_missing_checkpoint_is_reported(tmp_path: Path) -> None:
    runs = make_store(tmp_path, n_runs=1)
    path = runs[0].path / runs[0].checkpoints()["file"][2]
    path.unlink()
    result = invoke("store", "fsck", "--repair", str(tmp_path))
    assert result.exit_code == 1
    assert f"problem: {path}: checkpoint listed in the index (row 2) is missing" in result.output


@pytest.mark.parametrize("cmd", [("store", "ls"), ("store", "fsck"), ("store", "show")])
def test_missing_path(tmp_path: Path, cmd: tuple[str, ...]) -> None:
    result = invoke(*cmd, str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert error_line(result) in (
        f"Error: {tmp_path / 'nope'}: no such store directory",
        f"Error: {tmp_path / 'nope'}: no such run directory",
    )


def test_folder_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    result = invoke("store", "ls", str(tmp_path / "photos"))
    assert result.exit_code == 1
    assert (
        error_line(result) == f"Error: {tmp_path / 'photos'}: no runs found (a store is a directory of run directories)"
    )
    result = invoke("store", "show", str(tmp_path / "photos"))
    assert result.exit_code == 1
    assert error_line(result).startswith(f"Error: {tmp_path / 'photos'}: not a normdyn run (no run.h5)")
    result = invoke("store", "fsck", str(tmp_path / "photos"))
    assert result.exit_code == 1
    f = tmp_path / "photos" / "cat.jpg"
    result = invoke("store", "ls", str(f))
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_repair_of_a_read_only_run_is_one_problem_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = make_store(tmp_path)
    for run in runs:  # each run has something to repair: its index is gone
        os.remove(run.index)
    locked = runs[0].path
    if os.geteuid() != 0:
        locked.chmod(0o555)
    else:  # root writes anywhere: make the file system refuse writes in this one directory
        real_open = os.open

        def refuse(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if Path(path).parent == locked and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    try:
        result = invoke("store", "fsck", "--repair", str(tmp_path))
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1
    assert problems[0].startswith(f"problem: {locked}: cannot repair this run (Permission denied: {locked}/")
    assert problems[0].endswith(
        "make the run directory readable and writable, then run `normdyn store fsck --repair` again"
    )
    assert f"repaired: {runs[1].index}: rebuilt from 3 checkpoint files" in result.output
    assert result.output.strip().splitlines()[-1] == "2 run(s) checked, 1 ok, 1 with problems"
