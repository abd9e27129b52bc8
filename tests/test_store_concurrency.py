"""Two processes writing measures into one run never lose each other's results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from normdyn.core.fsck import fsck_run
from normdyn.core.store import Run

WRITER = r"""
import sys, numpy as np
from normdyn.core.store import Run, MeasureRecord
run = Run(sys.argv[1]); name = sys.argv[2]
n = len(run)
for i in range(25):
    rec = run.read_measure(name) or MeasureRecord.empty(n)
    rec.values[i % n] = i
    rec.sha256[i % n] = f"{i:064d}"
    run.write_measure(name, rec)
"""


def test_concurrent_measure_writers(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "r", config={}, model_spec={}, dataset={}, P=1, seed=0)
    for s in range(5):
        run.append_checkpoint({"w": torch.ones(3) * s}, step=s, epoch=float(s))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(run.path), name]) for name in ("alpha", "beta")]
    assert [p.wait() for p in procs] == [0, 0]
    assert run.measures() == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        rec = run.read_measure(name)
        assert rec is not None
        np.testing.assert_array_equal(rec.values, [20, 21, 22, 23, 24])
        assert rec.sha256 == [f"{i:064d}" for i in range(20, 25)]
    assert fsck_run(run.path).ok
