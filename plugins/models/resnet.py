"""ResNet with BasicBlocks (reference ``ResNetClassifier``), model family ``resnet``.

3x3 stem conv + BatchNorm + ReLU (no max-pool), stages of BasicBlocks with
strides 1, 2, 2, 2 (a 1x1 conv + BatchNorm projection where shape changes),
global average pool, fc. Initialisation as the reference: Kaiming normal
(fan_out) convs, BatchNorm weight 1 / bias 0, fc weight N(0, 0.01), bias 0.
Presets, chosen by the data unless ``preset`` is given:

- ``mnist`` (1 input channel): blocks [2,2,2,2], widths 16-32-64-128.
- ``resnet18`` (CIFAR-10, the default): blocks [2,2,2,2], widths 64-128-256-512.
- ``cifar100`` (100 classes): blocks [3,4,6,3], widths 64-128-256-512.

Module names (``stem.0``, ``stages.i.j.conv1``, ``fc``) match the reference.
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
    "mnist": {"blocks": [2, 2, 2, 2], "widths": [16, 32, 64, 128]},
    "resnet18": {"blocks": [2, 2, 2, 2], "widths": [64, 128, 256, 512]},
    "cifar100": {"blocks": [3, 4, 6, 3], "widths": [64, 128, 256, 512]},
}
STRIDES = (1, 2, 2, 2)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (projected) input, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem, BasicBlock stages, average pool, fc."""

    def __init__(self, in_channels: int, blocks: list[int], widths: list[int], num_classes: int):
        super().__init__()
        if len(blocks) != len(widths) or not 1 <= len(blocks) <= len(STRIDES):
            raise ConfigError(
                f"model 'resnet': blocks {blocks} and widths {widths} must be equal-length lists "
                f"of 1 to {len(STRIDES)} stages"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.ModuleList()
        prev = widths[0]
        for n, planes, stride in zip(blocks, widths, STRIDES):
            stage = [BasicBlock(prev, planes, stride)] + [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
            self.stages.append(nn.Sequential(*stage))
            prev = planes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.pool(x).flatten(1))


class ResNetFamily(ModelFamilyBase):
    """Model family ``resnet`` (see the module docstring)."""

    name = "resnet"
    params = {"blocks": None, "widths": None}

    def defaults(self, input_shape: tuple[int, ...], num_classes: int, preset: str | None) -> dict[str, Any]:
        if len(input_shape) != 3:
            raise ConfigError(f"model 'resnet' needs image input [C, H, W], got input_shape {list(input_shape)}")
        if preset is None:
            preset = "cifar100" if num_classes == 100 else "mnist" if input_shape[0] == 1 else "resnet18"
        if preset not in PRESETS:
            raise ConfigError(f"model 'resnet': unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        return dict(PRESETS[preset])

    def make(self, params: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return ResNet(
            input_shape[0], [int(b) for b in params["blocks"]], [int(w) for w in params["widths"]], num_classes
        )


@hookimpl
def register_models(register: Any) -> None:
    register(ResNetFamily())
