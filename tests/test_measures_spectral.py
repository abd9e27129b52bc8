"""Spectral and entry-wise measures against independent numpy computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from normdyn.core import plugins
from normdyn.core.errors import MeasureError, StoreError
from normdyn.core.layers import LayerSpec
from normdyn.core.view import CheckpointView, RunContext
from normdyn.plugins.measures.top_singular import matrix_top_singular


def _view(layers: list[LayerSpec], tensors: dict[str, torch.Tensor]) -> CheckpointView:
    ctx = RunContext(model_spec={"layers": [lay.to_dict() for lay in layers]})
    return CheckpointView(tensors, ctx)


def _mlp(rng: np.random.Generator, widths: list[int]) -> tuple[list[LayerSpec], dict[str, torch.Tensor]]:
    layers, tensors = [], {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(LayerSpec(name=f"l{i}", kind="linear", weight=f"l{i}.weight", bias=f"l{i}.bias", in_channels=a))
        tensors[f"l{i}.weight"] = torch.tensor(rng.normal(size=(b, a)), dtype=torch.float32)
        tensors[f"l{i}.bias"] = torch.tensor(rng.normal(size=b), dtype=torch.float32)
    return layers, tensors


def _np_bartlett(mats: list[np.ndarray]) -> float:
    s = [np.linalg.svd(m, compute_uv=False)[0] for m in mats]
    t = [np.linalg.norm(m, axis=1).sum() for m in mats]  # ||W^T||_{2,1}: row norms
    return float(np.prod(s) * sum((ti / si) ** (2 / 3) for ti, si in zip(t, s)) ** 1.5)


def test_known_singular_values_small_and_iterative() -> None:
    rng = np.random.default_rng(0)
    for m, n in [(20, 30), (300, 2000)]:  # exact path, then the warm-startable iteration
        u, _ = np.linalg.qr(rng.normal(size=(m, m)))
        v, _ = np.linalg.qr(rng.normal(size=(n, m)))
        s = np.linspace(1.0, 5.0, m)[::-1].copy()
        mat = torch.tensor((u * s) @ v.T, dtype=torch.float64)
        top = matrix_top_singular(mat)
        assert top.sigma == pytest.approx(5.0, rel=1e-7)
    assert top.method in ("iteration", "exact-fallback")


def test_warm_start_converges_on_drifted_matrix_and_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(256, 3000)) + 3 * np.outer(rng.normal(size=256), rng.normal(size=3000)) / 20
    first = matrix_top_singular(torch.tensor(base, dtype=torch.float32))
    drifted = base + 1e-3 * rng.normal(size=base.shape)
    second = matrix_top_singular(torch.tensor(drifted, dtype=torch.float32), first.block)
    assert second.method == "iteration" and second.iterations <= 3
    ref = np.linalg.svd(drifted.astype(np.float32).astype(np.float64), compute_uv=False)[0]
    assert second.sigma == pytest.approx(ref, rel=1e-5)


def test_spectral_measures_match_numpy_on_mlp() -> None:
    rng = np.random.default_rng(2)
    layers, tensors = _mlp(rng, [7, 5, 6, 3])
    view = _view(layers, tensors)
    mats = [tensors[lay.weight].double().numpy() for lay in layers]
    reg = plugins.registry("measures")
    assert reg.get("spectral_complexity").compute(view, {}) == pytest.approx(_np_bartlett(mats), rel=1e-6)
    prod = np.prod([np.linalg.svd(m, compute_uv=False)[0] for m in mats])
    assert reg.get("spectral_product").compute(view, {}) == pytest.approx(prod, rel=1e-6)
    cols = sum(np.linalg.norm(m, axis=0).sum() for m in mats)
    assert reg.get("group21").compute(view, {}) == pytest.approx(cols, rel=1e-6)
    everything = np.concatenate([t.double().numpy().ravel() for t in tensors.values()])
    assert reg.get("frobenius").compute(view, {}) == pytest.approx(np.sqrt((everything**2).sum()), rel=1e-6)
    assert reg.get("l1").compute(view, {}) == pytest.approx(np.abs(everything).sum(), rel=1e-6)


def test_include_bias_appends_a_column() -> None:
    rng = np.random.default_rng(3)
    layers, tensors = _mlp(rng, [4, 3, 2])
    view = _view(layers, tensors)
    mats = [
        np.hstack([tensors[lay.weight].double().numpy(), tensors[lay.bias].double().numpy()[:, None]]) for lay in layers
    ]
    from normdyn.plugins.measures.spectral import SpectralComplexity

    assert SpectralComplexity(include_bias=True).compute(view, {}) == pytest.approx(_np_bartlett(mats), rel=1e-6)


def test_batchnorm_folding_into_conv() -> None:
    rng = np.random.default_rng(4)
    conv = LayerSpec(
        name="c",
        kind="conv2d",
        weight="c.weight",
        bias=None,
        in_shape=(5, 5),
        in_channels=2,
        stride=(1, 1),
        padding=(1, 1),
        dilation=(1, 1),
        bn="bn",
        bn_eps=1e-5,
    )
    fc = LayerSpec(name="f", kind="linear", weight="f.weight", in_channels=12)
    t = {
        "c.weight": rng.normal(size=(3, 2, 3, 3)),
        "bn.weight": rng.uniform(0.5, 2, 3),
        "bn.bias": rng.normal(size=3),
        "bn.running_mean": rng.normal(size=3),
        "bn.running_var": rng.uniform(0.5, 2, 3),
        "bn.num_batches_tracked": np.array(3),
        "f.weight": rng.normal(size=(2, 12)),
    }
    tensors = {k: torch.tensor(v) for k, v in t.items()}
    view = _view([conv, fc], tensors)
    scale = t["bn.weight"] / np.sqrt(t["bn.running_var"] + 1e-5)
    folded = t["c.weight"].reshape(3, -1) * scale[:, None]
    from normdyn.plugins.measures.spectral import SpectralComplexity

    assert SpectralComplexity().compute(view, {}) == pytest.approx(_np_bartlett([folded, t["f.weight"]]), rel=1e-10)
    raw = SpectralComplexity(fold_bn=False).compute(view, {})
    assert raw == pytest.approx(_np_bartlett([t["c.weight"].reshape(3, -1), t["f.weight"]]), rel=1e-10)
    # BatchNorm statistics are buffers, not parameters: frobenius over parameters leaves them out
    params = [t[k] for k in ("c.weight", "bn.weight", "bn.bias", "f.weight")]
    fro = np.sqrt(sum((p**2).sum() for p in params))
    assert plugins.get("measures", "frobenius").compute(view, {}) == pytest.approx(fro, rel=1e-12)


def test_attention_rows_are_split_into_q_k_v() -> None:
    rng = np.random.default_rng(5)
    w = torch.tensor(rng.normal(size=(12, 4)))
    layers = [
        LayerSpec(name=f"a.{k}", kind=f"attn_{k}", weight="a.in_proj_weight", rows=(i * 4, i * 4 + 4), in_channels=4)
        for i, k in enumerate("qkv")
    ]
    view = _view(layers, {"a.in_proj_weight": w})
    mats = [w.numpy()[i * 4 : (i + 1) * 4] for i in range(3)]
    assert plugins.get("measures", "spectral_complexity").compute(view, {}) == pytest.approx(_np_bartlett(mats))


def _reference_compute_model_norm(model: torch.nn.Module) -> float:
    """deep_norm's CNNClassifier.compute_model_norm, written out with numpy."""
    mods = [
        m for m in list(model.features) + list(model.classifier) if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    mats = [m.weight.detach().double().numpy().reshape(m.weight.shape[0], -1) for m in mods]
    s = [np.linalg.svd(w, compute_uv=False)[0] for w in mats]
    t = [np.linalg.norm(w, axis=0).sum() for w in mats]
    total = sum((sum(t[i + 1 :]) if i < len(s) - 1 else 0.0) ** (2 / 3) / s[i] ** (2 / 3) for i in range(len(s)))
    return float(np.prod(s) * total**1.5)


def test_spectral_complexity_dn_equals_reference_on_paper_cnn() -> None:
    family = plugins.get("models", "cnn")
    spec = family.spec(input_shape=(3, 8, 8), num_classes=10, conv_channels=[4, 8, 16], hidden=[32])
    torch.manual_seed(0)
    model = family.build(spec)
    view = CheckpointView(model.state_dict(), RunContext(model_spec=spec))
    assert [lay.kind for lay in view.layers] == ["conv2d", "conv2d", "conv2d", "linear", "linear"]
    value = plugins.get("measures", "spectral_complexity_dn").compute(view, {})
    assert value == pytest.approx(_reference_compute_model_norm(model), rel=1e-6)


def test_view_rejects_tensors_that_do_not_match_the_spec() -> None:
    layer = LayerSpec(name="l", kind="conv2d", weight="l.weight", in_channels=3, in_shape=(4, 4))
    with pytest.raises(StoreError, match=r"'l' \(conv2d\) expects a 4-D weight 'l.weight', found shape \[3, 3\]"):
        _view([layer], {"l.weight": torch.zeros(3, 3)})
    with pytest.raises(StoreError, match="tensor 'l.weight' named by the model spec is missing"):
        _view([layer], {"other": torch.zeros(3, 3)})


def test_spectral_complexity_dn_refuses_a_guessed_layer_order(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"b.weight": torch.eye(3), "a.weight": 2 * torch.eye(3)}, str(path))  # stored sorted: a, b
    dn = plugins.get("measures", "spectral_complexity_dn")
    assert dn.order_dependent and not plugins.get("measures", "spectral_complexity").order_dependent
    guessed = CheckpointView.open(path, RunContext(model_spec={}))
    with pytest.raises(MeasureError, match=f"^{path}: spectral_complexity_dn depends on the order of the layers, "):
        dn.compute(guessed, {})
    known = CheckpointView.open(path, RunContext(model_spec={"layer_order": "state_dict"}))
    # layers a, b: sigma = (2, 1), t = (6, 3): R_dn = 2 * (3^(2/3) / 2^(2/3))^(3/2) = 3; power iteration to 1e-7
    assert dn.compute(known, {}) == pytest.approx(3.0, rel=1e-6)
