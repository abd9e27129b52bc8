"""The view of one checkpoint that complexity measures compute from.

A :class:`RunContext` holds what is shared by all checkpoints of one run: the
ordered layer list (from ``model_spec["layers"]``, or inferred from a foreign
file), the rebuilt ``nn.Module`` and the data batch (both lazy, built once per
run), and the run's first checkpoint (for distances from initialisation).
A :class:`CheckpointView` adds the tensors of one checkpoint, read in one go,
and checks them against the layer list before any measure sees them.

Models and datasets are reached through the plugin host only
(``plugins.get("models", spec["name"])``); core knows no plugin by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from normdyn.core import plugins
from normdyn.core.checkpoint import CheckpointFile
from normdyn.core.datasets import load_dataset
from normdyn.core.errors import DataError, MeasureError, StoreError
from normdyn.core.layers import LayerSpec
from normdyn.core.sampling import subset_indices

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from normdyn.core.store import Run

__all__ = [
    "RunContext",
    "CheckpointView",
    "infer_layers",
    "spec_layers",
    "BUFFER_SUFFIXES",
    "LAYER_ORDER_KEY",
    "ORDER_STATE_DICT",
    "ORDER_FILE",
]

#: State-dict entries that are buffers, not parameters (BatchNorm statistics).
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
#: ``model_spec`` key saying where the order of a spec-less run's tensors comes from:
#: :data:`ORDER_STATE_DICT` (a ``state_dict()``'s registration order, i.e. forward order
#: for sequential models) or :data:`ORDER_FILE` (the order of a foreign file, e.g.
#: ``safetensors.save_file``'s alphabetical one: a guess).
LAYER_ORDER_KEY = "layer_order"
ORDER_STATE_DICT = "state_dict"
ORDER_FILE = "file"
_WEIGHT_NDIM = {"linear": 2, "conv1d": 3, "conv2d": 4, "attn_q": 2, "attn_k": 2, "attn_v": 2, "attn_out": 2}


def infer_layers(file: CheckpointFile) -> list[LayerSpec]:
    """Layers of a foreign checkpoint without a model spec, in file order.

    Every 2-D tensor whose name ends in ``weight`` is a linear layer, every 4-D
    one a conv2d (stride 1, no padding, input shape unknown); a sibling
    ``bias`` tensor of matching length is its bias. File order is the order
    the tensors were saved in (:meth:`CheckpointFile.keys`), which is the
    ``state_dict()`` order only when the file was written from a state dict
    by normdyn; a foreign ``.safetensors`` file lists its tensors sorted by
    name. Whether the order can be trusted is the run's business
    (:attr:`RunContext.layer_order_known`); callers attach a warning.
    """
    layers = []
    for key in file.keys():
        shape = file.shape(key)
        if not key.endswith("weight") or len(shape) not in (2, 4):
            continue
        prefix = key[: -len("weight")]
        bias = prefix + "bias"
        has_bias = bias in file and file.shape(bias) == [shape[0]]
        name = prefix.rstrip(".") or key
        if len(shape) == 2:
            layers.append(
                LayerSpec(name=name, kind="linear", weight=key, bias=bias if has_bias else None, in_channels=shape[1])
            )
        else:
            layers.append(
                LayerSpec(
                    name=name,
                    kind="conv2d",
                    weight=key,
                    bias=bias if has_bias else None,
                    in_channels=shape[1],
                    stride=(1, 1),
                    padding=(0, 0),
                    dilation=(1, 1),
                )
            )
    return layers


@dataclass
class RunContext:
    """What the checkpoints of one run share: layers, model, data, first checkpoint.

    ``model_spec`` and ``dataset`` are the run's JSON attributes; ``P`` and
    ``seed`` select the training samples (:func:`normdyn.core.sampling.subset_indices`).
    ``initial`` loads the run's first checkpoint (None when unknown).
    """

    model_spec: Mapping[str, Any]
    dataset: Mapping[str, Any] = field(default_factory=dict)
    P: int = 0
    seed: int = 0
    device: str = "cpu"
    data_root: str | None = None
    initial: Callable[[], dict[str, torch.Tensor]] | None = None
    warnings: list[str] = field(default_factory=list)
    _layers: list[LayerSpec] | None = None
    _module: nn.Module | None = None
    _param_names: list[str] | None = None
    _data: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _initial: dict[str, torch.Tensor] | None = None

    @classmethod
    def for_run(cls, run: Run, *, device: str = "cpu", data_root: str | None = None) -> RunContext:
        """The context of ``run`` (its first checkpoint is the initial point)."""
        attrs = run.attrs
        for key in ("model_spec", "dataset"):
            if not isinstance(attrs.get(key) or {}, dict):
                raise StoreError(f"{run.index}: attribute {key!r} is a JSON {type(attrs[key]).__name__}, not an object")
        for key in ("P", "seed"):
            if not isinstance(attrs.get(key, 0), int):
                raise StoreError(f"{run.index}: attribute {key!r} is {attrs[key]!r}, not an integer")
        return cls(
            model_spec=attrs.get("model_spec") or {},
            dataset=attrs.get("dataset") or {},
            P=int(attrs.get("P", 0)),
            seed=int(attrs.get("seed", 0)),
            device=device,
            data_root=data_root,
            initial=lambda: run.load_state_dict(0),
        )

    def layers(self, file: CheckpointFile | None = None) -> list[LayerSpec]:
        """The ordered layer list (inferred from ``file`` when the spec has none)."""
        if self._layers is None:
            specs = self.model_spec.get("layers")
            if specs:
                self._layers = spec_layers(specs)
            elif file is not None:
                self._layers = infer_layers(file)
                self.warnings.append(
                    f"{file.path}: no model spec; layers inferred from parameter order in the file "
                    f"({len(self._layers)} layers: 2-D = linear, 4-D = conv2d without geometry)"
                )
            else:
                raise StoreError(
                    "no layer list: the run has no model_spec['layers'] and no checkpoint to infer it from"
                )
        return self._layers

    @property
    def layer_order_known(self) -> bool:
        """True when the layers' forward order is known: listed by the spec, or a spec-less
        run whose files keep the ``state_dict()`` order (``model_spec["layer_order"]``)."""
        return bool(self.model_spec.get("layers")) or self.model_spec.get(LAYER_ORDER_KEY) == ORDER_STATE_DICT

    def has_spec(self) -> bool:
        """True when the run's model spec names a model family (the module can be rebuilt)."""
        return bool(self.model_spec.get("name"))

    def module(self) -> nn.Module:
        """The rebuilt module (built once per run, weights loaded per checkpoint)."""
        if self._module is None:
            if not self.has_spec():
                raise MeasureError(
                    "this measure needs the model, but the run has no model_spec with a "
                    "'name' (import it with --model SPEC)"
                )
            family = plugins.get("models", str(self.model_spec["name"]))
            self._module = family.build(self.model_spec).to(self.device).eval()
        return self._module

    def parameter_names(self, tensors: Mapping[str, torch.Tensor]) -> list[str]:
        """State-dict keys that are parameters (not buffers), in checkpoint order."""
        if self._param_names is None:
            if self.has_spec() and self._module is not None:
                names = {n for n, _ in self._module.named_parameters()}
                self._param_names = [k for k in tensors if k in names]
            else:
                self._param_names = [
                    k for k in tensors if not k.endswith(BUFFER_SUFFIXES) and tensors[k].is_floating_point()
                ]
        return self._param_names

    def data(self, split: str = "train", n: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n`` samples (x, y) of the run's training subset or of the test set."""
        key = (split, n)
        if key not in self._data:
            spec = dict(self.dataset)
            name = spec.pop("name", None)
            if not name:
                raise DataError("this measure needs data, but the run has no dataset spec (run.dataset['name'])")
            root = spec.pop("root", None) if self.data_root is None else self.data_root
            spec.pop("root", None)
            tensors = load_dataset(str(name), root=root, params=spec)
            if split == "train":
                x, y = tensors.x_train, tensors.y_train
                if self.P:
                    idx = subset_indices(len(x), self.P, self.seed)
                    x, y = x[idx], y[idx]
            elif split == "test":
                x, y = tensors.x_test, tensors.y_test
            else:
                raise DataError(f"split {split!r}: use 'train' or 'test'")
            self._data[key] = (x[:n].to(self.device), y[:n].to(self.device))
        return self._data[key]

    def initial_state(self) -> dict[str, torch.Tensor]:
        """Tensors of the run's first checkpoint (the initialisation)."""
        if self._initial is None:
            if self.initial is None:
                raise MeasureError("the run's initial checkpoint is unknown")
            self._initial = self.initial()
        return self._initial


def spec_layers(specs: Any) -> list[LayerSpec]:
    """The :class:`LayerSpec` list of ``model_spec["layers"]``; a bad entry is a StoreError naming its index."""
    if not isinstance(specs, list):
        raise StoreError(f"model_spec['layers'] is a {type(specs).__name__}, not a list of layer objects")
    layers = []
    for i, d in enumerate(specs):
        try:
            layers.append(LayerSpec.from_dict(d))
        except StoreError as exc:
            raise StoreError(f"model_spec['layers'][{i}]: {exc}") from None
    return layers


class CheckpointView:
    """One checkpoint as measures see it: ordered layers and their tensors.

    ``layers`` is the ordered list of :class:`LayerSpec`; :meth:`weight`,
    :meth:`bias` and :meth:`matrix` give a layer's tensors (the Q/K/V rows of a
    fused in_proj already split); :meth:`module` and :meth:`data` are lazy;
    ``cache`` is a dict where measures share per-checkpoint intermediate
    results (e.g. per-layer spectral norms used by several measures).
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        context: RunContext,
        *,
        file: CheckpointFile | None = None,
        label: str = "checkpoint",
    ):
        self.context = context
        self.label = label
        self.layers: list[LayerSpec] = context.layers(file)
        self.tensors: dict[str, torch.Tensor] = dict(tensors)
        self.cache: dict[Any, Any] = {}
        self._module_loaded = False
        self._check()

    @classmethod
    def open(cls, path: Any, context: RunContext) -> CheckpointView:
        """Read the safetensors file at ``path`` (one read) and check it against the layers."""
        return cls.from_file(CheckpointFile(path), context)

    @classmethod
    def from_file(cls, file: CheckpointFile, context: RunContext) -> CheckpointView:
        """The view of an opened checkpoint (e.g. ``run.checkpoint(row)``, hash-verified)."""
        return cls(file.load_all(), context, file=file, label=str(file.path))

    def require_layer_order(self, measure: str) -> None:
        """Refuse (MeasureError) an order-dependent ``measure`` when the layer order is a guess."""
        if not self.context.layer_order_known:
            raise MeasureError(
                f"{self.label}: {measure} depends on the order of the layers, but this run has no layer "
                f"list and its tensors are in file order, not forward order (a .safetensors file lists "
                f"them sorted by name); give the order: re-import with `normdyn import --model SPEC` "
                f"(a JSON file or object with 'layers' in forward order, or a model family 'name', "
                f"'input_shape' and 'num_classes'), or from .pt state dicts, which keep it"
            )

    @property
    def device(self) -> str:
        return self.context.device

    def _check(self) -> None:
        for layer in self.layers:
            w = self._tensor(layer.weight)
            ndim = _WEIGHT_NDIM[layer.kind]
            if w.dim() != ndim:
                raise StoreError(
                    f"{self.label}: layer {layer.name!r} ({layer.kind}) expects a {ndim}-D weight "
                    f"{layer.weight!r}, found shape {list(w.shape)}; the checkpoint does not match "
                    f"its model spec"
                )
            if layer.rows is not None and not 0 <= layer.rows[0] < layer.rows[1] <= w.shape[0]:
                raise StoreError(
                    f"{self.label}: layer {layer.name!r} rows {list(layer.rows)} outside weight "
                    f"{layer.weight!r} of shape {list(w.shape)}"
                )
            if layer.in_channels is not None and ndim > 2 and w.shape[1] * layer.groups != layer.in_channels:
                raise StoreError(
                    f"{self.label}: layer {layer.name!r} has {layer.in_channels} input channels in "
                    f"the spec but weight {layer.weight!r} has shape {list(w.shape)}"
                )
            if layer.in_channels is not None and ndim == 2 and w.shape[1] != layer.in_channels:
                raise StoreError(
                    f"{self.label}: layer {layer.name!r} has {layer.in_channels} input features in "
                    f"the spec but weight {layer.weight!r} has shape {list(w.shape)}"
                )
            if layer.bias is not None:
                b = self._tensor(layer.bias)
                if list(b.shape) != [w.shape[0]]:
                    raise StoreError(
                        f"{self.label}: bias {layer.bias!r} has shape {list(b.shape)}, "
                        f"weight {layer.weight!r} has {w.shape[0]} outputs"
                    )

    def _tensor(self, key: str) -> torch.Tensor:
        try:
            return self.tensors[key]
        except KeyError:
            raise StoreError(
                f"{self.label}: tensor {key!r} named by the model spec is missing "
                f"(has: {', '.join(list(self.tensors)[:12])})"
            ) from None

    def _rows(self, layer: LayerSpec, t: torch.Tensor) -> torch.Tensor:
        return t if layer.rows is None else t[layer.rows[0] : layer.rows[1]]

    def weight(self, layer: LayerSpec) -> torch.Tensor:
        """The layer's weight as stored (conv kernels 3-D/4-D), rows split for Q/K/V."""
        return self._rows(layer, self._tensor(layer.weight))

    def bias(self, layer: LayerSpec) -> torch.Tensor | None:
        """The layer's bias (rows split for Q/K/V), or None."""
        return None if layer.bias is None else self._rows(layer, self._tensor(layer.bias))

    def folded(self, layer: LayerSpec, fold_bn: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) with a following BatchNorm folded in when ``fold_bn`` and ``layer.bn``.

        Folding: s = gamma / sqrt(running_var + eps); W' = s * W (per output
        channel), b' = s * (b - running_mean) + beta.
        """
        w, b = self.weight(layer), self.bias(layer)
        if not fold_bn or layer.bn is None:
            return w, b
        p = layer.bn
        gamma, beta = self._tensor(f"{p}.weight"), self._tensor(f"{p}.bias")
        mean, var = self._tensor(f"{p}.running_mean"), self._tensor(f"{p}.running_var")
        scale = gamma / torch.sqrt(var + layer.bn_eps)
        shape = (-1,) + (1,) * (w.dim() - 1)
        b0 = torch.zeros_like(mean) if b is None else b
        return w * scale.reshape(shape), scale * (b0 - mean) + beta

    def matrix(self, layer: LayerSpec, *, fold_bn: bool = True, include_bias: bool = False) -> torch.Tensor:
        """The layer as a matrix (out, in*k...), BatchNorm folded, bias as a last column if asked."""
        w, b = self.folded(layer, fold_bn)
        m = w.reshape(w.shape[0], -1)
        if include_bias and b is not None:
            m = torch.cat([m, b.reshape(-1, 1).to(m.dtype)], dim=1)
        return m.to(self.device)

    def parameters(self) -> dict[str, torch.Tensor]:
        """All parameters (buffers such as BatchNorm statistics excluded), in checkpoint order."""
        return {k: self.tensors[k] for k in self.context.parameter_names(self.tensors)}

    def module(self) -> nn.Module:
        """The run's module with this checkpoint's weights loaded (eval mode)."""
        model = self.context.module()
        if not self._module_loaded:
            try:
                model.load_state_dict(self.tensors, strict=True)
            except RuntimeError as exc:
                raise StoreError(f"{self.label}: tensors do not fit the rebuilt model: {exc}") from None
            self._module_loaded = True
        return model

    def data(self, split: str = "train", n: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n`` samples (x, y) of the run's training subset or the test set."""
        return self.context.data(split, n)

    def nonfinite_tensors(self) -> list[str]:
        """Names of tensors holding NaN or inf (used to explain a non-finite result)."""
        return [k for k, t in self.tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
