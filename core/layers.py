"""The ordered layer list of a model, as stored in a run's ``model_spec``.

``model_spec["layers"]`` is a list of :class:`LayerSpec` dicts in forward
order. Measures read weights through this list, so they never guess the
architecture from parameter names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from normdyn.core.errors import StoreError

__all__ = ["LAYER_KINDS", "LayerSpec"]

LAYER_KINDS = ("linear", "conv1d", "conv2d", "attn_q", "attn_k", "attn_v", "attn_out")


@dataclass(frozen=True)
class LayerSpec:
    """One weight-carrying layer.

    name:        module path (e.g. ``features.0``).
    kind:        one of :data:`LAYER_KINDS`. ``attn_q/k/v`` are row blocks of a
                 fused attention ``in_proj_weight`` (see ``rows``).
    weight:      state-dict key of the weight tensor.
    bias:        state-dict key of the bias, or None.
    rows:        (start, stop) rows of ``weight`` that belong to this layer
                 (Q, K, V split of a fused in_proj), or None for all rows.
    in_shape:    spatial shape of the layer's input ((H, W) for conv2d,
                 (L,) for conv1d), None for linear layers.
    in_channels: input channels (conv) or input features (linear).
    stride, padding, dilation: per spatial dimension (conv only).
    groups:      conv groups.
    padding_mode: "zeros" or "circular" (conv only).
    bn:          module path of a BatchNorm that directly follows this layer
                 (keys ``bn.weight``, ``bn.bias``, ``bn.running_mean``,
                 ``bn.running_var``; eps in ``bn_eps``), or None.
    """

    name: str
    kind: str
    weight: str
    bias: str | None = None
    rows: tuple[int, int] | None = None
    in_shape: tuple[int, ...] | None = None
    in_channels: int | None = None
    stride: tuple[int, ...] = field(default=())
    padding: tuple[int, ...] = field(default=())
    dilation: tuple[int, ...] = field(default=())
    groups: int = 1
    padding_mode: str = "zeros"
    bn: str | None = None
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise StoreError(f"layer {self.name!r}: unknown kind {self.kind!r} (use one of {', '.join(LAYER_KINDS)})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerSpec:
        """Inverse of :meth:`to_dict`; unknown, missing or malformed keys are an error naming them."""
        if not isinstance(d, Mapping):
            raise StoreError(f"layer spec {d!r}: expected an object with 'name', 'kind' and 'weight'")
        label = d.get("name", "?")
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise StoreError(f"layer spec {label!r}: unknown keys {sorted(extra)}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise StoreError(f"layer spec {label!r}: missing keys {missing}")
        kw = dict(d)
        for key in _STRINGS:
            if not isinstance(kw.get(key), str) and not (key == "bias" and kw.get(key) is None):
                raise StoreError(f"layer spec {label!r}: {key} {kw.get(key)!r} is not a string")
        for key in _INT_TUPLES:
            if kw.get(key) is not None:
                kw[key] = _int_tuple(label, key, kw[key], _INT_TUPLES[key])
        if not isinstance(kw.get("groups", 1), int) or kw.get("groups", 1) < 1:
            raise StoreError(f"layer spec {label!r}: groups {kw['groups']!r} is not a positive integer")
        return cls(**kw)


_REQUIRED = ("name", "kind", "weight")
_STRINGS = ("name", "kind", "weight", "bias")
#: tuple-valued keys and their least allowed element (a stride or dilation of 0 is no conv)
_INT_TUPLES = {"rows": 0, "in_shape": 1, "stride": 1, "padding": 0, "dilation": 1}


def _int_tuple(label: str, key: str, value: Any, least: int) -> tuple[int, ...]:
    """``value`` as a tuple of integers >= ``least`` (shapes, offsets, conv geometry), or a StoreError."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and v >= least for v in value):
        raise StoreError(f"layer spec {label!r}: {key} {value!r} is not a list of integers >= {least}")
    return tuple(value)
