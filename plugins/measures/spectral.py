"""Spectral measures: Bartlett's spectral complexity, the reference code's
variant, and the product of spectral norms.

W_i is layer i's weight in forward order as a matrix (out x in*k*k for a
conv kernel), with a following BatchNorm folded in (``fold_bn``: default
True for the Bartlett measures, whose Lipschitz argument concerns the
eval-mode map; False for the reference variant) and the bias appended as a
last column when ``include_bias`` (default False, as in the paper). sigma_i is its largest singular value; the
(2,1)-norm ||M||_{2,1} sums the l2 norms of the COLUMNS of M.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from normdyn.core.hookspecs import hookimpl
from normdyn.plugins.measures.top_singular import DEFAULT_TOL, matrix_top_singular

__all__ = [
    "LayerNorms",
    "layer_norms",
    "column_norms21",
    "SpectralComplexity",
    "SpectralComplexityDN",
    "SpectralProduct",
    "bartlett",
    "bartlett_dn",
]


class LayerNorms:
    """Per-layer sigma_i and ||W_i^T||_{2,1} (the sum of row l2 norms)."""

    def __init__(self, sigma: list[float], rows21: list[float]):
        self.sigma, self.rows21 = sigma, rows21


def _norm_sum(m: torch.Tensor, dim: int) -> float:
    # l2 norms in the matrix's dtype (a float64 copy of a large layer costs more than the
    # whole spectral computation), summed in float64
    return float(torch.linalg.vector_norm(m, dim=dim).double().sum())


def layer_norms(
    view: Any, state: dict[str, Any], *, fold_bn: bool, include_bias: bool, tol: float = DEFAULT_TOL
) -> LayerNorms:
    """The per-layer norms of one checkpoint, computed once and shared by the spectral measures.

    Top singular values are warm-started from ``state["warm"]`` (the previous
    checkpoint's singular blocks) and the result is cached in ``view.cache``.
    """
    key = ("layer_norms", fold_bn, include_bias, tol)
    if key in view.cache:
        return view.cache[key]
    warm: dict[str, torch.Tensor] = state.setdefault("warm", {})
    sigma, rows21 = [], []
    for layer in view.layers:
        m = view.matrix(layer, fold_bn=fold_bn, include_bias=include_bias)
        top = matrix_top_singular(m, warm.get(layer.name), tol=tol)
        if top.block is not None:
            warm[layer.name] = top.block
        sigma.append(top.sigma)
        rows21.append(_norm_sum(m, 1))
    result = LayerNorms(sigma, rows21)
    view.cache[key] = result
    return result


def column_norms21(view: Any, *, fold_bn: bool, include_bias: bool) -> list[float]:
    """||W_i||_{2,1} (the sum of column l2 norms) of every layer, cached in ``view.cache``."""
    key = ("column_norms21", fold_bn, include_bias)
    if key not in view.cache:
        view.cache[key] = [
            _norm_sum(view.matrix(layer, fold_bn=fold_bn, include_bias=include_bias), 0) for layer in view.layers
        ]
    return view.cache[key]


def bartlett(sigma: list[float], rows21: list[float]) -> float:
    """R = (prod_i sigma_i) * (sum_i (rows21_i / sigma_i)^(2/3))^(3/2); 0 if any sigma_i is 0."""
    if not sigma or min(sigma) == 0.0:
        return 0.0
    prod = math.prod(sigma)
    return prod * sum((t / s) ** (2.0 / 3.0) for t, s in zip(rows21, sigma)) ** 1.5


def bartlett_dn(sigma: list[float], cols21: list[float]) -> float:
    """R_dn = (prod_i s_i) * (sum_i (sum_{j>i} t_j)^(2/3) / s_i^(2/3))^(3/2), t_j column (2,1)-norms."""
    if not sigma or min(sigma) == 0.0:
        return 0.0
    prod = math.prod(sigma)
    total = 0.0
    for i, s in enumerate(sigma):
        total += sum(cols21[i + 1 :]) ** (2.0 / 3.0) / s ** (2.0 / 3.0)
    return prod * total**1.5


class _SpectralBase:
    version = "1"
    needs = frozenset({"weights"})
    #: Bartlett's form and the product are symmetric in the layers: any order gives the same value
    order_dependent = False

    def __init__(self, fold_bn: bool = True, include_bias: bool = False, tol: float = DEFAULT_TOL):
        self.params: dict[str, Any] = {"fold_bn": fold_bn, "include_bias": include_bias, "tol": tol}

    def _norms(self, view: Any, state: dict[str, Any]) -> LayerNorms:
        return layer_norms(view, state, **self.params)


class SpectralComplexity(_SpectralBase):
    """Spectral complexity of Bartlett, Foster and Telgarsky (2017), reference matrices 0.

    R = (prod_i sigma_i) * ( sum_i ( ||W_i^T||_{2,1} / sigma_i )^(2/3) )^(3/2)

    where ||W_i^T||_{2,1} is the sum over output units of the row l2 norms.
    sigma_i is exact to relative 1e-7/2 (see top_singular). Params:
    fold_bn (True), include_bias (False), tol (1e-7).
    """

    name = "spectral_complexity"

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        n = self._norms(view, state)
        return bartlett(n.sigma, n.rows21)


class SpectralComplexityDN(_SpectralBase):
    """The reference code's spectral complexity (deep_norm ``compute_model_norm``).

    R_dn = (prod_i s_i) * ( sum_i (sum_{j>i} t_j)^(2/3) / s_i^(2/3) )^(3/2)

    with s_i = sigma_i and t_j = ||W_j||_{2,1}, the sum of COLUMN l2 norms
    (not transposed); the last layer's term is 0. For comparison with the
    paper's numbers. Params: fold_bn (False: raw weights, as the reference),
    include_bias (False), tol (1e-7).

    Order-dependent (each term sums the layers after i): refused on a run
    whose layer order is a guess (layers inferred from a foreign
    .safetensors file, which lists tensors sorted by name).
    """

    name = "spectral_complexity_dn"
    order_dependent = True

    def __init__(self, fold_bn: bool = False, include_bias: bool = False, tol: float = DEFAULT_TOL):
        super().__init__(fold_bn=fold_bn, include_bias=include_bias, tol=tol)

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        view.require_layer_order(self.name)
        sigma = self._norms(view, state).sigma
        cols21 = column_norms21(view, fold_bn=self.params["fold_bn"], include_bias=self.params["include_bias"])
        return bartlett_dn(sigma, cols21)


class SpectralProduct(_SpectralBase):
    """Product of the layers' spectral norms: prod_i sigma_i. Params as spectral_complexity."""

    name = "spectral_product"

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        return math.prod(self._norms(view, state).sigma, start=1.0)


@hookimpl
def register_measures(register: Any) -> None:
    register(SpectralComplexity())
    register(SpectralComplexityDN())
    register(SpectralProduct())
