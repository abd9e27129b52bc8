"""What a report section sees: one store's runs with one measure, the fit, and provenance.

:func:`load_context` reads the runs of the experiment that the fit uses (the
same selection as ``normdyn fit``: one group of runs whose configs differ only
in seed and P, narrowed by ``where``), their checkpoint tables and the stored
measure, then fits both laws with :func:`normdyn.analyzers.fit.pipeline.fit_store`.
A failed fit does not fail the context: ``fit`` is None and ``fit_error``
says why, so sections drawn from the runs alone (learning curves) still render.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normdyn.analyzers.fit.pipeline import FitResult, fit_store
from normdyn.analyzers.fit.store_curves import store_curves
from normdyn.analyzers.perceptron.analysis import PerceptronTheory, theory_for
from normdyn.core.errors import NormdynError
from normdyn.core.store import METRIC_COLUMNS, Run

__all__ = ["RunCurves", "ReportContext", "load_context", "p_palette"]


@dataclass
class RunCurves:
    """One run's logged curves: the checkpoint table columns and the measure (NaN where not computed)."""

    run_id: str
    path: Path
    P: int
    seed: int
    status: str
    step: np.ndarray
    epoch: np.ndarray
    metrics: dict[str, np.ndarray]  # train_error, train_loss, test_error, test_loss
    lam: np.ndarray
    measure_plugin: str
    measure_version: str
    measure_params: dict[str, Any]

    @classmethod
    def read(cls, run: Run, measure: str) -> RunCurves:
        """The curves of ``run`` with ``measure`` as lambda (all NaN if the measure is absent)."""
        table = run.checkpoints()
        record = run.read_measure(measure)
        n = len(table["step"])
        lam = np.full(n, np.nan) if record is None else np.asarray(record.values, dtype=np.float64)
        metrics = {k: np.asarray(table.get(k, np.full(n, np.nan)), dtype=np.float64) for k in METRIC_COLUMNS}
        return cls(
            run.run_id,
            run.path,
            run.P,
            run.seed,
            run.status,
            np.asarray(table["step"]),
            np.asarray(table["epoch"], dtype=np.float64),
            metrics,
            lam,
            "" if record is None else record.plugin,
            "" if record is None else record.version,
            {} if record is None else dict(record.params),
        )


def p_palette(P_values: list[int]) -> dict[int, str]:
    """One colour per training-set size, light to dark with growing P (seaborn's "viridis")."""
    import seaborn as sns

    colours = sns.color_palette("viridis", n_colors=max(len(P_values), 1)).as_hex()
    return {int(p): colours[i] for i, p in enumerate(sorted(P_values))}


@dataclass
class ReportContext:
    """Everything the sections of one (store, measure) report get.

    ``runs`` are the runs of the fitted experiment, sorted by (P, seed);
    ``fit`` is the :class:`FitResult` (None if the fit failed, then
    ``fit_error`` holds the message); ``fit_json`` is ``fit.to_json()``, the
    content of ``results.json``; ``notes`` lists runs that were skipped;
    ``theory`` is the known theory of the runs where there is one (the
    teacher-student perceptron measured by ``perceptron_lambda``), else None.
    """

    store: Path
    measure: str
    runs: list[RunCurves]
    fit: FitResult | None
    fit_error: str | None
    fit_json: dict[str, Any] | None
    experiment: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    colors: dict[int, str] = field(default_factory=dict)
    theory: PerceptronTheory | None = None

    @property
    def P_values(self) -> list[int]:
        """The distinct training-set sizes, ascending."""
        return sorted({r.P for r in self.runs})

    def color(self, P: int) -> str:
        """The colour of training-set size ``P`` (the same in every figure of the report)."""
        return self.colors[int(P)]

    def runs_of(self, P: int) -> list[RunCurves]:
        """The runs (seeds) of training-set size ``P``."""
        return [r for r in self.runs if r.P == int(P)]


def load_context(
    store: str | os.PathLike[str],
    measure: str,
    *,
    where: Mapping[str, str] | None = None,
    fit_kwargs: Mapping[str, Any] | None = None,
) -> ReportContext:
    """Read the experiment of ``store`` selected by ``where`` and fit it with lambda = ``measure``.

    ``fit_kwargs`` are passed to :func:`fit_store` (options, grid, ...), so the
    fit, and ``results.json``, are exactly those of ``normdyn fit`` with the
    same arguments. Raises if the store holds no usable experiment for the
    measure (several experiments, no run with the measure); a fit that fails
    on usable runs is kept in ``fit_error`` instead.
    """
    group, notes = store_curves(store, measure, where)
    sources = {c.source for c in group.curves}
    runs = sorted((RunCurves.read(Run(src), measure) for src in sources), key=lambda r: (r.P, r.seed, r.run_id))
    fit: FitResult | None = None
    fit_error: str | None = None
    try:
        fit = fit_store(store, measure, where=where, **dict(fit_kwargs or {}))
    except NormdynError as exc:
        fit_error = str(exc)
    ctx = ReportContext(
        Path(store), measure, runs, fit, fit_error, None if fit is None else fit.to_json(), group.config, notes
    )
    ctx.colors = p_palette(ctx.P_values)
    try:
        ctx.theory = theory_for(measure, runs, fit)
    except NormdynError as exc:  # the theory is an extra: without it the report is still whole
        ctx.notes.append(f"theory not computed: {exc}")
    return ctx
