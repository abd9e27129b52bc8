"""The pieces of the fast conv iteration: the transposed conv as the adjoint, the symbol start,
the float32 iteration certified in float64, and CholeskyQR's fallback."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from normdyn.core.errors import MeasureError
from normdyn.core.layers import LayerSpec
from normdyn.core.view import CheckpointView, RunContext
from normdyn.plugins.measures.conv_operator import (
    CONV_TOL,
    conv_forward,
    conv_operator_norms,
    dense_conv_norm,
    gram_operator,
    iterative_conv_norm,
    symbol_start,
)
from normdyn.plugins.measures.top_singular import _orthonormal, operator_top_singular


def _layer(in_shape: tuple[int, ...], stride: int, padding: int, dilation: int, cin: int, groups: int = 1) -> LayerSpec:
    d = len(in_shape)
    return LayerSpec(
        name="conv",
        kind=f"conv{d}d",
        weight="conv.weight",
        in_channels=cin,
        in_shape=in_shape,
        stride=(stride,) * d,
        padding=(padding,) * d,
        dilation=(dilation,) * d,
        groups=groups,
    )


# (in_shape, kernel, stride, padding, dilation, groups): odd sizes with stride 2 need output padding;
# float64 stride-1 convs of one group take the flipped kernel's conv (padding d(k-1) - p >= 0), the
# last geometry (padding beyond the kernel's span) the transposed conv
ADJOINT_GEOMETRIES = [
    ((8, 8), 3, 1, 1, 1, 1),
    ((10,), 5, 1, 1, 1, 1),
    ((6,), 3, 1, 3, 1, 1),
    ((9, 8), 3, 2, 1, 1, 1),
    ((7, 7), 3, 3, 0, 1, 1),
    ((8, 8), 3, 1, 2, 2, 1),
    ((8, 6), 3, 2, 1, 1, 2),
    ((11,), 3, 2, 1, 1, 1),
]


@pytest.mark.parametrize("in_shape,k,stride,padding,dilation,groups", ADJOINT_GEOMETRIES)
def test_the_transposed_conv_is_the_adjoint(
    in_shape: tuple[int, ...], k: int, stride: int, padding: int, dilation: int, groups: int
) -> None:
    layer = _layer(in_shape, stride, padding, dilation, cin=4, groups=groups)
    gen = torch.Generator().manual_seed(sum(in_shape) + k)
    w = torch.randn(6, 4 // groups, *([k] * len(in_shape)), generator=gen, dtype=torch.float64)
    fast, dim = gram_operator(layer, w)
    plain, _ = gram_operator(layer, w, autograd=True)
    x = torch.randn(dim, 3, generator=gen, dtype=torch.float64)
    # the same linear map computed two ways in float64: equal to rounding (~1e-15 relative)
    assert torch.allclose(fast(x), plain(x), rtol=1e-12, atol=1e-12)
    y = conv_forward(layer, w)(x.T.reshape(3, 4, *in_shape))
    # <A x, A x> = <x, A^T A x>, the adjoint identity, to float64 rounding
    assert float((y * y).sum()) == pytest.approx(float((x * fast(x)).sum()), rel=1e-12)


@pytest.mark.parametrize("in_shape,k,stride,padding,dilation,groups", ADJOINT_GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_vectors_give_the_same_operator_with_its_coordinates_permuted(
    in_shape: tuple[int, ...], k: int, stride: int, padding: int, dilation: int, groups: int, dtype: torch.dtype
) -> None:
    layer = _layer(in_shape, stride, padding, dilation, cin=4, groups=groups)
    gen = torch.Generator().manual_seed(3 * sum(in_shape) + k)
    w = torch.randn(6, 4 // groups, *([k] * len(in_shape)), generator=gen, dtype=torch.float64).to(dtype)
    plain, dim = gram_operator(layer, w, dtype)
    last, _ = gram_operator(layer, w, dtype, channels_last=True)
    # the permutation written out as an index map: entry (p, c) of a channels-last vector is
    # entry (c, p) of the usual one
    order = torch.arange(dim).reshape(4, -1).T.reshape(-1)
    x = torch.randn(dim, 3, generator=gen, dtype=torch.float64).to(dtype)
    # the same sums in another memory order: float64 to ~1e-15, float32 to ~1e-6 relative
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    got = last(x[order])
    want = plain(x)[order]
    assert float((got - want).norm()) <= rtol * float(want.norm())
    # and the iteration, which runs on channels-last vectors, gives the plain path's sigma_1 and
    # hands back its block in the usual order: the block's Rayleigh quotient on the plain operator
    if dtype == torch.float64 and dim > 64:
        sigma, block = iterative_conv_norm(layer, w.float())
        reference, _ = iterative_conv_norm(layer, w, fast=False)
        assert sigma == pytest.approx(reference, rel=CONV_TOL)
        v = block[:, :1].double() / block[:, :1].double().norm()
        assert float(v.T @ plain(v)) ** 0.5 == pytest.approx(reference, rel=1e-4)


def test_the_symbol_start_lies_near_the_top_and_gives_the_same_norm() -> None:
    layer = _layer((16, 16), 1, 1, 1, cin=8)
    w = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(5))
    exact = dense_conv_norm(layer, w)  # dim 2048: the dense float64 Gram matrix, exact to rounding
    start = symbol_start(layer, w, 16)
    assert start is not None and start.shape == (2048, 16)
    gram, _ = gram_operator(layer, w)
    v = start[:, :1] / torch.linalg.vector_norm(start[:, 0])
    # the plane wave under the box's lowest mode: its Rayleigh quotient is already near sigma_1^2
    assert float(v.T @ gram(v)) >= 0.9 * exact**2
    from_symbol, _ = iterative_conv_norm(layer, w)
    random = torch.randn(2048, 16, generator=torch.Generator().manual_seed(1))
    from_random, _ = iterative_conv_norm(layer, w, random)
    # each is certified within CONV_TOL / 2 of sigma_1 (the bound is CONV_TOL on sigma_1^2)
    assert from_symbol == pytest.approx(exact, rel=CONV_TOL / 2)
    assert from_random == pytest.approx(exact, rel=CONV_TOL / 2)


def test_the_symbol_start_is_only_for_stride_1_zero_padded_convs() -> None:
    w = torch.randn(4, 4, 3, 3)
    assert symbol_start(_layer((8, 8), 2, 1, 1, cin=4), w, 8) is None
    assert symbol_start(_layer((8, 8), 1, 2, 2, cin=4), w, 8) is None


def test_a_float32_iteration_is_finished_in_float64_where_its_rounding_cannot_certify() -> None:
    # tol 1e-11 on sigma_1^2 is far below float32's rounding: the float64 step must take over
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((600, 600)))
    s = np.concatenate([[3.0, 2.9], np.linspace(2.0, 0.1, 598)])
    a64 = torch.tensor((u * s) @ u.T)
    a32 = a64.float()
    top = operator_top_singular(
        lambda x: a32.T @ (a32 @ x),
        600,
        tol=1e-11,
        dtype=torch.float32,
        block_size=8,
        krylov_depth=4,
        apply_gram64=lambda x: a64.T @ (a64 @ x),
    )
    # the bound 1e-11 on sigma_1^2 gives 5e-12 on sigma_1 (plus float64 rounding of the matrix, ~1e-15)
    assert top.sigma == pytest.approx(3.0, rel=5e-12 + 1e-14)


def test_orthonormal_falls_back_to_householder_on_an_ill_conditioned_block() -> None:
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(2))
    x[:, 1] = x[:, 0] + 1e-6 * x[:, 1]  # condition number ~1e6: X^T X is singular in float32
    q = _orthonormal(x)
    # orthonormal to float32 rounding (~1e-7 per entry), and spanning the block's columns
    assert torch.allclose(q.T @ q, torch.eye(4), atol=1e-5)
    assert torch.allclose(q @ (q.T @ x), x, atol=1e-4)


@pytest.mark.parametrize("kernel,grid", [((3, 3), (8, 8)), ((3, 3), (7, 5)), ((5,), (11,)), ((1, 3), (4, 6))])
def test_the_symbol_matrices_are_the_zero_padded_kernels_fft(kernel: tuple[int, ...], grid: tuple[int, ...]) -> None:
    from normdyn.plugins.measures.conv_operator import _symbol_matrices

    w = torch.randn(5, 3, *kernel, generator=torch.Generator().manual_seed(len(grid)))
    real, imag, freqs = _symbol_matrices(w, grid)
    mats = torch.complex(real, -imag)  # M = R - iJ
    # one of each pair +-omega: the last coordinate up to n // 2, as rfftn keeps
    assert len(freqs) == int(np.prod(grid[:-1])) * (grid[-1] // 2 + 1)
    full = torch.fft.fftn(w.double(), s=grid, dim=tuple(range(2, w.dim())))
    ref = torch.stack([full[(slice(None), slice(None), *[int(a) for a in f])] for f in freqs])
    # float32 cosines and products of <= 9 taps: ~1e-7 relative to the entries (|w| ~ 1, 9 taps)
    assert torch.allclose(mats.to(torch.complex128), ref, atol=5e-6)


def test_a_warm_symbol_state_gives_a_start_as_good_as_a_cold_one() -> None:
    layer = _layer((16, 16), 1, 1, 1, cin=8)
    gen = torch.Generator().manual_seed(6)
    w0 = torch.randn(8, 8, 3, 3, generator=gen)
    w1 = w0 + 0.03 * torch.randn(8, 8, 3, 3, generator=gen)  # the next checkpoint: a small step
    state: dict[str, torch.Tensor] = {}
    symbol_start(layer, w0, 4, state)
    assert state["v"].shape == (16 * 9, 2, 8)  # every frequency of the half grid: a, b of v = a + ib
    warm = symbol_start(layer, w1, 4, state)  # 2 power steps from the previous checkpoint's vectors
    cold = symbol_start(layer, w1, 4)  # 6 from random ones
    assert warm is not None and cold is not None
    gram, _ = gram_operator(layer, w1)
    exact = dense_conv_norm(layer, w1)

    def quotient(block: torch.Tensor) -> float:
        v = block[:, :1].double() / torch.linalg.vector_norm(block[:, 0].double())
        return float(v.T @ gram(v))

    # both waves lie near the top (as the cold start's test above), the warm one as well as the cold
    assert quotient(warm) >= 0.9 * exact**2
    assert quotient(warm) >= 0.99 * quotient(cold)
    sigma, _ = iterative_conv_norm(layer, w1, symbol=state)
    assert sigma == pytest.approx(exact, rel=CONV_TOL / 2)


def test_layers_on_worker_threads_give_the_serial_values_and_raise_the_first_failure() -> None:
    shapes = [_layer((18, 18), 1, 1, 1, cin=8), _layer((17, 17), 2, 1, 1, cin=8), _layer((6, 6), 1, 1, 1, cin=4)]
    layers = [dataclasses.replace(layer, name=f"c{i}", weight=f"c{i}.weight") for i, layer in enumerate(shapes)]
    gen = torch.Generator().manual_seed(11)
    tensors = {}
    for layer, cout in zip(layers, (8, 6, 5)):
        assert layer.in_channels is not None
        tensors[layer.weight] = torch.randn(cout, layer.in_channels, 3, 3, generator=gen)
    spec = {"layers": [layer.to_dict() for layer in layers]}

    def norms(threads: int, model: dict) -> dict[str, float]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            view = CheckpointView(tensors, RunContext(model_spec=model))
            return conv_operator_norms(view, {}, fold_bn=False, tol=CONV_TOL)
        finally:
            torch.set_num_threads(before)

    serial, pooled = norms(1, spec), norms(2, spec)
    assert list(pooled) == ["c0", "c1", "c2"]
    for name, layer in zip(pooled, layers):
        # the same arithmetic on one thread, wherever it runs: equal to rounding of thread-dependent kernels
        assert pooled[name] == pytest.approx(serial[name], rel=1e-12)
        # and sigma_1 itself, against the dense float64 Gram matrix (dims 2592 and 2312, iterated; 144, dense)
        assert pooled[name] == pytest.approx(dense_conv_norm(layer, tensors[layer.weight]), rel=CONV_TOL / 2)
    bad = [dict(d) for d in spec["layers"]]
    bad[1]["padding_mode"] = "reflect"
    with pytest.raises(MeasureError, match="layer 'c1'.*reflect"):
        norms(2, {"layers": bad})
