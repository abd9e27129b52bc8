"""The paper's CNN (reference ``CNNClassifier``), model family ``cnn``.

3x3 convs with padding 1 and ReLU, a 2x2 max-pool after every
``pool_every`` convs, flatten, then an MLP head (ReLU, optional dropout).
Presets, chosen by the data unless ``preset`` is given:

- ``standard`` (MNIST, CIFAR-10): convs 32-64-128, head 512 -> classes, no dropout.
- ``cifar100`` (chosen when there are 100 classes): convs 64-128-256-512,
  head 1024-512 -> classes, dropout 0.1.

Weights keep PyTorch's default initialisation; the trainer applies the init
factor. Module names (``features.N``, ``classifier.N``) match the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from normdyn.core.errors import ConfigError
from normdyn.core.hookspecs import hookimpl
from normdyn.plugins.models.family import ModelFamilyBase

PRESETS: dict[str, dict[str, Any]] = {
    "standard": {"conv_channels": [32, 64, 128], "hidden": [512], "dropout": 0.0},
    "cifar100": {"conv_channels": [64, 128, 256, 512], "hidden": [1024, 512], "dropout": 0.1},
}


class CNN(nn.Module):
    """Conv feature stack plus MLP classifier."""

    def __init__(
        self,
        in_channels: int,
        conv_channels: list[int],
        kernel_size: int,
        pool_every: int,
        hidden: list[int],
        dropout: float,
        input_hw: tuple[int, int],
        num_classes: int,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, out in enumerate(conv_channels):
            layers += [nn.Conv2d(prev, out, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True)]
            if (i + 1) % pool_every == 0:
                layers.append(nn.MaxPool2d(2, 2))
            prev = out
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, *input_hw)).numel()
        head: list[nn.Module] = []
        for width in hidden:
            head += [nn.Linear(flat, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            flat = width
        head.append(nn.Linear(flat, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class CNNFamily(ModelFamilyBase):
    """Model family ``cnn`` (see the module docstring)."""

    name = "cnn"
    params = {"conv_channels": None, "kernel_size": 3, "pool_every": 2, "hidden": None, "dropout": None}

    def defaults(self, input_shape: tuple[int, ...], num_classes: int, preset: str | None) -> dict[str, Any]:
        if len(input_shape) != 3:
            raise ConfigError(f"model 'cnn' needs image input [C, H, W], got input_shape {list(input_shape)}")
        preset = preset or ("cifar100" if num_classes == 100 else "standard")
        if preset not in PRESETS:
            raise ConfigError(f"model 'cnn': unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        return dict(PRESETS[preset])

    def make(self, params: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return CNN(
            input_shape[0],
            [int(c) for c in params["conv_channels"]],
            int(params["kernel_size"]),
            int(params["pool_every"]),
            [int(h) for h in params["hidden"]],
            float(params["dropout"]),
            (input_shape[1], input_shape[2]),
            num_classes,
        )


@hookimpl
def register_models(register: Any) -> None:
    register(CNNFamily())
