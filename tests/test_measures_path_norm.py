"""path_norm against explicit path enumeration (plain loops over numpy arrays) and its refusals.

Every expected value below is a sum over explicitly enumerated input->output
paths of the products of squared edge weights, written without the squared
forward pass the measure uses. Both sides are float64 sums of at most a few
thousand non-negative terms that differ only in summation order, so they
agree to ~1e-15 relative; ``REL`` leaves a margin of 1000x for that.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from normdyn.core import plugins
from normdyn.core.errors import MeasureError
from normdyn.core.hookspecs import hookimpl
from normdyn.core.layers import LayerSpec
from normdyn.core.view import CheckpointView, RunContext
from normdyn.plugins.measures.path_norm import COVERAGE

REL = 1e-12  # float64 sums of non-negative terms in a different order (see the module docstring)


class _ConvBnNet(nn.Module):
    """conv 3x3 pad 1 (bias) -> BatchNorm -> ReLU -> avg-pool 2 -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class _ResidualNet(nn.Module):
    """x + conv1x1(ReLU(BN(conv3x3(x)))), ReLU, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(self.relu(out + x)).flatten(1))


class _MaxPoolNet(nn.Module):
    """conv 2x2 (bias) -> ReLU -> max-pool 2 -> flatten -> linear: the CNN pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class _NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class _TokenNet(nn.Module):
    """A parameter used directly in forward (like the ViT's position embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.ones(3))
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.offset)


class _SoftmaxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.softmax(x, dim=1))


_NETS: dict[str, tuple[Callable[[], nn.Module], list[int]]] = {
    "conv_bn": (_ConvBnNet, [2, 4, 4]),
    "residual": (_ResidualNet, [2, 3, 3]),
    "maxpool": (_MaxPoolNet, [1, 3, 3]),
    "layernorm": (_NormNet, [3]),
    "token": (_TokenNet, [3]),
    "softmax": (_SoftmaxNet, [3]),
}


class _Family:
    name = "path_norm_test"

    def spec(self, *, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> dict[str, Any]:
        layer = LayerSpec(name="fc", kind="linear", weight="fc.weight", bias="fc.bias").to_dict()
        return {"name": self.name, "net": params["net"], "input_shape": list(input_shape), "layers": [layer]}

    def build(self, spec: Mapping[str, Any]) -> nn.Module:
        return _NETS[spec["net"]][0]().double()


class _Plugin:
    @hookimpl
    def register_models(self, register: Any) -> None:
        register(_Family())


@pytest.fixture
def family() -> Iterator[None]:
    plugins.register_plugin(_Plugin(), name="path_norm_test")
    try:
        yield
    finally:
        plugins.unregister_plugin(name="path_norm_test")


def _randomised(net: str, seed: int) -> tuple[CheckpointView, dict[str, np.ndarray]]:
    """A view of ``net`` with random weights, BatchNorm gamma/beta and running statistics; its arrays."""
    spec = _Family().spec(input_shape=tuple(_NETS[net][1]), num_classes=0, net=net)
    model = _Family().build(spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial eval-mode statistics, positive variances
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen, dtype=torch.float64))
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    state = model.state_dict()
    view = CheckpointView(state, RunContext(model_spec=spec))
    return view, {k: v.numpy().copy() for k, v in state.items()}


def _bn_fold(s: dict[str, np.ndarray], bn: str, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(per-channel scale a, folded bias) of the eval-mode BatchNorm ``bn`` after a layer with ``bias``."""
    a = s[f"{bn}.weight"] / np.sqrt(s[f"{bn}.running_var"] + 1e-5)
    c = s[f"{bn}.bias"] - a * s[f"{bn}.running_mean"]
    return a, c if bias is None else a * bias + c


def _path_norm(view: CheckpointView) -> float:
    return plugins.get("measures", "path_norm").compute(view, {})


def test_conv_batchnorm_avgpool_linear_equals_path_enumeration(family: None) -> None:
    view, s = _randomised("conv_bn", 1)
    a, b = _bn_fold(s, "bn", s["conv.bias"])
    w = s["conv.weight"] * a[:, None, None, None]
    fc_w, fc_b = s["fc.weight"], s["fc.bias"]
    total = 0.0
    for k, o, p, q in itertools.product(range(3), range(2), range(4), range(4)):
        # conv unit (o, p, q) -> pool unit (o, p//2, q//2), weight 1/4 -> output k
        tail = (0.25 * fc_w[k, o * 4 + (p // 2) * 2 + q // 2]) ** 2
        total += b[o] ** 2 * tail  # path from the constant-1 unit through the folded bias
        for i, h, v in itertools.product(range(2), range(4), range(4)):
            dh, dv = h - p + 1, v - q + 1  # kernel offset; padded units are zeros, not inputs
            if 0 <= dh < 3 and 0 <= dv < 3:
                total += w[o, i, dh, dv] ** 2 * tail
    total += float(np.sum(fc_b**2))  # paths constant-1 -> output
    assert _path_norm(view) == pytest.approx(math.sqrt(total), rel=REL)


def test_residual_block_counts_both_branches(family: None) -> None:
    view, s = _randomised("residual", 2)
    a, b1 = _bn_fold(s, "bn1", None)
    w1 = s["conv1.weight"] * a[:, None, None, None]
    w2 = s["conv2.weight"][:, :, 0, 0]
    fc_w, fc_b = s["fc.weight"], s["fc.bias"]
    total = 0.0
    for k, o, p, q in itertools.product(range(2), range(2), range(3), range(3)):
        tail = (fc_w[k, o] / 9) ** 2  # sum unit (o, p, q) -> global pool (1/9) -> output k
        total += tail  # skip edge (weight 1) from input unit (o, p, q)
        for o1 in range(2):  # residual branch: conv1 unit (o1, p, q) -> conv2 unit (o, p, q)
            mid = w2[o, o1] ** 2 * tail
            total += b1[o1] ** 2 * mid
            for i, h, v in itertools.product(range(2), range(3), range(3)):
                dh, dv = h - p + 1, v - q + 1
                if 0 <= dh < 3 and 0 <= dv < 3:
                    total += w1[o1, i, dh, dv] ** 2 * mid
    total += float(np.sum(fc_b**2))
    assert _path_norm(view) == pytest.approx(math.sqrt(total), rel=REL)


def test_max_pool_takes_the_best_choice_of_window_edges(family: None) -> None:
    view, s = _randomised("maxpool", 3)
    w, b, fc_w, fc_b = s["conv.weight"], s["conv.bias"], s["fc.weight"], s["fc.bias"]
    positions = list(itertools.product(range(2), range(2)))
    best = 0.0
    for choice in itertools.product(positions, positions):  # each pool unit's one in-edge
        total = float(np.sum(fc_b**2))
        for k, o in itertools.product(range(2), range(2)):
            p, q = choice[o]
            total += (b[o] * fc_w[k, o]) ** 2
            for h, v in itertools.product(range(2), range(2)):
                total += (w[o, 0, h, v] * fc_w[k, o]) ** 2  # input unit (p+h, q+v) -> conv unit (o, p, q)
        best = max(best, total)
    assert _path_norm(view) == pytest.approx(math.sqrt(best), rel=REL)


def test_perceptron_path_norm_is_lambda() -> None:
    family = plugins.get("models", "perceptron")
    spec = family.spec(input_shape=(5,), num_classes=2)
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0, -1.5]])
    view = CheckpointView({"fc.weight": w}, RunContext(model_spec=spec))
    # logit w.x / sqrt(N): edges w_i / sqrt(N), so the path norm is |w| / sqrt(N) = lambda;
    # float32 weights, squared and summed in float64: rel 1e-7 is float32 resolution
    assert _path_norm(view) == pytest.approx(math.sqrt(1 + 4 + 0.25 + 9 + 2.25) / math.sqrt(5), rel=1e-7)


@pytest.mark.parametrize(
    "net,what",
    [
        ("layernorm", "module 'norm' (LayerNorm)"),
        ("token", "parameter or buffer 'offset' used outside a layer"),
        ("softmax", "operation 'softmax' (node softmax)"),
    ],
)
def test_uncovered_models_are_refused_before_computing(family: None, net: str, what: str) -> None:
    view, _ = _randomised(net, 4)
    with pytest.raises(MeasureError) as err:
        _path_norm(view)
    assert str(err.value) == f"{COVERAGE}; {what} of this model is not covered"


def test_vit_is_refused_naming_its_first_layer_norm() -> None:
    family = plugins.get("models", "vit")
    spec = family.spec(input_shape=(1, 8, 8), num_classes=3, patch=4, dim=8, depth=1, heads=2)
    view = CheckpointView(family.build(spec).state_dict(), RunContext(model_spec=spec))
    with pytest.raises(MeasureError) as err:
        _path_norm(view)
    assert str(err.value) == f"{COVERAGE}; module 'blocks.0.norm1' (LayerNorm) of this model is not covered"
    assert "BatchNorm in eval mode" in COVERAGE and "residual additions" in COVERAGE
