"""Fisher-Rao norm and margins against direct computations on a tiny bias-free ReLU net and a perceptron."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from normdyn.core import plugins
from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import MeasureError
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


class _BinaryData:
    """Labels 0/1 as the teacher dataset gives them, float32 inputs as real datasets do."""

    name = "tiny_binary_data_test"

    def load(self, *, root: str | None = None, download: bool = False, **params: Any) -> DatasetTensors:
        gen = torch.Generator().manual_seed(11)
        x = torch.randn(50, 4, generator=gen)
        y = torch.randint(0, 2, (50,), generator=gen)
        return DatasetTensors(x, y, x[:10], y[:10], 2, (4,))


class _SignData(_BinaryData):
    """Labels -1/+1: not the binary objective's 0/1."""

    name = "tiny_sign_data_test"

    def load(self, *, root: str | None = None, download: bool = False, **params: Any) -> DatasetTensors:
        d = super().load()
        return DatasetTensors(d.x_train, 2 * d.y_train - 1, d.x_test, 2 * d.y_test - 1, 2, (4,))


class _Plugin:
    @hookimpl
    def register_models(self, register: Any) -> None:
        register(_Family())

    @hookimpl
    def register_datasets(self, register: Any) -> None:
        register(_Data())
        register(_BinaryData())
        register(_SignData())


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


_W = np.array([[0.5, -1.0, 2.0, 0.25]])  # the perceptron's known weight (N = 4)


@pytest.fixture
def perceptron_view() -> CheckpointView:
    plugin = _Plugin()
    plugins.register_plugin(plugin, name="data_measures_test")
    try:
        spec = plugins.get("models", "perceptron").spec(input_shape=(4,), num_classes=2)
        ctx = RunContext(model_spec=spec, dataset={"name": "tiny_binary_data_test"}, P=20, seed=5)
        yield CheckpointView({"fc.weight": torch.tensor(_W, dtype=torch.float32)}, ctx)
    finally:
        plugins.unregister_plugin(name="data_measures_test")


def _binary_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, z) in float64: the run's 20 training samples, labels 0/1, logits w.x / sqrt(N)."""
    d = _BinaryData().load()
    idx = subset_indices(50, 20, 5)
    x, y = d.x_train[idx].double().numpy(), d.y_train[idx].numpy()
    return x, y, x @ _W[0] / 2.0


# The measure's forward pass runs in float32 (the perceptron's dtype), the
# reference in float64: logits agree to ~1e-7 relative, hence rel=1e-5.
FLOAT32_REL = 1e-5


def test_fisher_rao_one_logit_is_the_binary_cross_entropy_form(perceptron_view: CheckpointView) -> None:
    _, y, z = _binary_batch()
    assert set(y) == {0, 1}
    sigmoid = 1 / (1 + np.exp(-z))
    # dl/dz of log(1 + exp(-s z)), s = 2y - 1, written from the loss: -s exp(-s z) / (1 + exp(-s z))
    s = 2 * y - 1
    dl_dz = -s * np.exp(-s * z) / (1 + np.exp(-s * z))
    expected = np.sqrt(np.mean((dl_dz * z) ** 2))  # one weight layer: L + 1 = 1
    assert FisherRao().compute(perceptron_view, {}) == pytest.approx(expected, rel=FLOAT32_REL)
    expected_sq = sum(  # the label enumerated: y = 1 with probability sigmoid(z), y = 0 otherwise
        prob * ((sigmoid - label) * z) ** 2 for label, prob in ((1, sigmoid), (0, 1 - sigmoid))
    )
    model_labels = np.sqrt(np.mean(expected_sq))
    assert FisherRao(label="model").compute(perceptron_view, {}) == pytest.approx(model_labels, rel=FLOAT32_REL)


def test_fisher_rao_one_logit_equals_parameter_gradient_inner_product(perceptron_view: CheckpointView) -> None:
    x, y, _ = _binary_batch()
    model = perceptron_view.module().double()
    try:
        sq = []
        for xi, yi in zip(torch.from_numpy(x), torch.from_numpy(y)):  # <theta, grad_theta loss> per sample
            loss = nn.functional.binary_cross_entropy_with_logits(model(xi[None])[:, 0], yi[None].double())
            (grad,) = torch.autograd.grad(loss, [model.fc.weight])
            sq.append(float((model.fc.weight.detach() * grad).sum()) ** 2)
    finally:
        model.float()
    assert FisherRao().compute(perceptron_view, {}) == pytest.approx(np.sqrt(np.mean(sq)), rel=FLOAT32_REL)


def test_margin_one_logit_is_signed_logit_over_the_same_normalisation(perceptron_view: CheckpointView) -> None:
    x, y, z = _binary_batch()
    raw = np.where(y == 1, z, -z)  # y in {0, 1} -> sign -1 / +1
    s = np.linalg.svd(_W, compute_uv=False)[0]
    t = np.linalg.norm(_W, axis=1).sum()
    R = s * (t / s) ** 1.0  # Bartlett's R for one layer: s * ((t/s)^(2/3))^(3/2)
    normalised = raw / (R * np.linalg.norm(x) / len(x))
    got = plugins.get("measures", "margin").compute(perceptron_view, {})
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert got[f"q{round(100 * q):02d}"] == pytest.approx(np.quantile(normalised, q), rel=FLOAT32_REL)


def test_one_logit_measures_refuse_labels_other_than_0_1(perceptron_view: CheckpointView) -> None:
    ctx = RunContext(model_spec=perceptron_view.context.model_spec, dataset={"name": "tiny_sign_data_test"}, P=20)
    view = CheckpointView(perceptron_view.tensors, ctx)
    for measure in (FisherRao(), plugins.get("measures", "margin")):
        with pytest.raises(MeasureError) as err:
            measure.compute(view, {})
        assert str(err.value) == "a one-logit (binary) model needs labels 0/1, found labels [-1, 1]"
