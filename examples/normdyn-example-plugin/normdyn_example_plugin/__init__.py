"""A minimal third-party normdyn plugin: the largest absolute weight (a law-1 fitter is in .fitters)."""

from __future__ import annotations

from typing import Any

from normdyn.core.hookspecs import hookimpl


class MaxAbsWeight:
    """max_abs_weight = max over all weight tensors W_i of max |W_i| (biases excluded)."""

    name = "max_abs_weight"
    version = "1"
    needs = frozenset({"weights"})
    params: dict[str, Any] = {}

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        return max(float(view.weight(layer).abs().max()) for layer in view.layers)


@hookimpl
def register_measures(register):
    register(MaxAbsWeight())
