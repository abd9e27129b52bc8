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
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise StoreError(f"layer spec {d.get('name', '?')!r}: unknown keys {sorted(extra)}")
        kw = dict(d)
        for key in ("rows", "in_shape", "stride", "padding", "dilation"):
            if kw.get(key) is not None:
                kw[key] = tuple(int(v) for v in kw[key])
        return cls(**kw)
