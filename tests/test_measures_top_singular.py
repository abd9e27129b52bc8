"""The float32 iteration of matrix_top_singular meets its promise: relative error of sigma_1 <= tol/2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normdyn.plugins.measures.top_singular import DEFAULT_TOL, matrix_top_singular, operator_top_singular


def _with_spectrum(rows: int, cols: int, s: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((rows, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((cols, len(s))))
    return (u * s) @ v.T


@pytest.mark.parametrize("shape", [(400, 800), (800, 400)])
@pytest.mark.parametrize(
    "head",
    [
        [1.0],  # top value 5x above the rest: the float32 products alone gave 3e-7 here
        [1.0, 1 - 1e-4, 1 - 2e-4],  # clustered top values
    ],
)
def test_float32_iteration_is_within_half_tol_of_the_float64_svd(shape: tuple[int, int], head: list[float]) -> None:
    rows, cols = shape
    r = min(rows, cols)
    s = np.concatenate([head, np.linspace(0.2, 0.0, r - len(head))]) * 1e3
    m = torch.tensor(_with_spectrum(rows, cols, s, seed=rows), dtype=torch.float32)
    exact = np.linalg.svd(m.double().numpy(), compute_uv=False)[0]  # sigma_1 of the float32 matrix itself
    first = matrix_top_singular(m)
    warm = matrix_top_singular(m, first.block)
    assert warm.method == "iteration"
    # the docstring's promise: relative error <= tol/2 (float64 refinement; the numpy SVD is exact to ~1e-15)
    assert abs(warm.sigma - exact) / exact <= DEFAULT_TOL / 2


def test_operator_iteration_converges_on_a_top_value_repeated_beyond_the_block() -> None:
    # sigma_1 = 2 repeated 12 times, block of 4 vectors: the Kato-Temple gap theta_1 - theta_2 - r_2 is 0
    # up to rounding (certified only when rounding makes it positive: 26 steps here); the Krylov-Weinstein
    # residual test certifies as soon as the block lies in the top eigenspace (9 steps here)
    s = np.concatenate([np.full(12, 2.0), np.linspace(1.0, 0.1, 28)])
    a = torch.tensor(_with_spectrum(40, 40, s, seed=3))
    top = operator_top_singular(lambda x: a.T @ (a @ x), 40, tol=1e-6, block_size=4, max_iter=500)
    assert top.iterations <= 15
    # tol 1e-6 on sigma_1^2 bounds the relative error of sigma_1 by 5e-7
    assert top.sigma == pytest.approx(2.0, rel=5e-7)
