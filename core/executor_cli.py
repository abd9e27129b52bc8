"""Click options that choose an executor, shared by ``sweep`` and ``analyze``.

Decorate a command with :func:`executor_options`; the command receives one
keyword argument ``executor_opts`` (a dict) to pass on as
``map_tasks(fn, tasks, **executor_opts)``. The dict holds ``executor`` and
``jobs`` plus only the Dask options the user gave, so the local executor
never sees one. The options are checked before the command body runs, and
``--job-script`` prints the batch script and exits without running the
command at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from normdyn.core.executor import CLUSTERS, EXECUTORS, dask_options, job_script

__all__ = ["executor_options"]

_DASK_OPTIONS = (
    "scheduler",
    "cluster",
    "queue",
    "account",
    "walltime",
    "cores",
    "memory",
    "gpus",
    "interface",
    "retries",
)


def _collect(executor: str, jobs: int, given: dict[str, Any]) -> dict[str, Any]:
    """The ``executor_opts`` dict, checked (no network access here)."""
    opts: dict[str, Any] = {"executor": executor, "jobs": jobs}
    dask_given = {k: v for k, v in given.items() if v is not None}
    if executor == "local" and dask_given:
        flags = ", ".join(f"--{k}" for k in dask_given)
        raise click.UsageError(f"{flags}: only with --executor dask")
    if executor == "dask":
        dask_options(jobs, dask_given)
    opts.update(dask_given)
    return opts


def executor_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--executor``, ``--jobs`` and the Dask options; collect them into ``executor_opts``."""

    @click.option(
        "--executor",
        type=click.Choice(EXECUTORS),
        default="local",
        show_default=True,
        help="Where tasks run: a local process pool, or Dask (pip install normdyn[dask]).",
    )
    @click.option(
        "--jobs",
        "-j",
        type=int,
        default=1,
        show_default=True,
        help="local: worker processes. dask --cluster: most batch jobs at once. "
        "dask alone: local Dask worker processes.",
    )
    @click.option(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="dask: address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786.",
    )
    @click.option(
        "--cluster",
        type=click.Choice(tuple(CLUSTERS)),
        default=None,
        help="dask: start workers as batch jobs on this system (dask-jobqueue).",
    )
    @click.option("--queue", default=None, help="--cluster: queue / partition (default: the site's).")
    @click.option("--account", default=None, help="--cluster: accounting string (-A).")
    @click.option("--walltime", default=None, help="--cluster: wall time per job, [D-]HH:MM:SS.")
    @click.option(
        "--cores",
        type=int,
        default=None,
        help="--cluster: CPUs per job; the job runs that many single-threaded tasks at once.",
    )
    @click.option("--memory", default=None, help="--cluster: memory per job, e.g. 16GiB.")
    @click.option("--gpus", type=int, default=None, help="--cluster: GPUs per job.")
    @click.option("--interface", default=None, help="--cluster: network interface for workers, e.g. ib0.")
    @click.option(
        "--retries",
        type=int,
        default=None,
        help="dask: reruns of a task that raised [default: 2]; tasks resume, so reruns are safe.",
    )
    @click.option(
        "--job-script",
        "show_job_script",
        is_flag=True,
        help="--cluster: print the batch job script and exit without running anything.",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, executor: str, jobs: int, show_job_script: bool, **kwargs: Any) -> Any:
        given = {k: kwargs.pop(k) for k in _DASK_OPTIONS}
        opts = _collect(executor, jobs, given)
        if show_job_script:
            if executor != "dask":
                raise click.UsageError("--job-script needs --executor dask --cluster slurm|pbs")
            click.echo(job_script(jobs, **{k: v for k, v in opts.items() if k not in ("executor", "jobs")}), nl=False)
            click.get_current_context().exit(0)
        return command(*args, executor_opts=opts, **kwargs)

    return wrapper
