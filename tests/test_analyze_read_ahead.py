"""The read-ahead of analyze: rows in order, verified, and torch's threads while a read overlaps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normdyn.analyzers import analyze
from normdyn.core.checkpoint import ReadBuffers
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


def test_a_read_buffer_is_reused_only_once_no_tensor_of_its_checkpoint_is_alive(tmp_path: Path) -> None:
    run = _run(tmp_path, 6)
    buffers = ReadBuffers(keep=2)
    held = run.checkpoint(0, buffers=buffers).get("w")  # a view into the first buffer, kept alive
    first_ptr = held.data_ptr()
    # every later read while row 0's tensor lives goes elsewhere, however many buffers it takes:
    # overwriting that buffer would change a tensor the caller still holds
    for i in range(1, 5):
        w = run.checkpoint(i, buffers=buffers).get("w")
        assert w.data_ptr() != first_ptr
        assert torch.equal(w, torch.full((4, 4), float(i)))
        del w  # this buffer is free again at the next read
        assert torch.equal(held, torch.zeros(4, 4))
    second = run.checkpoint(5, buffers=buffers).get("w")
    assert second.data_ptr() != first_ptr
    del held
    # row 0's buffer is now free: a read fills it again, with the new row's bytes, verified
    again = run.checkpoint(3, buffers=buffers).get("w")
    assert again.data_ptr() == first_ptr
    assert torch.equal(again, torch.full((4, 4), 3.0)) and torch.equal(second, torch.full((4, 4), 5.0))


def test_read_ahead_values_equal_fresh_reads_while_the_caller_keeps_some_tensors(tmp_path: Path) -> None:
    run = _run(tmp_path, 8)
    kept = []
    for i, future in enumerate(analyze._read_ahead(str(run.path), list(range(8)))):
        w = future.result().get("w")
        if i % 3 == 0:
            kept.append((i, w))  # outlives its row: its buffer must not be read into again
    for i, w in kept:
        assert torch.equal(w, run.checkpoint(i).get("w"))
