"""The analysis as a Python API for notebooks and other analyzers.

- :func:`analyze_store` (re-exported): compute measures, return counts.
- :func:`load_curves`: one run's checkpoint columns and measures as numpy arrays.
- :func:`measure_table`: every run of a store in long format (one row per
  checkpoint), a pandas DataFrame when pandas is installed, else a dict of
  numpy arrays.
- :func:`compute`: one measure on one checkpoint file, without storing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from normdyn.analyzers.analyze import AnalyzeSummary, analyze_store, select_runs
from normdyn.core import plugins
from normdyn.core.errors import DataError, MeasureError
from normdyn.core.store import Run
from normdyn.core.view import CheckpointView, RunContext

__all__ = ["analyze_store", "AnalyzeSummary", "load_curves", "measure_table", "compute", "measure_model"]

_COLUMNS = ("step", "epoch", "train_error", "train_loss", "test_error", "test_loss")


def load_curves(run: Run | str | Path, measures: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The run's checkpoint columns (step, epoch, errors, losses) and its measures, aligned by row.

    ``measures`` defaults to every stored measure; a measure never computed
    is all NaN.
    """
    run = run if isinstance(run, Run) else Run(run)
    table = run.checkpoints()
    out = {c: np.asarray(table[c]) for c in _COLUMNS if c in table}
    n = len(table["step"])
    for name in measures if measures is not None else run.measures():
        rec = run.read_measure(name)
        out[name] = rec.values if rec is not None else np.full(n, np.nan)
    return out


def measure_table(
    stores: Iterable[str | Path] | str | Path, measures: Sequence[str] | None = None, *, runs: str | None = None
) -> Any:
    """All matching runs in long format: run_id, P, seed, the checkpoint columns, the measures.

    Returns a pandas DataFrame when pandas is importable, otherwise a dict of
    equally long numpy arrays. Unreadable runs are left out.
    """
    if isinstance(stores, (str, Path)):
        stores = [stores]
    selected, _ = select_runs(stores, runs)
    names = list(measures) if measures is not None else sorted({m for r in selected for m in r.measures()})
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("run_id", "P", "seed", *_COLUMNS, *names)}
    for run in selected:
        curves = load_curves(run, names)
        n = len(curves["step"])
        parts["run_id"].append(np.array([run.run_id] * n, dtype=object))
        parts["P"].append(np.full(n, run.P))
        parts["seed"].append(np.full(n, run.seed))
        for key in (*_COLUMNS, *names):
            parts[key].append(np.asarray(curves.get(key, np.full(n, np.nan))))
    table = {k: (np.concatenate(v) if v else np.array([])) for k, v in parts.items()}
    try:
        import pandas as pd
    except ImportError:
        return table
    return pd.DataFrame(table)


def compute(
    measure: str,
    checkpoint: str | Path,
    *,
    run: Run | str | Path | None = None,
    state: dict[str, Any] | None = None,
    device: str = "cpu",
) -> float | dict[str, float]:
    """The value of ``measure`` on one checkpoint file (of ``run`` when given, for its spec and data).

    Pass the same ``state`` dict over successive checkpoints to keep warm starts.
    """
    m = plugins.get("measures", measure)
    if run is not None:
        run = run if isinstance(run, Run) else Run(run)
        context = RunContext.for_run(run, device=device)
    else:
        context = RunContext(model_spec={}, device=device)
    return m.compute(CheckpointView.open(checkpoint, context), {} if state is None else state)


@dataclass
class _InMemoryContext(RunContext):
    """A run context for an object in memory: the caller's module and data instead of a store's."""

    given_data: tuple[torch.Tensor, torch.Tensor] | None = None

    def data(self, split: str = "train", n: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        if self.given_data is None:
            raise DataError("this measure needs data: pass data=(x, y) to measure_model")
        x, y = self.given_data
        return x[:n].to(self.device), y[:n].to(self.device)


def measure_model(
    model: nn.Module | Mapping[str, torch.Tensor],
    measure: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    model_spec: Mapping[str, Any] | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    initial: Mapping[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
    device: str = "cpu",
) -> float | dict[str, float]:
    """The value of ``measure`` on a model in memory: the value ``normdyn analyze`` stores for the same weights.

    ``model`` is an ``nn.Module`` (its layers are traced on ``input_shape``, the
    module itself serves the measures that need it; it is copied, never
    changed) or a state dict with ``model_spec`` (e.g. a run's
    ``Run.model_spec``) or ``input_shape`` for a module-free guess of the
    layers. ``data`` = (x, y) feeds the data measures; ``initial`` (the
    weights at initialisation) feeds distance_from_init. Pass the same
    ``state`` dict across calls to keep warm starts.
    """
    m = plugins.get("measures", measure)
    module: nn.Module | None = None
    if isinstance(model, nn.Module):
        if model_spec is None:
            if input_shape is None:
                raise MeasureError("measure_model: give input_shape= (one sample's shape, e.g. (3, 32, 32))")
            model_spec = plugins.get("models", "factory").spec_of(model, input_shape=tuple(input_shape))
        module = copy.deepcopy(model).to(device).eval()
        tensors = {k: v.detach() for k, v in model.state_dict().items()}
    elif isinstance(model, Mapping):
        tensors = {str(k): v.detach() for k, v in model.items()}
        if model_spec is None:
            model_spec = {}
    else:
        raise MeasureError(f"measure_model: expected an nn.Module or a state dict, got {type(model).__name__}")
    init = None if initial is None else (lambda: {str(k): v.detach() for k, v in initial.items()})
    context = _InMemoryContext(model_spec=dict(model_spec), device=device, initial=init, given_data=data)
    if module is not None:
        context._module = module
    view = CheckpointView(tensors, context, label="model in memory")
    return m.compute(view, {} if state is None else state)
