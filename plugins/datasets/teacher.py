"""The teacher-student perceptron's data, dataset ``teacher``.

A teacher w* ~ N(0, I_N) labels inputs x in R^N by y = [w*.x > 0] (class 1
for y = +1, class 0 for y = -1). Inputs are ``rademacher`` (+-1 entries,
the paper's choice) or ``gaussian`` (N(0, 1) entries, the textbook one).
Everything is drawn from one generator seeded with ``teacher_seed``, in the
order teacher, training inputs, test inputs, so the spec alone rebuilds the
data. Parameters: ``N`` (1000), ``inputs`` ("rademacher"), ``n_train``
(10000, the pool that runs draw their P samples from), ``n_test`` (1000),
``teacher_seed`` (0).

The test error is exact: a student w has eps = arccos(R)/pi with
R = w.w* / (|w| |w*|) (``exact_test_error``), so the test set only serves
generic code that wants one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import DataError
from normdyn.core.hookspecs import hookimpl

__all__ = ["TeacherDataset", "INPUTS", "teacher_overlap"]

INPUTS = ("rademacher", "gaussian")
_PARAMS: dict[str, Any] = {"N": 1000, "inputs": "rademacher", "n_train": 10000, "n_test": 1000, "teacher_seed": 0}
_CHUNK = 4096  # rows labelled at a time: the float64 copy of a chunk stays small


def teacher_overlap(w: torch.Tensor, teacher: torch.Tensor) -> float:
    """R = w.w* / (|w| |w*|) in float64; 0 for w = 0 (an untrained student guesses: eps = 1/2)."""
    w64, t64 = w.detach().double().flatten(), teacher.double().flatten()
    norm = float(torch.linalg.vector_norm(w64))
    if norm == 0.0:
        return 0.0
    return float(w64 @ t64) / (norm * float(torch.linalg.vector_norm(t64)))


class _ExactTestError:
    """eps(model) = arccos(R)/pi, R the overlap of the model's only weight with the teacher.

    Defined for a perceptron (exactly N parameters, no bias); any other model
    gets None, and its test error comes from the test set.
    """

    def __init__(self, teacher: torch.Tensor):
        self.teacher = teacher

    def __call__(self, model: nn.Module) -> float | None:
        params = [p for p in model.parameters()]
        w = torch.cat([p.detach().flatten() for p in params]) if params else torch.empty(0)
        if w.numel() != self.teacher.numel():
            return None
        return math.acos(max(-1.0, min(1.0, teacher_overlap(w, self.teacher)))) / math.pi


def _inputs(kind: str, n: int, N: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(n, N, generator=gen)
    return torch.randint(0, 2, (n, N), generator=gen).to(torch.float32) * 2 - 1


def _labels(x: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    out = torch.empty(len(x), dtype=torch.int64)
    for i in range(0, len(x), _CHUNK):
        out[i : i + _CHUNK] = (x[i : i + _CHUNK].double() @ teacher > 0).long()
    return out


class TeacherDataset:
    """Dataset ``teacher`` (see the module docstring)."""

    name = "teacher"

    def load(self, *, root: str | None = None, download: bool = False, **params: Any) -> DatasetTensors:
        """Generate the teacher, the training pool and the test set (``root``/``download`` are not used)."""
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise DataError(
                f"dataset 'teacher': unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(_PARAMS)}"
            )
        p = {**_PARAMS, **params}
        try:
            N, n_train, n_test, seed = int(p["N"]), int(p["n_train"]), int(p["n_test"]), int(p["teacher_seed"])
        except (TypeError, ValueError):
            raise DataError(
                f"dataset 'teacher': N, n_train, n_test and teacher_seed must be integers, got {p}"
            ) from None
        if p["inputs"] not in INPUTS:
            raise DataError(f"dataset 'teacher': inputs={p['inputs']!r}; use one of {', '.join(INPUTS)}")
        if N < 1 or n_train < 1 or n_test < 0:
            raise DataError(
                f"dataset 'teacher': need N >= 1, n_train >= 1, n_test >= 0 (got N={N}, "
                f"n_train={n_train}, n_test={n_test})"
            )
        gen = torch.Generator().manual_seed(seed)
        teacher = torch.randn(N, generator=gen, dtype=torch.float64)
        x_train = _inputs(p["inputs"], n_train, N, gen)
        x_test = _inputs(p["inputs"], n_test, N, gen)
        return DatasetTensors(
            x_train,
            _labels(x_train, teacher),
            x_test,
            _labels(x_test, teacher),
            num_classes=2,
            input_shape=(N,),
            spec={"name": self.name, **p},
            exact_test_error=_ExactTestError(teacher),
        )


@hookimpl
def register_datasets(register: Any) -> None:
    register(TeacherDataset())
