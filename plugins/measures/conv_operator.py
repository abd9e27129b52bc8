"""The exact operator norm of convolutions on their real input shape, and the
spectral complexity that uses it.

A conv layer's reshaped-kernel sigma (out x in*k*k) only bounds the conv
operator's norm from below; the operator norm depends on the input's spatial
shape, the padding and the stride. Two exact methods:

- circular padding, stride 1: the operator is block-circulant, its singular
  values are those of the c_out x c_in matrices of the kernel's DFT at every
  frequency of the input grid (Sedghi, Gupta and Long 2019); sigma_1 is
  their maximum (per group for grouped convs);
- otherwise (zero padding, or any stride): subspace iteration on
  A^T A x = grad_x 1/2 ||conv(x)||^2 with the Kato-Temple stopping bound of
  :mod:`normdyn.plugins.measures.top_singular`, warm-started across
  checkpoints.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from normdyn.core.errors import MeasureError
from normdyn.core.hookspecs import hookimpl
from normdyn.core.layers import LayerSpec
from normdyn.plugins.measures.spectral import bartlett, layer_norms
from normdyn.plugins.measures.top_singular import DEFAULT_TOL, operator_top_singular

#: Conv operators have a near-continuous top spectrum (neighbouring frequencies), so the
#: Kato-Temple gap is small and iterations are many; 1e-6 on sigma_1^2 keeps sigma_1 exact
#: to 5e-7 at a few seconds per layer for the first checkpoint, far less warm-started.
CONV_TOL = 1e-6

__all__ = [
    "conv_forward",
    "circular_conv_norm",
    "conv_norm",
    "conv_operator_norms",
    "ConvOperatorNorm",
    "SpectralComplexityOp",
]

_CONV = {"conv1d": F.conv1d, "conv2d": F.conv2d}


def conv_forward(layer: LayerSpec, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (batch, C_in, *in_shape) -> the layer's conv output without bias."""
    conv = _CONV[layer.kind]
    if layer.padding_mode == "circular":
        pads = [p for pad in reversed(layer.padding) for p in (pad, pad)]
        return lambda x: conv(
            F.pad(x, pads, mode="circular"), weight, None, layer.stride, 0, layer.dilation, layer.groups
        )
    if layer.padding_mode != "zeros":
        raise MeasureError(
            f"layer {layer.name!r}: padding_mode {layer.padding_mode!r} is not supported (use 'zeros' or 'circular')"
        )
    return lambda x: conv(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def circular_conv_norm(
    weight: torch.Tensor, in_shape: tuple[int, ...], dilation: tuple[int, ...], groups: int = 1
) -> float:
    """sigma_1 of a stride-1 circular conv on grid ``in_shape``: max over frequencies and groups
    of the largest singular value of the kernel's DFT matrix (c_out/g x c_in/g)."""
    co, cig = weight.shape[:2]
    grid = torch.zeros(co, cig, *in_shape, dtype=torch.float64)
    for offset in itertools.product(*[range(k) for k in weight.shape[2:]]):
        pos = tuple((a * d) % n for a, d, n in zip(offset, dilation, in_shape))
        grid[(slice(None), slice(None), *pos)] += weight[(slice(None), slice(None), *offset)].double()
    spectrum = torch.fft.fftn(grid, dim=tuple(range(2, grid.dim())))
    cog = co // groups
    best = 0.0
    for g in range(groups):
        block = spectrum[g * cog : (g + 1) * cog]  # (cog, cig, *freq)
        mats = block.reshape(cog, cig, -1).permute(2, 0, 1)
        best = max(best, float(torch.linalg.svdvals(mats).max()))
    return best


def conv_norm(
    layer: LayerSpec, weight: torch.Tensor, warm: torch.Tensor | None = None, *, tol: float = CONV_TOL
) -> tuple[float, torch.Tensor | None]:
    """(sigma_1 of the conv operator on its input shape, warm-start block for the next checkpoint)."""
    if layer.in_shape is None or layer.in_channels is None:
        raise MeasureError(
            f"layer {layer.name!r}: the conv operator norm needs in_shape and in_channels in the model spec"
        )
    if layer.padding_mode == "circular" and all(s == 1 for s in layer.stride):
        return circular_conv_norm(weight, layer.in_shape, layer.dilation, layer.groups), None
    w64 = weight.double()
    forward = conv_forward(layer, w64)
    shape = (layer.in_channels, *layer.in_shape)
    dim = 1
    for s in shape:
        dim *= s

    def apply_gram(block: torch.Tensor) -> torch.Tensor:
        x = block.T.reshape(block.shape[1], *shape).detach().requires_grad_(True)
        with torch.enable_grad():
            y = forward(x)
            (g,) = torch.autograd.grad(0.5 * (y * y).sum(), x)
        return g.reshape(block.shape[1], dim).T

    try:
        top = operator_top_singular(apply_gram, dim, warm, tol=tol, device=weight.device, block_size=16, max_iter=1000)
    except ArithmeticError as exc:
        raise MeasureError(f"layer {layer.name!r}: {exc}") from None
    return top.sigma, top.block


def conv_operator_norms(view: Any, state: dict[str, Any], *, fold_bn: bool, tol: float) -> dict[str, float]:
    """Operator norm of every conv layer of ``view``, by layer name (cached in ``view.cache``)."""
    key = ("conv_operator_norms", fold_bn, tol)
    if key in view.cache:
        return view.cache[key]
    warm: dict[str, torch.Tensor] = state.setdefault("warm_conv", {})
    out = {}
    for layer in view.layers:
        if layer.kind not in _CONV:
            continue
        weight, _ = view.folded(layer, fold_bn)
        sigma, block = conv_norm(layer, weight.to(view.device), warm.get(layer.name), tol=tol)
        if block is not None:
            warm[layer.name] = block
        out[layer.name] = sigma
    view.cache[key] = out
    return out


class ConvOperatorNorm:
    """Exact operator norm of each conv layer on its real input shape, one value per layer:

    ||conv_i||_op = max_{x != 0} ||conv_i(x)||_2 / ||x||_2,  x of shape (C_in, *in_shape),

    with the layer's stride, padding (zeros or circular), dilation and groups;
    stored as ``conv_operator_norm.LAYER``. Params: fold_bn (True), tol (1e-6,
    the bound on the relative error of sigma_1^2).
    """

    name = "conv_operator_norm"
    version = "1"
    needs = frozenset({"weights"})

    def __init__(self, fold_bn: bool = True, tol: float = CONV_TOL):
        self.params: dict[str, Any] = {"fold_bn": fold_bn, "tol": tol}

    def compute(self, view: Any, state: dict[str, Any]) -> dict[str, float]:
        norms = conv_operator_norms(view, state, **self.params)
        if not norms:
            raise MeasureError("conv_operator_norm: the model has no conv layers")
        return norms


class SpectralComplexityOp:
    """Bartlett's spectral complexity with the exact conv operator norms:

    R_op = (prod_i s_i) * ( sum_i ( ||W_i^T||_{2,1} / s_i )^(2/3) )^(3/2)

    where s_i = ||conv_i||_op for conv layers (see conv_operator_norm) and
    sigma_i for the other layers, and ||W_i^T||_{2,1} is the reshaped matrix's
    sum of row norms as in spectral_complexity. Params: fold_bn (True), tol (1e-6).
    """

    name = "spectral_complexity_op"
    version = "1"
    needs = frozenset({"weights"})

    def __init__(self, fold_bn: bool = True, tol: float = CONV_TOL):
        self.params: dict[str, Any] = {"fold_bn": fold_bn, "tol": tol}

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        fold, tol = self.params["fold_bn"], self.params["tol"]
        base = layer_norms(view, state, fold_bn=fold, include_bias=False, tol=DEFAULT_TOL)
        ops = conv_operator_norms(view, state, fold_bn=fold, tol=tol)
        sigma = [ops.get(layer.name, s) for layer, s in zip(view.layers, base.sigma)]
        return bartlett(sigma, base.rows21)


@hookimpl
def register_measures(register: Any) -> None:
    register(ConvOperatorNorm())
    register(SpectralComplexityOp())
