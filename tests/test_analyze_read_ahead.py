"""The read-ahead of analyze: rows in order, verified, and torch's threads while a read overlaps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normdyn.analyzers import analyze
from normdyn.core.store import Run


def _run(tmp_path: Path, n: int) -> Run:
    run = Run.create(tmp_path, "r", config={}, model_spec={"layers": []}, dataset={"name": "x"}, P=1, seed=0)
    for i in range(n):
        run.append_checkpoint({"w": torch.full((4, 4), float(i))}, step=i, epoch=float(i), metrics={})
    return run


@pytest.mark.parametrize("bound,expected", [(float("inf"), [2, 1, 1]), (0.0, [2, 2, 2])])
def test_threads_are_fewer_while_a_read_overlaps_unless_computing_dwarfs_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: float, expected: list[int]
) -> None:
    run = _run(tmp_path, 3)
    # the threshold decides, not the clock: inf never counts a row as compute-bound, 0 always does
    monkeypatch.setattr(analyze, "_COMPUTE_BOUND", bound)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen, values = [], []
        for future in analyze._read_ahead(str(run.path), [0, 1, 2]):
            seen.append(torch.get_num_threads())  # the threads the caller computes this row with
            values.append(float(future.result().get("w")[0, 0]))
        assert values == [0.0, 1.0, 2.0]
        # the first row is worked on alone with both threads (its successor is read after it); with
        # 0 every later row gets both too, with inf none does (a read overlaps each)
        assert seen == expected
        assert torch.get_num_threads() == 2  # restored when the rows are done
    finally:
        torch.set_num_threads(threads)
