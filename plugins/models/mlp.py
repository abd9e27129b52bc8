"""A fully connected ReLU network, model family ``mlp``.

Flattens the input, then ``widths`` hidden layers (Linear + ReLU, with bias
unless ``bias = false``), then a Linear to the classes. Default widths
[512, 512]. PyTorch's default initialisation; the trainer applies the init factor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from normdyn.core.hookspecs import hookimpl
from normdyn.plugins.models.family import ModelFamilyBase


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] * len(widths) -> Linear."""

    def __init__(self, in_features: int, widths: list[int], num_classes: int, bias: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in widths:
            layers += [nn.Linear(prev, width, bias=bias), nn.ReLU(inplace=True)]
            prev = width
        layers.append(nn.Linear(prev, num_classes, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPFamily(ModelFamilyBase):
    """Model family ``mlp`` (see the module docstring)."""

    name = "mlp"
    params = {"widths": [512, 512], "bias": True}

    def make(self, params: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return MLP(math.prod(input_shape), [int(w) for w in params["widths"]], num_classes, bool(params["bias"]))


@hookimpl
def register_models(register: Any) -> None:
    register(MLPFamily())
