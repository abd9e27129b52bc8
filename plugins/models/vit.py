"""Vision Transformer (reference ``ViT``), model family ``vit``.

Patch embedding (a conv with kernel = stride = patch), CLS token, learned
position embedding, pre-LN blocks (LayerNorm -> multi-head self-attention ->
residual; LayerNorm -> Linear-GELU-Linear, mlp ratio 4 -> residual), final
LayerNorm, linear head on the CLS token. No dropout. Truncated-normal
(std 0.02) initialisation of weights, position embedding and CLS token.
Presets, chosen by the data unless ``preset`` is given:

- ``mnist`` (1 input channel): patch 7, dim 128, depth 4, heads 4.
- ``cifar10`` (the default): patch 4, dim 192, depth 6, heads 3.
- ``cifar100`` (100 classes): patch 4, dim 256, depth 6, heads 4.

The attention's fused ``in_proj_weight`` is a weight matrix like any other:
the trainer's init factor scales it (the reference code misses it).
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
    "mnist": {"patch": 7, "dim": 128, "depth": 4, "heads": 4},
    "cifar10": {"patch": 4, "dim": 192, "depth": 6, "heads": 3},
    "cifar100": {"patch": 4, "dim": 256, "depth": 6, "heads": 4},
}


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, CLS token, transformer blocks, head."""

    def __init__(
        self,
        in_channels: int,
        image_hw: tuple[int, int],
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        num_classes: int,
    ):
        super().__init__()
        if image_hw[0] % patch or image_hw[1] % patch:
            raise ConfigError(f"model 'vit': patch {patch} does not divide the image size {list(image_hw)}")
        if dim % heads:
            raise ConfigError(f"model 'vit': dim {dim} is not divisible by heads {heads}")
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        n_patches = (image_hw[0] // patch) * (image_hw[1] // patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n_patches, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, int(dim * mlp_ratio)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # in_proj_weight keeps PyTorch's Xavier init, as in the reference (it is no nn.Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class ViTFamily(ModelFamilyBase):
    """Model family ``vit`` (see the module docstring)."""

    name = "vit"
    params = {"patch": None, "dim": None, "depth": None, "heads": None, "mlp_ratio": 4.0}

    def defaults(self, input_shape: tuple[int, ...], num_classes: int, preset: str | None) -> dict[str, Any]:
        if len(input_shape) != 3:
            raise ConfigError(f"model 'vit' needs image input [C, H, W], got input_shape {list(input_shape)}")
        if preset is None:
            preset = "cifar100" if num_classes == 100 else "mnist" if input_shape[0] == 1 else "cifar10"
        if preset not in PRESETS:
            raise ConfigError(f"model 'vit': unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        return dict(PRESETS[preset])

    def make(self, params: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return ViT(
            input_shape[0],
            (input_shape[1], input_shape[2]),
            int(params["patch"]),
            int(params["dim"]),
            int(params["depth"]),
            int(params["heads"]),
            float(params["mlp_ratio"]),
            num_classes,
        )


@hookimpl
def register_models(register: Any) -> None:
    register(ViTFamily())
