"""The teacher-student perceptron, model family ``perceptron``.

One linear layer N -> 1 logit without bias, scaled so that the logit is
w.x / sqrt(N): with inputs of unit variance per component the logit then
has variance lambda^2 = |w|^2 / N whatever N is, and the binary
cross-entropy on it is the paper's loss log(1 + exp(-y w.x / sqrt(N)))
(y = +-1). The weight starts at zero (the paper's initial condition), so
the first gradient step is the Hebb rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from normdyn.core.errors import ConfigError
from normdyn.core.hookspecs import hookimpl
from normdyn.plugins.models.family import ModelFamilyBase

__all__ = ["Perceptron", "PerceptronFamily"]


class Perceptron(nn.Module):
    """x -> fc(flatten(x)) / sqrt(N): one logit per sample, shape (batch, 1)."""

    def __init__(self, N: int):
        super().__init__()
        self.N = N
        self.fc = nn.Linear(N, 1, bias=False)
        nn.init.zeros_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) / math.sqrt(self.N)


class PerceptronFamily(ModelFamilyBase):
    """Model family ``perceptron`` (see the module docstring); ``N`` defaults to the input size."""

    name = "perceptron"
    params = {"N": None}

    def defaults(self, input_shape: tuple[int, ...], num_classes: int, preset: str | None) -> dict[str, Any]:
        if preset is not None:
            raise ConfigError(f"model 'perceptron' has no presets (got preset={preset!r})")
        if num_classes != 2:
            raise ConfigError(f"model 'perceptron' is a binary classifier (one logit); got num_classes={num_classes}")
        return {"N": math.prod(input_shape)}

    def make(self, params: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        N = int(params["N"])
        if N != math.prod(input_shape):
            raise ConfigError(f"model 'perceptron': N={N} does not match the input shape {list(input_shape)}")
        return Perceptron(N)


@hookimpl
def register_models(register: Any) -> None:
    register(PerceptronFamily())
