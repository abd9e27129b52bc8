"""A 1-D CNN for MNIST-1D, model family ``cnn1d``.

Following the MNIST-1D paper's baseline: ``channels`` Conv1d layers (kernel
5, stride 2, padding 1, ReLU), flatten, one Linear to the classes. Default
channels [25, 25, 25]: on the 40-sample MNIST-1D signal the feature map
shrinks 40 -> 19 -> 9 -> 4.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from normdyn.core.errors import ConfigError
from normdyn.core.hookspecs import hookimpl
from normdyn.plugins.models.family import ModelFamilyBase


class CNN1d(nn.Module):
    """[Conv1d -> ReLU] * len(channels) -> flatten -> Linear."""

    def __init__(
        self,
        in_channels: int,
        length: int,
        channels: list[int],
        kernel_size: int,
        stride: int,
        padding: int,
        num_classes: int,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for ch in channels:
            layers += [nn.Conv1d(prev, ch, kernel_size, stride=stride, padding=padding), nn.ReLU(inplace=True)]
            prev = ch
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, length)).numel()
        self.fc = nn.Linear(flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class CNN1dFamily(ModelFamilyBase):
    """Model family ``cnn1d`` (see the module docstring)."""

    name = "cnn1d"
    params = {"channels": [25, 25, 25], "kernel_size": 5, "stride": 2, "padding": 1}

    def make(self, params: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 2:
            raise ConfigError(f"model 'cnn1d' needs signal input [C, L], got input_shape {list(input_shape)}")
        return CNN1d(
            input_shape[0],
            input_shape[1],
            [int(c) for c in params["channels"]],
            int(params["kernel_size"]),
            int(params["stride"]),
            int(params["padding"]),
            num_classes,
        )


@hookimpl
def register_models(register: Any) -> None:
    register(CNN1dFamily())
