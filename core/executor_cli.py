"""Click options that choose an executor, shared by ``sweep`` and ``analyze``.

Decorate a command with :func:`executor_options`; the command receives one
keyword argument ``executor_opts`` (a dict) to pass on as
``map_tasks(fn, tasks, **executor_opts)``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import click

from normdyn.core.executor import EXECUTORS

__all__ = ["executor_options"]


def executor_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--executor`` and ``--jobs``; collect them into ``executor_opts``."""

    @click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                  help="Where tasks run: a local process pool.")
    @click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Parallel local worker processes.")
    @functools.wraps(command)
    def wrapper(*args: Any, executor: str, jobs: int, **kwargs: Any) -> Any:
        return command(*args, executor_opts={"executor": executor, "jobs": jobs}, **kwargs)

    return wrapper
