"""The ordered layer list of a model, found by running it once.

Forward hooks on every Conv1d, Conv2d, Linear and MultiheadAttention record,
in the order they run, the layer's weight keys, geometry and the spatial
shape of its input. A BatchNorm whose input is exactly a conv's output is
attached to that conv (``bn``). A fused attention ``in_proj_weight`` becomes
three row blocks ``attn_q``, ``attn_k``, ``attn_v`` plus ``attn_out``
(its ``out_proj`` is applied inside the attention call, so it never fires a
hook of its own). Every model family uses this, so the layer list always
matches what the forward pass really does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from normdyn.core.errors import ConfigError
from normdyn.core.layers import LayerSpec

__all__ = ["trace_layers"]


def _conv_layer(name: str, module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> LayerSpec:
    kind = "conv1d" if isinstance(module, nn.Conv1d) else "conv2d"
    if isinstance(module.padding, str):  # "same"/"valid": store the numbers the conv really uses
        raise ConfigError(f"layer {name!r}: string padding {module.padding!r} is not supported; use integers")
    return LayerSpec(
        name=name,
        kind=kind,
        weight=f"{name}.weight",
        bias=f"{name}.bias" if module.bias is not None else None,
        in_shape=tuple(int(s) for s in x.shape[2:]),
        in_channels=int(module.in_channels),
        stride=tuple(module.stride),
        padding=tuple(module.padding),
        dilation=tuple(module.dilation),
        groups=int(module.groups),
        padding_mode=module.padding_mode,
    )


def _attention_layers(name: str, module: nn.MultiheadAttention) -> list[LayerSpec]:
    if module.in_proj_weight is None:
        raise ConfigError(f"layer {name!r}: attention with separate q/k/v projections is not supported")
    E = int(module.embed_dim)
    bias = f"{name}.in_proj_bias" if module.in_proj_bias is not None else None
    blocks = [
        LayerSpec(
            name=f"{name}.{part}",
            kind=f"attn_{part}",
            weight=f"{name}.in_proj_weight",
            bias=bias,
            rows=(i * E, (i + 1) * E),
            in_channels=E,
        )
        for i, part in enumerate(("q", "k", "v"))
    ]
    out = module.out_proj
    blocks.append(
        LayerSpec(
            name=f"{name}.out_proj",
            kind="attn_out",
            weight=f"{name}.out_proj.weight",
            bias=f"{name}.out_proj.bias" if out.bias is not None else None,
            in_channels=E,
        )
    )
    return blocks


def trace_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """The weight-carrying layers of ``model`` in forward order, as LayerSpec dicts.

    Runs ``model`` once in eval mode on a zero batch of one ``input_shape``
    sample (so BatchNorm statistics are untouched). A module called twice is
    listed once, at its first call.
    """
    names = {id(m): n for n, m in model.named_modules()}
    found: list[LayerSpec] = []
    conv_outputs: dict[int, int] = {}  # id(conv output tensor) -> index in found
    keep_alive: list[torch.Tensor] = []  # ids are only unique while the tensors live
    seen: set[str] = set()
    bn_for: dict[int, tuple[str, float]] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        name = names[id(module)]
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            idx = conv_outputs.get(id(args[0]))
            if idx is not None:
                bn_for[idx] = (name, float(module.eps))
            return
        if name in seen:
            return
        seen.add(name)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            found.append(_conv_layer(name, module, args[0]))
            conv_outputs[id(output)] = len(found) - 1
            keep_alive.append(output)
        elif isinstance(module, nn.MultiheadAttention):
            found.extend(_attention_layers(name, module))
        elif isinstance(module, nn.Linear):
            found.append(
                LayerSpec(
                    name=name,
                    kind="linear",
                    weight=f"{name}.weight",
                    bias=f"{name}.bias" if module.bias is not None else None,
                    in_channels=int(module.in_features),
                )
            )

    traced = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.MultiheadAttention, nn.modules.batchnorm._BatchNorm)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, traced)]
    was_training = model.training
    try:
        model.eval()
        device = next(iter(model.parameters()), torch.empty(0)).device
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = []
    for i, layer in enumerate(found):
        if i in bn_for:
            bn_name, eps = bn_for[i]
            layer = LayerSpec(**{**layer.__dict__, "bn": bn_name, "bn_eps": eps})
        out.append(layer.to_dict())
    return out
