"""Crash safety: a writer killed with SIGKILL at random moments leaves a store
that fsck passes or repairs, losing no checkpoint whose write had completed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from normdyn.core.checkpoint import CheckpointFile
from normdyn.core.fsck import fsck_run
from normdyn.core.store import Run

WRITER = r"""
import sys, numpy as np, torch
from normdyn.core.store import Run, MeasureRecord
store, run_id = sys.argv[1], sys.argv[2]
run = Run.create(store, run_id, config={"c": 1}, model_spec={"name": "m"}, dataset={"name": "d"},
                 P=10, seed=0, exist_ok=True)
print("created", flush=True)
for step in range(1000):
    run.append_checkpoint({"w": torch.full((500_000,), float(step)), "b": torch.ones(3)},
                          step=step, epoch=float(step), metrics={"test_error": 1.0 / (step + 1)})
    print("done", step, flush=True)
    n = len(run)
    rec = MeasureRecord(np.arange(n, dtype=float), sha256=list(run.checkpoints()["sha256"]))
    run.write_measure("m", rec)
    print("measured", step, flush=True)
"""


def _kill_at_random(store: Path, run_id: str, delay: float) -> list[int]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store), run_id], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "created"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return [int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("done")]


def test_sigkill_during_appends_loses_nothing_completed(tmp_path: Path) -> None:
    rng = random.Random(1234)
    for trial in range(4):
        run_id = f"run{trial}"
        completed = _kill_at_random(tmp_path, run_id, rng.uniform(0.05, 0.8))
        run_dir = tmp_path / run_id
        repaired = fsck_run(run_dir, repair=True)
        assert repaired.ok, repaired.problems
        after = fsck_run(run_dir)
        assert after.ok and not after.repaired, after.problems
        run = Run(run_dir)
        table = run.checkpoints()
        steps = table["step"].tolist()
        assert steps == list(range(len(steps))), "rows are unique and ordered"
        assert set(completed) <= set(steps), f"trial {trial}: lost completed checkpoints"
        assert len(steps) <= (max(completed) + 2 if completed else 1)
        for i, rel in enumerate(table["file"]):
            ck = CheckpointFile(run_dir / rel)  # every file under its final name is whole
            assert float(ck.get("w")[0]) == float(steps[i])
        names = {p.name for p in (run_dir / "ckpt").iterdir()}
        assert names == {Path(f).name for f in table["file"]}, "no temporary or stray files left"
        rec = run.read_measure("m")
        if rec is not None:  # measures survive, aligned with the (possibly grown) table
            assert len(rec.values) == len(steps)
            assert np.all(np.isnan(rec.values) | (rec.values == np.arange(len(steps))))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_writer_removes_temporaries_of_dead_writers_only(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", config={}, model_spec={}, dataset={}, P=1, seed=0)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_index = run.path / f".tmp-{_dead_pid()}-run.h5"  # what a SIGKILL during an index write leaves
        dead_ckpt = run.path / "ckpt" / f".tmp-{_dead_pid()}-step-0000000005.safetensors"
        live = run.path / f".tmp-{sleeper.pid}-run.h5"  # a writer still at work: never touched
        for p in (dead_index, dead_ckpt, live):
            p.write_bytes(b"partial")
        report = fsck_run(run.path)
        assert report.problems == [
            f"{dead_index}: stale temporary file from an interrupted write",
            f"{dead_ckpt}: stale temporary file from an interrupted write",
        ]
        run.append_checkpoint({"w": torch.ones(2)}, step=0, epoch=0.0)
        assert not dead_index.exists() and not dead_ckpt.exists()
        assert live.read_bytes() == b"partial"
        assert fsck_run(run.path).ok  # a later successful run leaves a store fsck passes, no --repair
    finally:
        sleeper.kill()
        sleeper.wait()
