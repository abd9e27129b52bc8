"""Path norm by explicit path enumeration; conv operator norms against dense matrices."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from normdyn.core import plugins
from normdyn.core.hookspecs import hookimpl
from normdyn.core.layers import LayerSpec
from normdyn.core.view import CheckpointView, RunContext
from normdyn.plugins.measures.conv_operator import conv_forward, conv_norm


class TinyMLPFamily:
    """Test model family: bias-free ReLU MLP with the widths in spec['widths']."""

    name = "tiny_mlp_ops_test"

    def spec(self, *, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> dict[str, Any]:
        widths = [input_shape[0], *params["hidden"], num_classes]
        layers = [
            LayerSpec(name=f"net.{2 * i}", kind="linear", weight=f"net.{2 * i}.weight", in_channels=a).to_dict()
            for i, a in enumerate(widths[:-1])
        ]
        return {
            "name": self.name,
            "hidden": list(params["hidden"]),
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "layers": layers,
        }

    def build(self, spec: Mapping[str, Any]) -> nn.Module:
        widths = [spec["input_shape"][0], *spec["hidden"], spec["num_classes"]]
        mods: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            mods += [nn.Linear(a, b, bias=False), nn.ReLU()]
        return _Net(nn.Sequential(*mods[:-1]))


class _Net(nn.Module):
    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Plugin:
    @hookimpl
    def register_models(self, register: Any) -> None:
        register(TinyMLPFamily())


def test_path_norm_equals_explicit_path_enumeration() -> None:
    plugin = _Plugin()
    plugins.register_plugin(plugin, name="tiny_mlp_ops_test")
    try:
        family = plugins.get("models", "tiny_mlp_ops_test")
        spec = family.spec(input_shape=(3,), num_classes=2, hidden=[4, 3])
        torch.manual_seed(0)
        state = family.build(spec).state_dict()
        view = CheckpointView(state, RunContext(model_spec=spec))
        ws = [state[f"net.{2 * i}.weight"].double().numpy() for i in range(3)]
        total = 0.0
        for i, h1, h2, o in itertools.product(range(3), range(4), range(3), range(2)):
            total += (ws[0][h1, i] * ws[1][h2, h1] * ws[2][o, h2]) ** 2
        assert plugins.get("measures", "path_norm").compute(view, {}) == pytest.approx(np.sqrt(total), rel=1e-6)
    finally:
        plugins.unregister_plugin(name="tiny_mlp_ops_test")


def _dense(layer: LayerSpec, w: torch.Tensor) -> np.ndarray:
    """The conv as an explicit matrix: its columns are the images of the basis vectors."""
    shape = (layer.in_channels, *layer.in_shape)
    dim = int(np.prod(shape))
    basis = torch.eye(dim, dtype=torch.float64).reshape(dim, *shape)
    return conv_forward(layer, w.double())(basis).reshape(dim, -1).T.numpy()


@pytest.mark.parametrize(
    "kind,stride,padding,dilation,groups,mode",
    [
        ("conv2d", (1, 1), (1, 1), (1, 1), 1, "zeros"),
        ("conv2d", (2, 2), (1, 1), (1, 1), 1, "zeros"),
        ("conv2d", (1, 1), (1, 1), (1, 1), 1, "circular"),  # FFT path
        ("conv2d", (1, 1), (2, 2), (2, 2), 2, "circular"),  # FFT path, dilated, grouped
        ("conv2d", (2, 1), (1, 1), (1, 1), 1, "circular"),  # strided circular: iteration
        ("conv2d", (1, 1), (0, 0), (2, 2), 2, "zeros"),
        ("conv1d", (2,), (1,), (1,), 1, "zeros"),
    ],
)
def test_conv_operator_norm_equals_dense_matrix_norm(
    kind: str, stride: tuple, padding: tuple, dilation: tuple, groups: int, mode: str
) -> None:
    torch.manual_seed(1)
    in_shape = (6, 5) if kind == "conv2d" else (9,)
    cin, cout = 2, 4
    w = torch.randn(cout, cin // groups, *([3] * len(in_shape)))
    layer = LayerSpec(
        name="c",
        kind=kind,
        weight="c.weight",
        in_shape=in_shape,
        in_channels=cin,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
    )
    sigma, _ = conv_norm(layer, w)
    ref = np.linalg.svd(_dense(layer, w), compute_uv=False)[0]
    assert sigma == pytest.approx(ref, rel=1e-6)
    # these geometries have a receptive field inside the input, so the reshaped kernel's sigma is at most the
    # operator norm here (not in general: test_measures_conv_geometry has strided and dilated counter-examples)
    assert np.linalg.svd(w.double().reshape(cout, -1).numpy(), compute_uv=False)[0] <= ref * (1 + 1e-9) or groups > 1


def test_conv_operator_measures_on_a_view() -> None:
    torch.manual_seed(2)
    conv = LayerSpec(
        name="c",
        kind="conv2d",
        weight="c.weight",
        in_shape=(4, 4),
        in_channels=1,
        stride=(1, 1),
        padding=(1, 1),
        dilation=(1, 1),
    )
    fc = LayerSpec(name="f", kind="linear", weight="f.weight", in_channels=32)
    tensors = {"c.weight": torch.randn(2, 1, 3, 3), "f.weight": torch.randn(3, 32)}
    view = CheckpointView(tensors, RunContext(model_spec={"layers": [conv.to_dict(), fc.to_dict()]}))
    op = np.linalg.svd(_dense(conv, tensors["c.weight"]), compute_uv=False)[0]
    norms = plugins.get("measures", "conv_operator_norm").compute(view, {})
    assert list(norms) == ["c"] and norms["c"] == pytest.approx(op, rel=1e-6)
    mats = [tensors["c.weight"].double().reshape(2, -1).numpy(), tensors["f.weight"].double().numpy()]
    s = [op, np.linalg.svd(mats[1], compute_uv=False)[0]]
    t = [np.linalg.norm(m, axis=1).sum() for m in mats]
    expected = np.prod(s) * sum((ti / si) ** (2 / 3) for ti, si in zip(t, s)) ** 1.5
    assert plugins.get("measures", "spectral_complexity_op").compute(view, {}) == pytest.approx(expected, rel=1e-6)
