"""CPU worker threads for work split into many independent pieces (chunks of a matrix product).

torch's own intra-op parallelism (OpenMP) ends every parallel region at a barrier where its
threads wait for each other, so a core taken by another thread (analyze's checkpoint reader
hashing the next file) stalls the whole product: a 2-thread Gram product of a 512 x 32768
float32 layer with a block of 8 took 91 ms beside a hashing thread against 49 ms with one
thread (and 49 ms with 2 threads and no other thread: MKL hardly parallelises a product this
thin; 2 CPU cores). Pieces handed out one at a time to worker threads of one intra-op thread
each have no such barrier: a worker the reader preempts takes fewer of them. The same product
in 16 column chunks ran in 28 ms on 2 workers alone and 44 ms beside the hashing thread. numpy's
BLAS (OpenBLAS in its wheels) has the same barrier and one thread count per process: while
pieces run it is held at one thread (:func:`_blas_single`; in numpy, 19.5 ms on 2 workers and
31 ms beside the hashing thread, against 63 ms for OpenBLAS's own 2 threads there).

:func:`workers` is how many such workers a caller may use: :func:`budget`'s count where a caller
set one (analyze sets the process's whole thread count while torch has one thread fewer beside
its reader), else torch's intra-op thread count of the calling thread (1 in the pool's own
workers and in single-threaded executor processes, so nothing nests). :func:`map_ordered` runs
the pieces and returns their results in order, so a caller that sums them in that order gets
the same value however the pieces were scheduled and on however many workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import torch

__all__ = ["budget", "map_ordered", "workers"]

T = TypeVar("T")
R = TypeVar("R")

_BUDGET: ContextVar[int | None] = ContextVar("normdyn_thread_budget", default=None)
_LOCK = threading.Lock()
_POOLS: dict[int, ThreadPoolExecutor] = {}  # by size, so a call runs on at most its n threads
_BLAS: dict[str, Any] = {"users": 0, "limit": None, "controller": None}
_PREFIX = "normdyn-work"  # the pool's thread names


def workers() -> int:
    """Worker threads the calling thread may split independent pieces over (at least 1)."""
    set_ = _BUDGET.get()
    return max(1, set_ if set_ is not None else torch.get_num_threads())


@contextmanager
def budget(n: int) -> Iterator[None]:
    """Within the block, :func:`workers` is ``n`` in this thread (and its context). A plain block:
    across a generator's ``yield`` the budget would leak to the consumer, and a generator closed in
    another context could not reset it."""
    token = _BUDGET.set(max(1, int(n)))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _pool(size: int) -> ThreadPoolExecutor:
    """The process's pool of ``size`` worker threads."""
    with _LOCK:
        pool = _POOLS.get(size)
        if pool is None:
            pool = _POOLS[size] = ThreadPoolExecutor(size, thread_name_prefix=_PREFIX)
        return pool


def _forget_pools() -> None:
    """In a forked child the parent's worker threads do not exist, nor its callers: new pools start
    when needed, no caller holds numpy's BLAS, and the lock is a new one (a parent's thread may have
    held it at the fork)."""
    global _LOCK
    _LOCK = threading.Lock()
    _POOLS.clear()
    if _BLAS["limit"] is not None:  # a parent's caller held it: the child gets the setting it had
        _BLAS["limit"].restore_original_limits()
    _BLAS.update(users=0, limit=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


@contextmanager
def _blas_single() -> Iterator[None]:
    """numpy's BLAS (OpenBLAS in its wheels) on one thread while any caller is inside: its thread
    count is one per process, not per thread, and its threads wait at a barrier like OpenMP's (a
    2-thread product of 8 x 512 by 512 x 32768 float32 took 63 ms beside a hashing thread against
    34 ms in one thread); the pieces are the parallelism. Other threads' numpy and scipy products
    run on one BLAS thread meanwhile too. Counted, so overlapping callers (the layer workers of the
    conv norms) restore the user's setting once, when the last one leaves. Libraries are found
    when the first caller enters (threadpoolctl's scan): a BLAS loaded later is not held."""
    with _LOCK:
        if _BLAS["users"] == 0:
            if _BLAS["controller"] is None:
                from threadpoolctl import ThreadpoolController  # scans the loaded libraries once

                _BLAS["controller"] = ThreadpoolController()
            _BLAS["limit"] = _BLAS["controller"].limit(limits=1, user_api="blas")
        _BLAS["users"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _BLAS["users"] -= 1
            if _BLAS["users"] == 0:
                _BLAS["limit"].restore_original_limits()
                _BLAS["limit"] = None


def map_ordered(fn: Callable[[T], R], items: Iterable[T], n: int | None = None) -> list[R]:
    """``[fn(item) for item in items]``, on ``n`` (default :func:`workers`) threads of one intra-op
    thread each (numpy's BLAS on one thread meanwhile, :func:`_blas_single`), the items handed
    out in order as workers free up, each run with the caller's autograd and inference modes (a
    thread's own, which a worker would not otherwise have); the first exception (in item order)
    is raised after every piece has finished or been cancelled. With one worker it runs in the
    calling thread, with one torch thread meanwhile, so every piece runs the same arithmetic
    however many workers there are; a single item runs there with the caller's threads (there is
    nothing to split, so no number of workers changes its arithmetic)."""
    todo = list(items)
    n = workers() if n is None else max(1, n)
    if threading.current_thread().name.startswith(_PREFIX):
        n = 1  # a piece that splits its own work: waiting on its own pool could take every worker
    own = torch.get_num_threads()
    with _blas_single():
        if len(todo) <= 1:
            return [fn(item) for item in todo]
        if n == 1:
            torch.set_num_threads(1)  # each piece on one thread wherever it runs: the same arithmetic
            try:
                return [fn(item) for item in todo]
            finally:
                torch.set_num_threads(own)
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(item: T) -> R:
            torch.set_num_threads(1)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(item)

        pool = _pool(n)
        futures: list[Future[R]] = []
        try:
            for item in todo:
                futures.append(pool.submit(run, item))
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            wait(futures)  # none still writes into the caller's buffers
            # torch.set_num_threads also sets the count every thread started later begins with (and
            # that the pool's threads report when they next ask): the workers' 1 would otherwise
            # leave later threads of the process (a user's, Dask's) on one thread; the caller's
            # setting of its own count puts that back
            torch.set_num_threads(own)
