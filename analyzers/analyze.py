"""Running complexity measures over the stored checkpoints of runs, incrementally.

One task is one run (so no two workers ever write one ``run.h5``). Inside a
run, checkpoints are visited in order and every requested measure is
computed on each: a checkpoint is read once, measures share intermediate
results through the view's cache, and each measure's ``state`` carries warm
starts from one checkpoint to the next. The hash-verified read of the next
checkpoint runs on a reader thread while the measures compute on this one
(reading and sha256 release the GIL), so a run costs about the larger of the
two, not their sum; at most two checkpoints are in memory at once.

A row of measure M is skipped when its stored record has the same checkpoint
sha256, M's version and M's params, and no error; ``force`` recomputes.
A failure (unreadable checkpoint, a hash that no longer matches, tensors or
a layer spec that do not fit, non-finite weights, an order-dependent measure
on a guessed layer order, a measure raising) stores NaN and the error
message in that row and the batch goes on. A run that cannot be analysed at
all (no checkpoints, a damaged index) is one error of the batch.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from normdyn.core import plugins, threads
from normdyn.core.checkpoint import CheckpointFile, ReadBuffers
from normdyn.core.errors import ConfigError, NormdynError, StoreError
from normdyn.core.executor import map_tasks
from normdyn.core.store import MeasureRecord, Run, scan_runs
from normdyn.core.view import CheckpointView, RunContext

__all__ = [
    "DEFAULT_MEASURES",
    "RunTask",
    "RunOutcome",
    "AnalyzeSummary",
    "analyze_run",
    "analyze_store",
    "select_runs",
    "resolve_measures",
    "missing_needs",
    "check_device",
]

#: What ``normdyn analyze`` computes without ``--measure`` (the paper's complexity measure).
DEFAULT_MEASURES = ("spectral_complexity",)
_FLUSH_SECONDS = 60.0  # write partial results of long runs this often, so an interruption loses little


@dataclass(frozen=True)
class RunTask:
    """One run to analyse (picklable: sent to worker processes)."""

    run_path: str
    measures: tuple[str, ...]
    force: bool = False
    device: str = "cpu"
    data_root: str | None = None
    progress: bool = False


@dataclass
class RunOutcome:
    """Counts of (checkpoint, measure) pairs, and what failed (message per item)."""

    run_path: str
    computed: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class AnalyzeSummary:
    """The result of :func:`analyze_store`: totals and one outcome per run."""

    outcomes: list[RunOutcome] = field(default_factory=list)
    run_errors: list[str] = field(default_factory=list)

    @property
    def computed(self) -> int:
        return sum(o.computed for o in self.outcomes)

    @property
    def skipped(self) -> int:
        return sum(o.skipped for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(o.failed for o in self.outcomes) + len(self.run_errors)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        return f"{len(self.outcomes)} run(s): {self.computed} computed, {self.skipped} skipped, {self.failed} failed"


def resolve_measures(names: Sequence[str] | None) -> list[Any]:
    """The Measure objects called ``names`` (default :data:`DEFAULT_MEASURES`).

    An unknown name raises UnknownNameError listing the available measures.
    """
    reg = plugins.registry("measures")
    chosen = list(dict.fromkeys(names or DEFAULT_MEASURES))
    return [reg.get(n) for n in chosen]


class _Records:
    """The stored records of one measure in one run, updated row by row."""

    def __init__(self, run: Run, measure: Any, owner: str, n: int, sha: list[str]):
        self.measure = measure
        self.owner = owner
        self.n = n
        self.sha = sha
        self.params = _json_params(measure.params)
        names = [m for m in run.measures() if m == measure.name or m.startswith(measure.name + ".")]
        self.records: dict[str, MeasureRecord] = {}
        for name in names:
            rec = run.read_measure(name)
            if rec is not None:
                self.records[name] = _fit(rec, n)
        self.dirty: set[str] = set()

    def done(self, row: int) -> bool:
        """True when every record of this measure holds a valid value for ``row``."""
        if not self.records:
            return False
        for rec in self.records.values():
            if (
                rec.version != str(self.measure.version)
                or rec.params != self.params
                or rec.sha256[row] != self.sha[row]
                or row in rec.errors
            ):
                return False
        return True

    def _record(self, name: str) -> MeasureRecord:
        rec = self.records.get(name)
        if rec is None or rec.version != str(self.measure.version) or rec.params != self.params:
            # a new version or new params make every older value stale: start the record afresh
            rec = MeasureRecord.empty(self.n, plugin=self.owner, version=str(self.measure.version), params=self.params)
            self.records[name] = rec
        self.dirty.add(name)
        return rec

    def store(self, row: int, value: float | dict[str, float]) -> None:
        """Store a computed value (or dict of values) for ``row``."""
        items = (
            {self.measure.name: value}
            if not isinstance(value, dict)
            else {f"{self.measure.name}.{k}": v for k, v in value.items()}
        )
        for name in list(self.records):
            if name not in items:  # a key not returned this time (or a failure record): no value, no error
                items[name] = math.nan
        for name, v in items.items():
            rec = self._record(name)
            rec.values[row] = float(v)
            rec.sha256[row] = self.sha[row]
            rec.errors.pop(row, None)

    def fail(self, row: int, message: str) -> None:
        """Record NaN and ``message`` for ``row`` in every record of the measure."""
        for name in list(self.records) or [self.measure.name]:
            rec = self._record(name)
            rec.values[row] = math.nan
            rec.sha256[row] = self.sha[row]
            rec.errors[row] = message

    def flush(self, run: Run) -> None:
        """Write the changed records (resized to the run's current length)."""
        n = len(run)
        for name in sorted(self.dirty):
            run.write_measure(name, _fit(self.records[name], n))
        self.dirty.clear()


def _json_params(params: Any) -> dict[str, Any]:
    # round-trip through JSON so tuples compare equal to the lists read back from run.h5
    return json.loads(json.dumps(dict(params), sort_keys=True))


def _fit(rec: MeasureRecord, n: int) -> MeasureRecord:
    """``rec`` with exactly ``n`` rows (new checkpoints appended meanwhile get NaN)."""
    m = len(rec.values)
    if m == n:
        return rec
    values = np.full(n, np.nan)
    values[: min(m, n)] = rec.values[:n]
    sha = (list(rec.sha256) + [""] * n)[:n]
    return MeasureRecord(
        values, rec.plugin, rec.version, rec.params, sha, {k: v for k, v in rec.errors.items() if k < n}
    )


def _nonfinite_message(view: CheckpointView, measure: str) -> str:
    bad = view.nonfinite_tensors()
    if bad:
        return f"{view.label}: tensor(s) {', '.join(bad[:5])} hold NaN or inf values; the checkpoint is unusable"
    return f"{measure} returned a non-finite value"


def _read_message(exc: Exception, path: Path) -> str:
    """Why the checkpoint at ``path`` could not be read, naming the file."""
    if isinstance(exc, NormdynError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{path}: cannot read the checkpoint ({exc.strerror})"
    return f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})"


def _checkpoint_table(run: Run) -> dict[str, np.ndarray]:
    """The run's ``/checkpoints`` table (complete, or a StoreError); a StoreError when it lists nothing."""
    table = run.checkpoints()
    if not len(table["sha256"]):
        raise StoreError(f"{run.path}: no checkpoints to analyse (its index lists none)")
    return table


_SUPPLY = {
    "model": (
        "the run has no model spec naming a model family; import it with `normdyn import --model-factory "
        "MODULE:CALLABLE --input-shape C,H,W` (your own architecture) or `--model SPEC` (a built-in family)"
    ),
    "data": (
        "the run has no dataset spec; import it with `normdyn import --dataset '{\"name\": ...}'` "
        "(and `normdyn analyze --data-root DIR` where the files are)"
    ),
}


def missing_needs(measure: Any, context: RunContext) -> str | None:
    """Why ``measure`` cannot run on this run (what it ``needs`` and the run lacks, and the flag that
    supplies it), or None when the run has everything it needs."""
    lacking = []
    if "model" in measure.needs and not context.has_spec():
        lacking.append(("model", _SUPPLY["model"]))
    if "data" in measure.needs and not (context.dataset or {}).get("name"):
        lacking.append(("data", _SUPPLY["data"]))
    if not lacking:
        return None
    return f"{measure.name} needs the {' and the '.join(k for k, _ in lacking)}, but " + "; and ".join(
        why for _, why in lacking
    )


#: A row's computing longer than this many times its read gets every torch thread (see _read_ahead)
_COMPUTE_BOUND = 4.0


def _read_ahead(run_path: str, rows: Sequence[int]) -> Generator[Future[CheckpointFile], None, None]:
    """The hash-verified checkpoints of ``rows`` in order, as futures: each row's read is
    started on a reader thread (with its own :class:`Run`) when the previous row is handed
    out, so it overlaps the caller's work on that row. Closing the iterator cancels what is
    not yet started.

    While a read overlaps the caller's work, torch has one intra-op thread fewer (at least
    one): OpenMP's workers wait for each other at the end of every parallel region, so with a
    core taken by the hash a 2-thread product waits for a preempted worker (0.44 s per
    checkpoint of the CIFAR CNN's spectral norms instead of 0.10 s with 1 thread, 2 CPU cores).
    But where the work takes far longer than the read, the read is a short part of it and one
    thread fewer halves the rest: the exact conv norms of a ResNet-18 (seconds per checkpoint,
    0.1 s reads) ran at half speed, and with every thread and a read beside them they lose more
    than the read takes. So the first row is worked on alone, with every thread, its successor
    read only after it; it tells which case this is: where its work took more than
    ``_COMPUTE_BOUND`` times its read, the next row is read the same way (alone, after the work:
    a read's time lost per row, a few percent there), otherwise during the work, which then has
    one thread fewer. Each row updates the verdict for the next. Work split into independent
    pieces (:mod:`normdyn.core.threads`, whose workers wait at no barrier) keeps every thread:
    analyze_run sets that budget."""
    run = Run(run_path)
    buffers = ReadBuffers()  # the reader's: a checkpoint's buffer is read into again once its tensors are gone
    threads = torch.get_num_threads()
    fewer = max(1, threads - 1)
    seconds: dict[int, float] = {}  # each row's read, written by the reader thread
    ready: dict[int, float] = {}  # when it was done (perf_counter)

    def read(row: int) -> CheckpointFile:
        start = time.perf_counter()
        try:
            return run.checkpoint(row, buffers=buffers)
        finally:
            ready[row] = time.perf_counter()
            seconds[row] = ready[row] - start

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="normdyn-read") as pool:
        try:
            ahead = pool.submit(read, rows[0]) if rows else None
            bound = True  # the first row: worked on alone, with every thread
            for i in range(len(rows)):
                assert ahead is not None
                current = ahead
                last = i == len(rows) - 1
                ahead = None if bound or last else pool.submit(read, rows[i + 1])
                torch.set_num_threads(threads if bound else fewer)
                start = time.perf_counter()
                yield current
                took = seconds.get(rows[i])
                worked = time.perf_counter() - max(start, ready.get(rows[i], start))
                bound = took is not None and worked > _COMPUTE_BOUND * took
                if ahead is None and not last:
                    ahead = pool.submit(read, rows[i + 1])  # after the work, alone
        finally:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)


def analyze_run(task: RunTask) -> RunOutcome:
    """Compute the measures of ``task`` on every checkpoint of its run; store them in run.h5.

    Top-level and picklable, to run in executor workers.
    """
    run = Run(task.run_path)
    outcome = RunOutcome(run_path=task.run_path)
    reg = plugins.registry("measures")
    measures = [reg.get(n) for n in task.measures]
    table = _checkpoint_table(run)
    sha = [str(s) for s in table["sha256"]]
    n = len(sha)
    records = [_Records(run, m, reg.owners[m.name], n, sha) for m in measures]
    states: dict[str, dict[str, Any]] = {m.name: {} for m in measures}
    context = RunContext.for_run(run, device=task.device, data_root=task.data_root)
    for r in list(records):  # refused once per run, before any row is read
        why = missing_needs(r.measure, context)
        if why is None:
            continue
        todo_rows = [row for row in range(n) if task.force or not r.done(row)]
        if not todo_rows:  # every row already holds a valid value: the normal pass skips them
            continue
        for row in todo_rows:
            r.fail(row, why)
        outcome.failed += len(todo_rows)
        outcome.failures.append(f"{run.path.name} {r.measure.name} (all {len(todo_rows)} checkpoints): {why}")
        r.flush(run)
        records.remove(r)
    last_flush = time.monotonic()
    # which rows need which measures is known before any is computed (storing row i changes
    # no other row's record), so the reads can run ahead of the computing
    todos = {row: [r for r in records if task.force or not r.done(row)] for row in range(n)}
    reads = _read_ahead(task.run_path, [row for row in range(n) if todos[row]])
    rows = tqdm(range(n), desc=run.path.name, unit="ckpt", disable=not task.progress, leave=False)
    # work split into pieces (normdyn.core.threads) keeps every thread while a read runs beside it
    with threads.budget(torch.get_num_threads()):
        try:
            for row in rows:
                todo = todos[row]
                outcome.skipped += len(records) - len(todo)
                if not todo:
                    continue
                step = int(table["step"][row])
                read = next(reads)
                try:
                    view = CheckpointView.from_file(read.result(), context)
                except Exception as exc:  # an unreadable checkpoint or a broken layer spec fails this row only
                    message = _read_message(exc, run.path / str(table["file"][row]))
                    for r in todo:
                        r.fail(row, message)
                        outcome.failures.append(f"{run.path.name} step {step} {r.measure.name}: {message}")
                    outcome.failed += len(todo)
                    continue
                for r in todo:
                    try:
                        if getattr(r.measure, "order_dependent", False):
                            view.require_layer_order(r.measure.name)
                        value = r.measure.compute(view, states[r.measure.name])
                        values = value.values() if isinstance(value, dict) else [value]
                        if not all(math.isfinite(float(v)) for v in values):
                            raise NormdynError(_nonfinite_message(view, r.measure.name))
                    except Exception as exc:  # any measure failure is recorded per row; the batch goes on
                        message = str(exc) if isinstance(exc, NormdynError) else f"{type(exc).__name__}: {exc}"
                        if view.nonfinite_tensors():  # the cause, not the linear-algebra symptom
                            message = _nonfinite_message(view, r.measure.name)
                        r.fail(row, message)
                        outcome.failed += 1
                        outcome.failures.append(f"{run.path.name} step {step} {r.measure.name}: {message}")
                        continue
                    r.store(row, value)
                    outcome.computed += 1
                if time.monotonic() - last_flush > _FLUSH_SECONDS:
                    for r in records:
                        r.flush(run)
                    last_flush = time.monotonic()
        finally:
            reads.close()
            for r in records:
                r.flush(run)
    outcome.warnings.extend(context.warnings)
    return outcome


def select_runs(stores: Iterable[str | Path], pattern: str | None = None) -> tuple[list[Run], list[str]]:
    """The runs of ``stores`` whose id matches the glob ``pattern``, and errors for unreadable ones."""
    runs: list[Run] = []
    errors: list[str] = []
    for store in stores:
        found, bad = scan_runs(store)
        runs += [r for r in found if pattern is None or fnmatch.fnmatch(r.path.name, pattern)]
        errors += [str(e) for e in bad]
    return runs, errors


def check_device(device: str) -> str:
    """``device`` as torch spells it (``cpu``, ``cuda``, ``cuda:1``...), checked once before any run
    is read; a ConfigError saying why torch cannot compute there (not a device name, CUDA not
    available, no such device index) instead of a failure per checkpoint."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device!r} is not a torch device ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device!r}: CUDA is not available here (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False); use --device cpu, or run where a GPU and a CUDA build of torch are"
        )
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise ConfigError(f"--device {device!r}: torch cannot allocate there ({exc})") from None
    return str(dev)


def analyze_store(
    stores: Iterable[str | Path] | str | Path,
    measures: Sequence[str] | None = None,
    *,
    runs: str | None = None,
    force: bool = False,
    device: str = "cpu",
    data_root: str | None = None,
    executor: str = "local",
    jobs: int = 1,
    progress: bool = False,
    **executor_options: Any,
) -> AnalyzeSummary:
    """Analyse every matching run of ``stores``; return the counts and per-item failures.

    ``measures`` are registered measure names (default :data:`DEFAULT_MEASURES`);
    ``runs`` a glob on run ids; ``device`` where the measures compute (:func:`check_device`:
    checked before anything is read). Runs are processed in parallel by
    :func:`normdyn.core.executor.map_tasks` (one task per run).
    """
    if isinstance(stores, (str, Path)):
        stores = [stores]
    device = check_device(device)
    chosen = resolve_measures(measures)
    selected, errors = select_runs(stores, runs)
    summary = AnalyzeSummary(run_errors=errors)
    if not selected:
        if not errors:
            raise ConfigError(
                f"no runs to analyse in {', '.join(str(s) for s in stores)}" + (f" matching {runs!r}" if runs else "")
            )
        return summary
    inner = progress and jobs <= 1
    tasks = [RunTask(str(r.path), tuple(m.name for m in chosen), force, device, data_root, inner) for r in selected]
    bar = tqdm(total=len(tasks), desc="analyze", unit="run", disable=not progress)
    for task, result in map_tasks(analyze_run, tasks, executor=executor, jobs=jobs, **executor_options):
        if isinstance(result, BaseException):
            message = str(result) if isinstance(result, NormdynError) else f"{type(result).__name__}: {result}"
            summary.run_errors.append(f"{Path(task.run_path).name}: {message}")
        else:
            summary.outcomes.append(result)
        bar.update(1)
    bar.close()
    return summary
