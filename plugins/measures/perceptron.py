"""The perceptron's norm, measure ``perceptron_lambda``."""

from __future__ import annotations

import math
from typing import Any

import torch

from normdyn.core.errors import MeasureError
from normdyn.core.hookspecs import hookimpl

__all__ = ["PerceptronLambda"]


class PerceptronLambda:
    """lambda = |w| / sqrt(N), w the weights of all layers concatenated and N their number.

    For the ``perceptron`` model (one layer N -> 1, logit w.x/sqrt(N)) this is
    the standard deviation of the logit over unit-variance inputs, the
    paper's complexity measure of the solvable model.
    """

    name = "perceptron_lambda"
    version = "1"
    needs = frozenset({"weights"})
    params: dict[str, Any] = {}

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        weights = [view.weight(layer) for layer in view.layers]
        N = sum(w.numel() for w in weights)
        if N == 0:
            raise MeasureError(f"{view.label}: perceptron_lambda needs a layer with weights")
        sq = sum(float(torch.linalg.vector_norm(w.double()) ** 2) for w in weights)
        return math.sqrt(sq / N)


@hookimpl
def register_measures(register: Any) -> None:
    register(PerceptronLambda())
