"""What plugins provide: the typed shape of measures, models, datasets and
report sections. Plugins need not inherit from these Protocols; they only
have to match them (duck typing, checked where used)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["Measure", "ModelFamily", "DatasetSource", "DatasetTensors", "ReportSection"]


@runtime_checkable
class Measure(Protocol):
    """A complexity measure of one checkpoint.

    ``needs`` is a subset of {"weights", "model", "data"}. ``compute`` gets a
    CheckpointView and a per-run ``state`` dict that persists across the
    checkpoints of one run (for warm starts); it returns a float or a small
    dict of floats. Changing ``version`` or ``params`` invalidates stored values.
    The class docstring states the exact formula.
    """

    name: str
    version: str
    needs: frozenset[str]
    params: Mapping[str, Any]

    def compute(self, view: Any, state: dict[str, Any]) -> float | dict[str, float]: ...


@dataclass
class DatasetTensors:
    """A whole dataset held as tensors (batches are indexed from these).

    ``exact_test_error``, when set, maps a model to its exact test error
    (the teacher-student perceptron's arccos(R)/pi) instead of a test set,
    or to None for a model the formula does not cover (the test set is used).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    spec: dict[str, Any] = field(default_factory=dict)
    exact_test_error: Callable[[nn.Module], float | None] | None = None


@runtime_checkable
class DatasetSource(Protocol):
    """A named dataset. ``load`` returns all of it as tensors; a dataset that
    is absent raises DataError naming the expected path and ``--download``."""

    name: str

    def load(self, *, root: str | None = None, download: bool = False, **params: Any) -> DatasetTensors: ...


@runtime_checkable
class ModelFamily(Protocol):
    """A named model family.

    ``spec`` returns the JSON-able model_spec (``name``, the build
    parameters, ``layers``: the ordered LayerSpec dicts); ``build`` rebuilds
    the ``nn.Module`` from a spec alone.
    """

    name: str

    def spec(self, *, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> dict[str, Any]: ...

    def build(self, spec: Mapping[str, Any]) -> nn.Module: ...


@runtime_checkable
class ReportSection(Protocol):
    """A part of the report of one (store, measure); see docs/report.md.

    ``render(context, out)`` reads ``context`` (a ReportContext: runs, fit,
    fit_json, colours per P) and draws through ``out`` (a SectionOutput:
    ``out.figure(fig, stem, caption)``, ``out.table(stem, headers, rows,
    caption)``, ``out.text(paragraph)``); it returns None, and an exception
    marks only this section as failed. Optional ``title`` (the heading) and
    ``order`` (page position, default 100; built-ins use 10-70).
    """

    name: str

    def render(self, context: Any, out: Any) -> None: ...
