"""What plugins provide, and the check that holds them to it at registration.

The Protocols give the typed shape of each kind; plugins need not inherit
from them. :func:`check_contract` is what the plugin host runs on every
object a plugin registers: a missing or wrong attribute is a PluginError
naming the plugin, the object and the attribute, raised when the registry is
built, not later when the object is first used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from normdyn.core.errors import PluginError

if TYPE_CHECKING:  # pragma: no cover - torch stays out of core's import graph until data is loaded
    import torch
    from torch import nn

__all__ = [
    "MEASURE_NEEDS",
    "FITTER_LAWS",
    "Measure",
    "Fitter",
    "ModelFamily",
    "Dataset",
    "DatasetTensors",
    "ReportSection",
    "check_contract",
]

MEASURE_NEEDS = frozenset({"weights", "model", "data"})
FITTER_LAWS = ("law1", "law2", "eps_star")


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


class Fitter(Protocol):
    """A scaling-law estimator class (scikit-learn style).

    ``law`` says what it estimates (one of :data:`FITTER_LAWS`); ``__init__``
    only stores hyperparameters, ``fit`` returns self, fitted attributes end
    in ``_``. The signature of ``fit`` and the fitted attributes are fixed per
    law (docs/plugins.md).
    """

    name: str
    law: str

    def fit(self, *args: Any) -> Fitter: ...


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


class Dataset(Protocol):
    """A named dataset. ``load`` returns all of it as tensors; a dataset that
    is absent raises DataError naming the expected path and ``--download``."""

    name: str

    def load(self, *, root: str | None = None, download: bool = False, **params: Any) -> DatasetTensors: ...


class ModelFamily(Protocol):
    """A named model family.

    ``spec`` returns the JSON-able model_spec (``name``, the build
    parameters, ``layers``: the ordered LayerSpec dicts); ``build`` rebuilds
    the ``nn.Module`` from a spec alone.
    """

    name: str

    def spec(self, *, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> dict[str, Any]: ...

    def build(self, spec: Mapping[str, Any]) -> nn.Module: ...


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


def _fail(kind: str, owner: str, obj: Any, problem: str) -> PluginError:
    name = getattr(obj, "name", None)
    label = f"{kind[:-1].replace('_', ' ')} {name!r}" if isinstance(name, str) and name else repr(obj)
    return PluginError(f"plugin {owner!r} registered {label}: {problem}")


def _methods(kind: str, owner: str, obj: Any, methods: tuple[str, ...]) -> None:
    for method in methods:
        if not callable(getattr(obj, method, None)):
            raise _fail(kind, owner, obj, f"no {method}() method")


def _measure(owner: str, obj: Any) -> None:
    if not isinstance(getattr(obj, "version", None), str):
        raise _fail("measures", owner, obj, "'version' must be a string (bump it when values change)")
    needs = getattr(obj, "needs", None)
    if not isinstance(needs, (set, frozenset, tuple, list)) or not all(isinstance(n, str) for n in needs):
        raise _fail("measures", owner, obj, f"'needs' must be a set of names within {sorted(MEASURE_NEEDS)}")
    unknown = sorted(set(needs) - MEASURE_NEEDS)
    if unknown:
        raise _fail(
            "measures", owner, obj, f"'needs' holds {', '.join(unknown)}; allowed: {', '.join(sorted(MEASURE_NEEDS))}"
        )
    if not isinstance(getattr(obj, "params", None), Mapping):
        raise _fail("measures", owner, obj, "'params' must be a mapping of parameter defaults (may be empty)")
    _methods("measures", owner, obj, ("compute",))


def _fitter(owner: str, obj: Any) -> None:
    if not isinstance(obj, type):
        raise _fail("fitters", owner, obj, "a fitter is registered as a class (instantiated with its hyperparameters)")
    law = getattr(obj, "law", None)
    if law not in FITTER_LAWS:
        raise _fail("fitters", owner, obj, f"'law' is {law!r}; use one of {', '.join(FITTER_LAWS)}")
    _methods("fitters", owner, obj, ("fit",))


def _report_section(owner: str, obj: Any) -> None:
    _methods("report_sections", owner, obj, ("render",))
    title = getattr(obj, "title", None)
    if title is not None and not isinstance(title, str):
        raise _fail("report_sections", owner, obj, f"'title' must be a string, not {type(title).__name__}")
    order = getattr(obj, "order", 100)
    if isinstance(order, bool) or not isinstance(order, (int, float)):
        raise _fail("report_sections", owner, obj, f"'order' must be a number, not {type(order).__name__}")


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "measures": _measure,
    "fitters": _fitter,
    "models": lambda owner, obj: _methods("models", owner, obj, ("spec", "build")),
    "datasets": lambda owner, obj: _methods("datasets", owner, obj, ("load",)),
    "report_sections": _report_section,
}


def check_contract(kind: str, obj: Any, owner: str) -> str:
    """Check ``obj`` against the contract of ``kind``; return its name or raise PluginError naming ``owner``."""
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(
            f"plugin {owner!r} registered a {kind[:-1].replace('_', ' ')} without a string 'name': {obj!r}"
        )
    _CHECKS[kind](owner, obj)
    return name
