"""Entry-wise and group norms of the parameters, and the distance from initialisation.

Defaults follow the reference code (deep_norm): Frobenius and l1 over ALL
parameters (biases included, BatchNorm statistics excluded as they are
buffers, not parameters); group (2,1) over the layers' raw weight matrices.
``scope="weights"`` restricts Frobenius, l1 and the distance to the layers'
weight tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from normdyn.core.errors import ConfigError, MeasureError
from normdyn.core.hookspecs import hookimpl
from normdyn.plugins.measures.spectral import column_norms21

__all__ = ["Frobenius", "L1", "Group21", "DistanceFromInit", "scoped_tensors"]

_SCOPES = ("all", "weights")


def scoped_tensors(view: Any, scope: str) -> dict[str, torch.Tensor]:
    """The tensors a norm runs over: all parameters, or the layers' weights only."""
    if scope == "all":
        return view.parameters()
    if scope == "weights":
        return {layer.weight: view.tensors[layer.weight] for layer in view.layers}
    raise ConfigError(f"scope {scope!r}: use one of {', '.join(_SCOPES)}")


def _sum(values: Iterable[torch.Tensor]) -> float:
    return float(sum(float(v) for v in values))


class _ScopedBase:
    version = "1"
    needs = frozenset({"weights"})

    def __init__(self, scope: str = "all"):
        if scope not in _SCOPES:
            raise ConfigError(f"scope {scope!r}: use one of {', '.join(_SCOPES)}")
        self.params: dict[str, Any] = {"scope": scope}


class Frobenius(_ScopedBase):
    """Frobenius norm: sqrt( sum_theta theta^2 ) over all parameters (scope "all",
    the reference's definition) or over the layer weights (scope "weights")."""

    name = "frobenius"

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        tensors = scoped_tensors(view, self.params["scope"]).values()
        return _sum(torch.linalg.vector_norm(t).double() ** 2 for t in tensors) ** 0.5


class L1(_ScopedBase):
    """l1 norm: sum_theta |theta| over all parameters (scope "all", the reference's
    definition) or over the layer weights (scope "weights")."""

    name = "l1"

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        return _sum(t.abs().sum(dtype=torch.float64) for t in scoped_tensors(view, self.params["scope"]).values())


class Group21:
    """Group (2,1) norm: sum_i ||W_i||_{2,1}, where ||M||_{2,1} is the sum of the l2
    norms of the COLUMNS of M and W_i is layer i's raw weight as a matrix
    (out x in*k*k), as in the reference. Params: fold_bn (False), include_bias (False)."""

    name = "group21"
    version = "1"
    needs = frozenset({"weights"})

    def __init__(self, fold_bn: bool = False, include_bias: bool = False):
        self.params: dict[str, Any] = {"fold_bn": fold_bn, "include_bias": include_bias}

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        return float(sum(column_norms21(view, **self.params)))


class DistanceFromInit(_ScopedBase):
    """Distance from initialisation: sqrt( sum_theta (theta_t - theta_0)^2 ), theta_0 the
    run's first checkpoint, over all parameters (scope "all") or the layer weights."""

    name = "distance_from_init"

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        initial = view.context.initial_state()
        total = 0.0
        for key, t in scoped_tensors(view, self.params["scope"]).items():
            if key not in initial or initial[key].shape != t.shape:
                raise MeasureError(
                    f"{view.label}: parameter {key!r} has no counterpart of the same shape "
                    f"in the run's first checkpoint"
                )
            total += float(torch.linalg.vector_norm((t - initial[key]).double()) ** 2)
        return total**0.5


@hookimpl
def register_measures(register: Any) -> None:
    register(Frobenius())
    register(L1())
    register(Group21())
    register(DistanceFromInit())
