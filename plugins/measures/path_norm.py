"""The exact l2 path norm (Neyshabur, Tomioka and Srebro 2015)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from normdyn.core.errors import MeasureError
from normdyn.core.hookspecs import hookimpl

__all__ = ["PathNorm"]


class PathNorm:
    """l2 path norm: sqrt( sum over input-output paths p of prod_{edges e in p} w_e^2 ).

    Computed exactly by one forward pass of a copy of the network in which
    every parameter is squared, on an all-ones input of the model's
    ``input_shape``: the sum of the outputs is the sum over paths of the
    products of squared weights (a bias b counts as an edge from a constant
    unit: it contributes b^2 times its downstream paths). ReLU is the
    identity on the non-negative values of that pass; a max-pool keeps the
    largest path sum of its window (the convention of Jiang et al. 2020).
    The module runs in eval mode (BatchNorm with its running statistics,
    dropout off). Needs the rebuilt model.
    """

    name = "path_norm"
    version = "1"
    needs = frozenset({"model"})
    params: dict[str, Any] = {}

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        shape = view.context.model_spec.get("input_shape")
        if not shape:
            raise MeasureError("path_norm needs model_spec['input_shape'] to build the all-ones input")
        squared = copy.deepcopy(view.module()).eval()
        with torch.no_grad():
            for p in squared.parameters():
                p.pow_(2)
            first = next(squared.parameters(), None)
            dtype = first.dtype if first is not None else torch.float32
            out = squared(torch.ones(1, *[int(s) for s in shape], dtype=dtype, device=view.device))
        return float(out.double().sum()) ** 0.5


@hookimpl
def register_measures(register: Any) -> None:
    register(PathNorm())
