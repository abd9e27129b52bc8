"""Running independent tasks (training runs, per-run analyses) in parallel.

One interface serves ``normdyn sweep`` and ``normdyn analyze``:
:func:`map_tasks` applies a top-level (picklable) function to each task and
yields ``(task, outcome)`` pairs as they finish, where outcome is the result
or the exception the task raised: one failing task never stops the others.

Executors: ``local`` (a process pool of ``jobs`` workers; ``jobs=1`` runs in
this process, which keeps tracebacks and debuggers simple).
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Iterator, TypeVar

from normdyn.core.errors import ConfigError

__all__ = ["EXECUTORS", "map_tasks"]

T = TypeVar("T")
EXECUTORS = ("local",)


def _local(fn: Callable[[T], Any], tasks: list[T], jobs: int) -> Iterator[tuple[T, Any]]:
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            try:
                yield task, fn(task)
            except Exception as exc:  # reported per task by the caller
                yield task, exc
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(fn, t): t for t in tasks}
        for fut in as_completed(futures):
            exc = fut.exception()
            yield futures[fut], exc if exc is not None else fut.result()


def map_tasks(fn: Callable[[T], Any], tasks: Iterable[T], *, executor: str = "local", jobs: int = 1,
              **options: Any) -> Iterator[tuple[T, Any]]:
    """Apply ``fn`` to every task; yield ``(task, result_or_exception)`` as each finishes."""
    tasks = list(tasks)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if executor == "local":
        if options:
            raise ConfigError(f"executor 'local' takes no options (got {', '.join(sorted(options))})")
        return _local(fn, tasks, jobs)
    raise ConfigError(f"unknown executor {executor!r}; available: {', '.join(EXECUTORS)}")
