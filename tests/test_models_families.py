"""Model families: traced layer lists (order, kinds, geometry, input shapes,
BatchNorm links, attention Q/K/V split), presets chosen by the data, and
rebuilding from the JSON spec alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from normdyn.core import plugins
from normdyn.core.errors import ConfigError
from normdyn.core.layers import LayerSpec


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(name: str, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> dict[str, Any]:
    spec = plugins.get("models", name).spec(input_shape=input_shape, num_classes=num_classes, **params)
    return json.loads(json.dumps(spec))  # what the store keeps


def _check_rebuild(spec: dict[str, Any]) -> torch.nn.Module:
    """The spec alone rebuilds a module whose state-dict keys hold every layer's tensors."""
    model = plugins.get("models", spec["name"]).build(spec)
    state = model.state_dict()
    for layer in map(LayerSpec.from_dict, spec["layers"]):
        assert layer.weight in state
        assert layer.bias is None or layer.bias in state
    out = model(torch.zeros(2, *spec["input_shape"]))
    assert out.shape == (2, spec["num_classes"])
    return model


def test_cnn_layers_follow_the_reference_architecture() -> None:
    spec = _spec("cnn", (1, 28, 28), 10)
    assert spec["conv_channels"] == [32, 64, 128] and spec["hidden"] == [512] and spec["dropout"] == 0.0
    layers = [LayerSpec.from_dict(d) for d in spec["layers"]]
    assert [(lay.name, lay.kind, lay.in_shape, lay.in_channels) for lay in layers] == [
        ("features.0", "conv2d", (28, 28), 1),
        ("features.2", "conv2d", (28, 28), 32),
        ("features.5", "conv2d", (14, 14), 64),  # one max-pool after the second conv
        ("classifier.0", "linear", None, 128 * 14 * 14),
        ("classifier.2", "linear", None, 512),
    ]
    assert layers[0].padding == (1, 1) and layers[0].stride == (1, 1) and layers[0].bias == "features.0.bias"
    _check_rebuild(spec)


def test_presets_are_chosen_by_the_data() -> None:
    cnn = plugins.get("models", "cnn")
    assert cnn.resolve((3, 32, 32), 100)["conv_channels"] == [64, 128, 256, 512]
    assert cnn.resolve((3, 32, 32), 100)["hidden"] == [1024, 512]
    assert cnn.resolve((3, 32, 32), 100)["dropout"] == 0.1
    resnet = plugins.get("models", "resnet")
    assert resnet.resolve((1, 28, 28), 10) == {"blocks": [2, 2, 2, 2], "widths": [16, 32, 64, 128]}
    assert resnet.resolve((3, 32, 32), 10) == {"blocks": [2, 2, 2, 2], "widths": [64, 128, 256, 512]}
    assert resnet.resolve((3, 32, 32), 100) == {"blocks": [3, 4, 6, 3], "widths": [64, 128, 256, 512]}
    vit = plugins.get("models", "vit")
    assert vit.resolve((1, 28, 28), 10) == {"patch": 7, "dim": 128, "depth": 4, "heads": 4, "mlp_ratio": 4.0}
    assert vit.resolve((3, 32, 32), 10) == {"patch": 4, "dim": 192, "depth": 6, "heads": 3, "mlp_ratio": 4.0}
    assert vit.resolve((3, 32, 32), 100) == {"patch": 4, "dim": 256, "depth": 6, "heads": 4, "mlp_ratio": 4.0}
    assert vit.resolve((3, 32, 32), 10, preset="mnist")["patch"] == 7


def test_resnet_links_batchnorm_and_projection_convs() -> None:
    spec = _spec("resnet", (1, 8, 8), 10, blocks=[1, 1], widths=[4, 8])
    layers = [LayerSpec.from_dict(d) for d in spec["layers"]]
    assert [(lay.name, lay.in_shape, lay.stride, lay.bn) for lay in layers] == [
        ("stem.0", (8, 8), (1, 1), "stem.1"),
        ("stages.0.0.conv1", (8, 8), (1, 1), "stages.0.0.bn1"),
        ("stages.0.0.conv2", (8, 8), (1, 1), "stages.0.0.bn2"),
        ("stages.1.0.conv1", (8, 8), (2, 2), "stages.1.0.bn1"),
        ("stages.1.0.conv2", (4, 4), (1, 1), "stages.1.0.bn2"),
        ("stages.1.0.downsample.0", (8, 8), (2, 2), "stages.1.0.downsample.1"),
        ("fc", None, (), None),
    ]
    assert all(lay.bias is None for lay in layers[:-1]) and layers[-1].bias == "fc.bias"
    model = _check_rebuild(spec)
    assert "stages.1.0.downsample.1.running_var" in model.state_dict()


def test_vit_splits_attention_into_q_k_v_rows() -> None:
    spec = _spec("vit", (1, 6, 6), 4, patch=3, dim=8, depth=2, heads=2)
    layers = [LayerSpec.from_dict(d) for d in spec["layers"]]
    block = [
        ("attn_q", (0, 8)),
        ("attn_k", (8, 16)),
        ("attn_v", (16, 24)),
        ("attn_out", None),
        ("linear", None),
        ("linear", None),
    ]
    assert [(lay.kind, lay.rows) for lay in layers] == [("conv2d", None)] + block * 2 + [("linear", None)]
    assert layers[0].in_shape == (6, 6) and layers[0].stride == (3, 3)
    assert layers[1].weight == layers[2].weight == layers[3].weight == "blocks.0.attn.in_proj_weight"
    assert layers[4].weight == "blocks.0.attn.out_proj.weight"
    assert layers[-1].name == "head"
    _check_rebuild(spec)


def test_mlp_and_cnn1d() -> None:
    mlp = _spec("mlp", (5,), 2, widths=[7, 3], bias=False)
    assert [(d["name"], d["in_channels"], d["bias"]) for d in mlp["layers"]] == [
        ("net.1", 5, None),
        ("net.3", 7, None),
        ("net.5", 3, None),
    ]
    _check_rebuild(mlp)
    cnn1d = _spec("cnn1d", (1, 40), 10)
    assert [(d["kind"], d["in_shape"]) for d in cnn1d["layers"]] == [
        ("conv1d", [40]),
        ("conv1d", [19]),
        ("conv1d", [9]),
        ("linear", None),
    ]
    assert cnn1d["layers"][-1]["in_channels"] == 25 * 4
    _check_rebuild(cnn1d)


def test_rebuilt_models_have_identical_structure_and_keys() -> None:
    spec = _spec("cnn", (3, 8, 8), 5, conv_channels=[4, 6], hidden=[16], dropout=0.2)
    a, b = (plugins.get("models", "cnn").build(spec) for _ in range(2))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert str(a) == str(b)


def test_bad_model_parameters_are_named() -> None:
    with pytest.raises(ConfigError, match="model 'mlp': unknown parameter\\(s\\) width; allowed: preset, bias, widths"):
        plugins.get("models", "mlp").spec(input_shape=(4,), num_classes=2, width=[3])
    with pytest.raises(ConfigError, match="model 'cnn': unknown preset 'huge'; available: standard, cifar100"):
        plugins.get("models", "cnn").spec(input_shape=(1, 8, 8), num_classes=2, preset="huge")
    with pytest.raises(ConfigError, match="model 'cnn' needs image input \\[C, H, W\\], got input_shape \\[40\\]"):
        plugins.get("models", "cnn").spec(input_shape=(40,), num_classes=2)
    with pytest.raises(ConfigError, match="patch 5 does not divide the image size \\[8, 8\\]"):
        plugins.get("models", "vit").spec(input_shape=(1, 8, 8), num_classes=2, patch=5, dim=4, depth=1, heads=1)
