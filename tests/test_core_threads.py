"""normdyn.core.threads: the worker budget, ordered results, one thread per piece, numpy's BLAS held and restored."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from normdyn.core import threads


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_workers_follow_torch_unless_a_budget_is_set() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert threads.workers() == 2
        with threads.budget(3):
            assert threads.workers() == 3
            with threads.budget(0):  # never below one
                assert threads.workers() == 1
            assert threads.workers() == 3
        assert threads.workers() == 2
        seen: list[int] = []
        with threads.budget(5):  # a budget is the setting thread's own: a new thread has none
            t = threading.Thread(target=lambda: seen.append(threads.workers()))
            t.start()
            t.join()
        assert seen == [2]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_results_come_in_item_order_on_at_most_n_single_threaded_workers(n: int) -> None:
    lock = threading.Lock()
    running, peak, torch_threads, names = [0], [0], set(), set()

    def fn(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            torch_threads.add(torch.get_num_threads())
            names.add(threading.current_thread().name)
        time.sleep(0.002 * (8 - i))  # the first items finish last
        with lock:
            running[0] -= 1
        return i * i

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert threads.map_ordered(fn, range(8), n) == [i * i for i in range(8)]
        assert torch.get_num_threads() == 2  # the caller's own count, back after a 1-worker call
    finally:
        torch.set_num_threads(before)
    assert peak[0] <= n and torch_threads == {1}  # every piece ran on one torch thread
    if n == 1:
        assert names == {threading.current_thread().name}  # in the calling thread
    else:
        assert peak[0] == n and all(name.startswith("normdyn-work") for name in names)


def test_the_first_failing_item_raises_after_the_rest_are_done() -> None:
    finished: list[int] = []

    def fn(i: int) -> int:
        time.sleep(0.01 if i == 3 else 0.0)
        if i in (1, 3):
            raise ValueError(f"item {i}")
        finished.append(i)
        return i

    with pytest.raises(ValueError, match="item 1"):  # the first in item order, not in time
        threads.map_ordered(fn, range(6), 2)
    snapshot = sorted(finished)
    time.sleep(0.05)
    assert sorted(finished) == snapshot  # nothing still running after the call returned


def test_numpy_blas_is_one_thread_inside_and_restored_once_by_the_last_caller() -> None:
    if not _blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl controls")
    outside = _blas_threads()
    # read in the calling thread (a 1-worker call runs there): OpenBLAS reports the count of the
    # thread that set it, so the reading is made where the setting was
    assert threads.map_ordered(lambda i: _blas_threads(), range(2), 1) == [[1] * len(outside)] * 2
    assert _blas_threads() == outside

    def nested(_: int) -> list[int]:
        threads.map_ordered(lambda i: i, range(3), 1)  # an inner caller leaves first
        return _blas_threads()  # and must not have given the outer one its threads back

    assert threads.map_ordered(nested, range(2), 1) == [[1] * len(outside)] * 2
    assert _blas_threads() == outside

    gate = threading.Barrier(2)

    def caller(hold: float) -> None:
        gate.wait()
        threads.map_ordered(lambda i: time.sleep(hold), range(3), 1)

    # two callers in two threads whose calls overlap (the conv norms' layer workers): the setting
    # found before is back once both have left
    pair = [threading.Thread(target=caller, args=(hold,)) for hold in (0.0, 0.02)]
    for t in pair:
        t.start()
    for t in pair:
        t.join()
    assert threads._BLAS["users"] == 0 and _blas_threads() == outside
    # and a piece's product is numpy's usual one
    x = np.arange(12.0).reshape(3, 4)
    assert threads.map_ordered(lambda i: float((x @ x.T)[i, i]), range(3), 2) == [14.0, 126.0, 366.0]


def test_a_piece_that_splits_its_own_work_runs_it_in_place() -> None:
    # every worker of a 2-thread pool waiting on pieces queued behind it would never finish: inside
    # a worker, map_ordered runs in the calling thread whatever n it is given
    def outer(i: int) -> list[str]:
        return threads.map_ordered(lambda j: threading.current_thread().name, range(3), 2)

    for names in threads.map_ordered(outer, range(4), 2):
        assert len(set(names)) == 1 and names[0].startswith("normdyn-work")


def test_pieces_run_in_the_callers_autograd_and_inference_modes() -> None:
    def modes(_: int) -> tuple[bool, bool]:
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    # both are a thread's own: a worker would otherwise compute with grad on and inference off
    with torch.inference_mode():
        assert set(threads.map_ordered(modes, range(4), 2)) == {(False, True)}
    with torch.no_grad():
        assert set(threads.map_ordered(modes, range(4), 2)) == {(False, False)}
    assert set(threads.map_ordered(modes, range(4), 2)) == {(True, False)}


def test_a_thread_started_after_the_pieces_begins_with_the_callers_thread_count() -> None:
    # torch.set_num_threads also sets the count later threads begin with: the workers' 1 must not
    # stay the process's default
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads.map_ordered(lambda i: torch.get_num_threads(), range(6), 2)
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
