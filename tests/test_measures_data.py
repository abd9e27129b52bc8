"""Fisher-Rao norm and margins against direct computations on a tiny bias-free ReLU net."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from normdyn.core import plugins
from normdyn.core.contracts import DatasetTensors
from normdyn.core.hookspecs import hookimpl
from normdyn.core.layers import LayerSpec
from normdyn.core.sampling import subset_indices
from normdyn.core.view import CheckpointView, RunContext
from normdyn.plugins.measures.data_measures import FisherRao


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6, bias=False)
        self.b = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class _Family:
    name = "tiny_net_data_test"

    def spec(self, *, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> dict[str, Any]:
        layers = [
            LayerSpec(name="a", kind="linear", weight="a.weight", in_channels=4).to_dict(),
            LayerSpec(name="b", kind="linear", weight="b.weight", in_channels=6).to_dict(),
        ]
        return {"name": self.name, "input_shape": [4], "num_classes": 3, "layers": layers}

    def build(self, spec: Mapping[str, Any]) -> nn.Module:
        return _Net().double()


class _Data:
    name = "tiny_data_test"

    def load(self, *, root: str | None = None, download: bool = False, **params: Any) -> DatasetTensors:
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (50,), generator=gen)
        return DatasetTensors(x, y, x[:10], y[:10], 3, (4,))


class _Plugin:
    @hookimpl
    def register_models(self, register: Any) -> None:
        register(_Family())

    @hookimpl
    def register_datasets(self, register: Any) -> None:
        register(_Data())


@pytest.fixture
def view() -> CheckpointView:
    plugin = _Plugin()
    plugins.register_plugin(plugin, name="data_measures_test")
    try:
        spec = plugins.get("models", "tiny_net_data_test").spec(input_shape=(4,), num_classes=3)
        torch.manual_seed(3)
        state = _Net().double().state_dict()
        ctx = RunContext(model_spec=spec, dataset={"name": "tiny_data_test"}, P=20, seed=5)
        yield CheckpointView(state, ctx)
    finally:
        plugins.unregister_plugin(name="data_measures_test")


def _train_batch() -> tuple[torch.Tensor, torch.Tensor]:
    d = _Data().load()
    idx = subset_indices(50, 20, 5)
    return d.x_train[idx], d.y_train[idx]


def test_fisher_rao_equals_parameter_gradient_inner_product(view: CheckpointView) -> None:
    x, y = _train_batch()
    model = view.module()
    sq = []
    for xi, yi in zip(x, y):  # <theta, grad_theta loss> per sample, by autograd
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(xi[None]), yi[None])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        sq.append(sum(float((p.detach() * g).sum()) for p, g in zip(model.parameters(), grads)) ** 2)
    assert FisherRao().compute(view, {}) == pytest.approx(np.sqrt(np.mean(sq)), rel=1e-9)


def test_fisher_rao_model_labels_average_over_the_softmax(view: CheckpointView) -> None:
    x, _ = _train_batch()
    with torch.no_grad():
        f = view.module()(x)
    p = torch.softmax(f, 1)
    expected = 0.0
    for c in range(3):  # E_{y ~ p} (<p, f> - f_y)^2, the label enumerated explicitly
        expected = expected + p[:, c] * ((p * f).sum(1) - f[:, c]) ** 2
    assert FisherRao(label="model").compute(view, {}) == pytest.approx(2 * float(expected.mean()) ** 0.5, rel=1e-9)


def test_margin_quantiles(view: CheckpointView) -> None:
    x, y = _train_batch()
    with torch.no_grad():
        f = view.module()(x).numpy()
    raw = np.array([f[i, y[i]] - np.max(np.delete(f[i], y[i])) for i in range(len(y))])
    mats = [view.tensors["a.weight"].numpy(), view.tensors["b.weight"].numpy()]
    s = [np.linalg.svd(m, compute_uv=False)[0] for m in mats]
    t = [np.linalg.norm(m, axis=1).sum() for m in mats]
    R = np.prod(s) * sum((ti / si) ** (2 / 3) for ti, si in zip(t, s)) ** 1.5
    normalised = raw / (R * np.linalg.norm(x.numpy()) / len(x))
    got = plugins.get("measures", "margin").compute(view, {})
    assert list(got) == ["q10", "q25", "q50", "q75", "q90"]
    assert got["q50"] == pytest.approx(np.quantile(normalised, 0.5), rel=1e-9)
    assert got["q10"] == pytest.approx(np.quantile(normalised, 0.1), rel=1e-9)
