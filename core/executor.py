"""Running independent tasks (training runs, per-run analyses) in parallel.

One interface serves ``normdyn sweep`` and ``normdyn analyze``:
:func:`map_tasks` applies a top-level (picklable) function to each task and
yields ``(task, outcome)`` pairs as they finish, where outcome is the result
or the exception the task raised: one failing task never stops the others.

Executors:

- ``local``: a process pool of ``jobs`` workers; ``jobs=1`` runs in this
  process, which keeps tracebacks and debuggers simple.
- ``dask``: Dask distributed (the optional ``normdyn[dask]`` extra), on an
  existing cluster (``scheduler="tcp://HOST:PORT"``), on batch jobs started
  through dask-jobqueue (``cluster="slurm"|"pbs"``, up to ``jobs`` jobs), or,
  with neither, on a local Dask cluster of ``jobs`` worker processes.

Tasks must be idempotent: Dask reruns a task whose worker died (and, with
``retries``, one that raised), so a task must resume rather than redo its
work. normdyn's tasks are: a training task resumes from its last checkpoint,
an analysis task computes only the missing measure rows. Every option is
checked, and a scheduler connected to, before the first task is submitted.
Dask is imported inside functions only, so core imports without it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from normdyn.core.errors import ConfigError

__all__ = ["EXECUTORS", "CLUSTERS", "DaskOptions", "dask_options", "job_script", "map_tasks"]

T = TypeVar("T")
EXECUTORS = ("local", "dask")
# cluster kind -> (dask_jobqueue class, the batch system's submit command)
CLUSTERS: dict[str, tuple[str, str]] = {"slurm": ("SLURMCluster", "sbatch"), "pbs": ("PBSCluster", "qsub")}
INSTALL_HINT = "pip install normdyn[dask]"
# The preview has no scheduler yet; the real script names the one started at submit time.
PREVIEW_SCHEDULER = "tcp://<scheduler-address>:8786"
_BATCH_OPTIONS = ("queue", "account", "walltime", "cores", "memory", "gpus", "interface")
_WALLTIME_RE = re.compile(r"^(\d+-)?\d+(:\d{2}){0,2}$")


@dataclass(frozen=True)
class DaskOptions:
    """Validated options of the ``dask`` executor (see :func:`dask_options`)."""

    scheduler: str | None = None  # address of an existing scheduler, e.g. tcp://10.0.0.5:8786
    cluster: str | None = None  # batch system to start workers on: a key of CLUSTERS
    queue: str | None = None  # batch queue / partition (None: the site's default)
    account: str | None = None  # accounting string (-A)
    walltime: str | None = None  # per job, [D-]HH:MM:SS
    cores: int | None = None  # CPUs per job = single-threaded worker processes per job = tasks at once per job
    memory: str | None = None  # memory per job, e.g. "16GiB" (shared by the job's worker processes)
    gpus: int = 0  # GPUs per job (SLURM --gres=gpu:N, PBS ngpus=N)
    interface: str | None = None  # network interface the workers listen on, e.g. ib0
    retries: int = 2  # reruns of a task that raised (a task whose worker died is rerun regardless)
    connect_timeout: float = 10.0  # seconds to reach a scheduler before giving up


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"--executor dask needs Dask distributed, which is not installed: {INSTALL_HINT}") from None
    return distributed


def _import_jobqueue() -> Any:
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(f"--cluster needs dask-jobqueue, which is not installed: {INSTALL_HINT}") from None
    return dask_jobqueue


def dask_options(jobs: int, options: Mapping[str, Any]) -> DaskOptions:
    """Check the ``dask`` executor's options (without any network access).

    Raises :class:`ConfigError` naming the option for an unknown option, an
    unknown cluster kind, a bad value, or a combination that cannot work,
    and saying what to install when Dask or dask-jobqueue is missing.
    """
    _import_distributed()
    known = {f.name for f in fields(DaskOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"executor 'dask' has no option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    opts = DaskOptions(**options)
    if opts.scheduler is not None and opts.cluster is not None:
        raise ConfigError("give either --scheduler (an existing Dask cluster) or --cluster (start one), not both")
    if opts.cluster is not None and opts.cluster not in CLUSTERS:
        raise ConfigError(f"unknown cluster kind {opts.cluster!r}; supported: {', '.join(CLUSTERS)}")
    if opts.cluster is not None:
        _import_jobqueue()
    if opts.scheduler is not None and jobs != 1:
        raise ConfigError(
            f"--jobs {jobs} has no effect with --scheduler: the cluster at {opts.scheduler} has its own workers"
        )
    if opts.cluster is None:
        batch = [name for name in _BATCH_OPTIONS if getattr(opts, name) not in (None, 0)]
        if batch:
            raise ConfigError(f"--{', --'.join(batch)}: batch-job options need --cluster {'|'.join(CLUSTERS)}")
    if opts.cores is not None and opts.cores < 1:
        raise ConfigError(f"--cores {opts.cores}: must be >= 1")
    if opts.gpus < 0:
        raise ConfigError(f"--gpus {opts.gpus}: must be >= 0")
    if opts.retries < 0:
        raise ConfigError(f"--retries {opts.retries}: must be >= 0")
    if opts.walltime is not None and not _WALLTIME_RE.match(opts.walltime):
        raise ConfigError(f"--walltime {opts.walltime!r}: use [D-]HH:MM:SS, e.g. 04:00:00 or 1-12:00:00")
    if opts.memory is not None:
        from dask.utils import parse_bytes

        try:
            parse_bytes(opts.memory)
        except (ValueError, TypeError):
            raise ConfigError(f"--memory {opts.memory!r}: not a size; use e.g. 16GiB or 4000MB") from None
    return opts


def _jobqueue_kwargs(opts: DaskOptions) -> tuple[Any, dict[str, Any]]:
    """The dask_jobqueue cluster class and its keyword arguments for ``opts``.

    Options left unset fall back to the site's ``~/.config/dask/jobqueue.yaml``.
    Each worker process is single-threaded (processes = cores), so a task
    runs alone in its process exactly as with the local executor: training
    code may rely on process-global state such as torch's RNG.
    """
    import dask

    jobqueue = _import_jobqueue()
    kind = str(opts.cluster)
    cls = getattr(jobqueue, CLUSTERS[kind][0])
    config = f"jobqueue.{kind}"
    cores = opts.cores if opts.cores is not None else dask.config.get(f"{config}.cores", None) or 1
    memory = opts.memory if opts.memory is not None else dask.config.get(f"{config}.memory", None)
    if memory is None:
        raise ConfigError(
            f"--cluster {kind} needs --memory (per job, e.g. 16GiB) or jobqueue.{kind}.memory in the Dask config"
        )
    kwargs: dict[str, Any] = {"cores": cores, "processes": cores, "memory": memory}
    kwargs.update(
        {
            k: v
            for k, v in (
                ("queue", opts.queue),
                ("account", opts.account),
                ("walltime", opts.walltime),
                ("interface", opts.interface),
            )
            if v is not None
        }
    )
    # Every process would otherwise start one BLAS/torch thread per core of the node.
    kwargs["job_script_prologue"] = [*dask.config.get(f"{config}.job-script-prologue", []), "export OMP_NUM_THREADS=1"]
    if opts.gpus and kind == "slurm":
        kwargs["job_extra_directives"] = [
            *dask.config.get(f"{config}.job-extra-directives", []),
            f"--gres=gpu:{opts.gpus}",
        ]
    if opts.gpus and kind == "pbs":
        from dask.utils import parse_bytes
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        kwargs["resource_spec"] = (
            f"select=1:ncpus={cores}:mem={pbs_format_bytes_ceil(parse_bytes(memory))}:ngpus={opts.gpus}"
        )
    return cls, kwargs


def job_script(jobs: int = 1, **options: Any) -> str:
    """The batch job script that ``--executor dask --cluster KIND`` would submit.

    Nothing is started: no scheduler, no job. The scheduler address in the
    preview is a placeholder; the submitted script names the real one.
    """
    opts = dask_options(jobs, options)
    if opts.cluster is None:
        raise ConfigError(f"--job-script previews a batch job: add --cluster {'|'.join(CLUSTERS)}")
    cls, kwargs = _jobqueue_kwargs(opts)
    return str(cls.job_cls(PREVIEW_SCHEDULER, name="normdyn-worker", **kwargs).job_script())


def _probe_scheduler(address: str, timeout: float) -> None:
    """Open and close one connection to ``address``, or raise a ConfigError naming it.

    A probe rather than a failing ``Client``: a client whose connection failed
    lingers with its event loop and complains again at interpreter exit.
    """
    from distributed.comm import connect
    from distributed.security import Security

    async def probe() -> None:
        comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
        await comm.close()

    # A fresh event loop in a thread of its own works even when the caller runs one (Jupyter).
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result()
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
                f"({type(exc).__name__}: {exc}); check the address and that `dask scheduler` runs there"
            ) from None


def _dask_client(opts: DaskOptions, jobs: int, stack: ExitStack) -> Any:
    """Connect a client (starting a cluster if asked); cleanup goes on ``stack``."""
    distributed = _import_distributed()
    if opts.scheduler is not None:
        _probe_scheduler(opts.scheduler, opts.connect_timeout)
        return stack.enter_context(
            distributed.Client(opts.scheduler, timeout=opts.connect_timeout, set_as_default=False)
        )
    if opts.cluster is not None:
        cls, kwargs = _jobqueue_kwargs(opts)
        submit = CLUSTERS[opts.cluster][1]
        if shutil.which(submit) is None:
            raise ConfigError(
                f"--cluster {opts.cluster}: `{submit}` is not on PATH; run normdyn on a login node of the "
                f"{opts.cluster.upper()} cluster (preview the job script with --job-script)"
            )
        cluster = stack.enter_context(cls(**kwargs))
        # Adaptive scaling replaces jobs lost to preemption or walltime while tasks remain.
        cluster.adapt(minimum_jobs=0, maximum_jobs=jobs)
    else:
        cluster = stack.enter_context(distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True))
    return stack.enter_context(distributed.Client(cluster, set_as_default=False))


def _dask_map(
    fn: Callable[[T], Any], tasks: list[T], client: Any, retries: int, stack: ExitStack
) -> Iterator[tuple[T, Any]]:
    from distributed import as_completed as dask_as_completed

    with stack:
        # pure=False: two equal tasks are two runs; retries: idempotent tasks may rerun safely.
        futures = {client.submit(fn, t, retries=retries, pure=False): t for t in tasks}
        for fut in dask_as_completed(futures, loop=client.loop):
            failure = fut.exception()
            yield futures[fut], failure if failure is not None else fut.result()


def _local(fn: Callable[[T], Any], tasks: list[T], jobs: int) -> Iterator[tuple[T, Any]]:
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            try:
                yield task, fn(task)
            except Exception as exc:  # reported per task by the caller
                yield task, exc
        return
    # forkserver, not fork: a child forked after torch has started its thread
    # pool in this process can deadlock; workers import what the task needs.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("forkserver")) as pool:
        futures = {pool.submit(fn, t): t for t in tasks}
        for fut in as_completed(futures):
            failure = fut.exception()
            yield futures[fut], failure if failure is not None else fut.result()


def map_tasks(
    fn: Callable[[T], Any], tasks: Iterable[T], *, executor: str = "local", jobs: int = 1, **options: Any
) -> Iterator[tuple[T, Any]]:
    """Apply ``fn`` to every task; yield ``(task, result_or_exception)`` as each finishes.

    ``options`` are the ``dask`` executor's (fields of :class:`DaskOptions`).
    Everything is validated, and a Dask scheduler connected to, before this
    returns, so a bad option or an unreachable scheduler fails before any
    task starts. ``fn``, tasks and results must be picklable; ``fn`` must be
    importable on Dask workers (same normdyn installed there).
    """
    tasks = list(tasks)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if executor == "local":
        if options:
            raise ConfigError(f"executor 'local' does not take {', '.join(sorted(options))}; add --executor dask")
        return _local(fn, tasks, jobs)
    if executor == "dask":
        opts = dask_options(jobs, options)
        stack = ExitStack()
        try:
            client = _dask_client(opts, jobs, stack)
        except BaseException:
            stack.close()
            raise
        return _dask_map(fn, tasks, client, opts.retries, stack)
    raise ConfigError(f"unknown executor {executor!r}; available: {', '.join(EXECUTORS)}")
