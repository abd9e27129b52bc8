"""The fast conv iteration (restarted block Krylov, cluster bound) against the plain one
(subspace iteration) on every iterated conv layer of the model families at small sizes."""

from __future__ import annotations

import pytest
import torch

from normdyn.core import plugins
from normdyn.core.layers import LayerSpec
from normdyn.plugins.measures.conv_operator import CONV_TOL, iterative_conv_norm

# (family, input shape, parameters): small enough for the plain path to converge in seconds
FAMILIES = [
    ("cnn", (3, 12, 12), {}),
    ("resnet", (3, 12, 12), {"preset": "mnist"}),
    ("vit", (3, 16, 16), {"preset": "cifar10"}),
]


def _conv_layers(
    name: str, input_shape: tuple[int, ...], params: dict[str, str]
) -> list[tuple[LayerSpec, torch.Tensor]]:
    family = plugins.get("models", name)
    spec = family.spec(input_shape=input_shape, num_classes=10, **params)
    torch.manual_seed(0)
    sd = family.build(spec).state_dict()
    layers = [LayerSpec.from_dict(d) for d in spec["layers"] if d["kind"] in ("conv1d", "conv2d")]
    return [(layer, sd[layer.weight]) for layer in layers]


@pytest.mark.parametrize("name,input_shape,params", FAMILIES)
def test_fast_iteration_matches_the_plain_one(name: str, input_shape: tuple[int, ...], params: dict[str, str]) -> None:
    layers = _conv_layers(name, input_shape, params)
    assert layers
    for layer, w in layers[:4]:
        assert layer.in_shape is not None
        fast, block = iterative_conv_norm(layer, w)
        plain, _ = iterative_conv_norm(layer, w, fast=False)
        # each is within CONV_TOL / 2 of the exact sigma_1 (the certified bound on sigma_1^2 is CONV_TOL)
        assert fast == pytest.approx(plain, rel=CONV_TOL), layer.name
        # a warm start from the block of a slightly different kernel gives the same value
        w2 = w + 1e-3 * float(w.std()) * torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
        warm, _ = iterative_conv_norm(layer, w2, block)
        cold, _ = iterative_conv_norm(layer, w2, fast=False)
        assert warm == pytest.approx(cold, rel=CONV_TOL), layer.name
