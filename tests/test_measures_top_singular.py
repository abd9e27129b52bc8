"""The float32 iteration of matrix_top_singular meets its promise: relative error of sigma_1 <= tol/2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normdyn.plugins.measures import top_singular as ts
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


def test_float32_rayleigh_ritz_is_exact_to_float32_products_on_long_vectors() -> None:
    # 65536-entry float32 vectors (a ResNet-18 stage-1 conv's input): a projection summed in one
    # float32 product as if B^T B were I put Ritz values 2.6e-5 above lambda_1 there; the
    # generalized projection summed in float64 over 1024-row chunks is exact to ~1e-7
    from normdyn.plugins.measures.top_singular import _inner_rows, _ritz

    gen = torch.Generator().manual_seed(3)
    dim = 65536 + 300  # not a multiple of the chunk: the remainder rows count too
    diag = torch.rand(dim, generator=gen, dtype=torch.float64) * 5 + 1
    q, _ = torch.linalg.qr(torch.randn(dim, 12, generator=gen, dtype=torch.float64))
    basis = (q + 1e-4 * torch.randn(dim, 12, generator=gen, dtype=torch.float64)).float()  # orthonormal to 1e-4
    images = (diag[:, None] * basis.double()).float()
    theta, vecs, resid = _ritz(basis, images)
    b64, g64 = basis.double(), images.double()
    chol = torch.linalg.cholesky(b64.T @ b64)
    h = torch.linalg.solve_triangular(chol, b64.T @ g64, upper=False)
    exact = torch.linalg.eigvalsh(torch.linalg.solve_triangular(chol, h.T, upper=False)).flip(0)
    # the same float32 inputs projected wholly in float64: the chunked float32 sums differ by 1.3e-8 (measured)
    assert torch.allclose(theta, exact, rtol=1e-7, atol=0)
    # the Ritz vectors are the pairs' own: residuals of the exact diagonal operator, in float64
    true_resid = torch.linalg.vector_norm(diag[:, None] * vecs.double() - vecs.double() * theta, dim=0)
    assert torch.allclose(resid, true_resid, rtol=1e-3, atol=1e-5 * float(theta[0]))
    a = torch.randn(dim, 5, generator=gen)
    assert torch.allclose(_inner_rows(a.T, basis.T), a.double().T @ basis.double(), rtol=1e-6, atol=1e-3)


def test_float32_krylov_certifies_a_near_double_top_without_stalling() -> None:
    # a near-double top (gap 1e-5), another near-double 7e-4 below, then a gap of 4e-3: the
    # shape of a ResNet-18 stage-1 conv where the float32 iteration once stalled for 281 passes
    from normdyn.plugins.measures.top_singular import _iterate_krylov

    gen = torch.Generator().manual_seed(4)
    dim = 65536
    rest = torch.rand(dim - 4, generator=gen, dtype=torch.float64) * 8.9
    lam = torch.cat([torch.tensor([8.954697, 8.954611, 8.948400, 8.948399], dtype=torch.float64), rest])
    lam32 = lam.float()
    start = torch.randn(dim, 4, generator=gen)
    start[:4] += 30.0  # a warm start: near the top cluster, as the previous checkpoint gives
    theta, block, resid, passes, ok = _iterate_krylov(lambda x: lam32[:, None] * x, start, 1e-6, 50, 12, 4e-6)
    assert ok and passes <= 10  # the stall took 281; this takes 1-3 passes
    # certified to tol 1e-6 on lambda_1 in float32 products (plus their rounding, ~1e-7)
    assert float(theta[0]) == pytest.approx(8.954697, rel=1e-6 + 2e-7)


@pytest.mark.parametrize("shape", [(120, 3000), (3000, 120)])
def test_the_refinement_is_the_float64_rayleigh_quotient_of_either_side(
    shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # _refine64 converts the matrix chunk by chunk of its rows into one float64 buffer: 16384
    # entries a chunk here, 5 rows of 3000 (24 chunks) or 136 rows of 120 (23, the last shorter)
    monkeypatch.setattr(ts, "_CHUNK", 1 << 14)
    rng = np.random.default_rng(5)
    m = torch.tensor(rng.standard_normal(shape), dtype=torch.float32)
    wide = shape[0] <= shape[1]
    a = m.double().numpy()
    gram = a @ a.T if wide else a.T @ a
    evals, evecs = np.linalg.eigh(gram)
    v = torch.tensor(evecs[:, -2:][:, ::-1].copy())  # the top two eigenvectors, descending
    theta = torch.tensor(evals[::-1][:2].copy())
    got = ts._refine64(m, wide, theta, v, torch.zeros(2, dtype=torch.float64), 1e-7)
    # an exact eigenvector: its float64 Rayleigh quotient is the eigenvalue to float64 rounding
    assert got is not None and got[0] == pytest.approx(evals[-1], rel=1e-12)
    # a vector off the top eigenvector: its residual fails the bound, so no value
    off = (v[:, :1] + 1e-2 * torch.tensor(evecs[:, :1])).contiguous()
    assert ts._refine64(m, wide, theta, off, torch.zeros(2, dtype=torch.float64), 1e-7) is None
    # ... unless power steps may take it there: its error along the bottom eigenvector shrinks by
    # lambda_n / lambda_1 (about 0.44 here) per step, so the Kato-Temple bound (gap lambda_1 - lambda_2)
    # needs a handful; the value is then that of the top eigenvector, to the bound tol theta_1
    assert ts._refine64(m, wide, theta, off, torch.zeros(2, dtype=torch.float64), 1e-7, steps=1) is None
    got = ts._refine64(m, wide, theta, off, torch.zeros(2, dtype=torch.float64), 1e-7, steps=30)
    assert got is not None and got[0] == pytest.approx(evals[-1], rel=1e-7)
    assert abs(float(got[1] @ v[:, 0])) == pytest.approx(1.0, abs=1e-6)  # the vector it took there


def test_power_steps_follow_the_second_ritz_value() -> None:
    # r_1^2 / gap is 100 times tol theta_1; each step scales it by ((theta_2 + r_2) / theta_1)^2 = 0.01
    theta = torch.tensor([1.0, 0.1], dtype=torch.float64)
    assert ts._power_steps(theta, torch.tensor([(100 * 1e-7 * 0.9) ** 0.5, 0.0]), 1e-7) == pytest.approx(1.0)
    assert ts._power_steps(theta, torch.tensor([1e-9, 0.0]), 1e-7) == 0.0  # the bound holds
    assert ts._power_steps(torch.tensor([1.0, 1.0]), torch.tensor([1e-2, 0.0]), 1e-7) == float("inf")  # no gap


def test_the_matrix_iteration_hands_its_last_steps_to_float64_power_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    # warm starts at growing distances from the top singular vectors of a matrix with sigma_2 / sigma_1
    # = 0.63 (the analyze benchmark's classifier's ratio): with the handover, the float32 iteration
    # stops where a few float64 power steps meet the bound, taking fewer block steps than without it
    # (_POWER_STEPS 0) on some starts, never more, and the same sigma_1 within the bound
    gen = torch.Generator().manual_seed(3)
    rows, cols = 200, 4000
    u = torch.linalg.qr(torch.randn(rows, rows, generator=gen, dtype=torch.float64))[0]
    w = torch.linalg.qr(torch.randn(cols, rows, generator=gen, dtype=torch.float64))[0]
    s = torch.cat([torch.tensor([10.0, 6.3, 6.0, 5.5]), torch.linspace(5.0, 0.1, rows - 4, dtype=torch.float64)])
    m = ((u * s) @ w.T).float()
    exact = float(torch.linalg.svdvals(m.double())[0])
    results = {}
    for power in (0, 2):
        monkeypatch.setattr(ts, "_POWER_STEPS", power)
        for eps in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
            warm = (u[:, :8] + eps * torch.randn(rows, 8, generator=torch.Generator().manual_seed(7))).float()
            got = ts.matrix_top_singular(m, warm)
            assert got.method == "iteration"
            assert got.sigma == pytest.approx(exact, rel=ts.DEFAULT_TOL / 2)
            results[power, eps] = got.iterations
    fewer = [results[2, e] < results[0, e] for e in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)]
    assert all(results[2, e] <= results[0, e] for e in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)) and any(fewer), results


@pytest.mark.parametrize("shape", [(300, 3000), (3000, 300)])
def test_the_gram_fallback_is_within_half_tol_of_the_svd_or_goes_to_float64(shape: tuple[int, int]) -> None:
    # a Gaussian matrix: a Marchenko-Pastur top, no gap for 1 step of subspace iteration to use, so
    # it falls back to the Gram matrix of float32 products summed in float64, certified in float64
    rng = np.random.default_rng(6)
    m = torch.tensor(rng.standard_normal(shape), dtype=torch.float32)
    exact = np.linalg.svd(m.double().numpy(), compute_uv=False)
    top = matrix_top_singular(m, max_iter=1)
    assert top.method == "exact-fallback" and top.block is not None
    assert abs(top.sigma - exact[0]) / exact[0] <= DEFAULT_TOL / 2
    # its block is the Gram matrix's top eigenvectors: from there the iteration certifies at once
    assert matrix_top_singular(m, top.block, max_iter=1).method == "iteration"
    # the chunked Gram matrix itself: float32 products summed in float64, 1e-6 of its largest entry
    a = m.double()
    dense = a @ a.T if shape[0] <= shape[1] else a.T @ a
    chunked = ts._gram_chunked(m, shape[0] <= shape[1])
    assert float((chunked - dense).abs().max() / dense.abs().max()) < 1e-6
    # a bound the float32 Gram matrix cannot certify (tol 1e-15): the float64 Gram matrix decides
    strict = matrix_top_singular(m, max_iter=1, tol=1e-15)
    assert strict.method == "exact-fallback"
    assert strict.sigma == pytest.approx(exact[0], rel=1e-12)


def test_the_iteration_gives_up_early_on_a_bulk_and_runs_on_where_its_rate_will_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(7)
    bulk = torch.tensor(rng.standard_normal((300, 3000)), dtype=torch.float32)
    # a Marchenko-Pastur top: the residual hardly falls, so the rate gives up at the third step
    top = matrix_top_singular(bulk)
    assert top.method == "exact-fallback" and top.iterations == 3
    # a top 5x above the rest (rate 0.04 per step) and a start block holding little of it (1e-3 of
    # the top singular vector): 5 block steps without the float64 power steps, beyond the 4 a fixed
    # limit used to allow; with them, 3 and the power steps
    s = np.concatenate([[5.0], np.linspace(1.0, 0.1, 299)])
    m = torch.tensor(_with_spectrum(300, 3000, s, seed=8), dtype=torch.float32)
    u, sv, _ = np.linalg.svd(m.double().numpy(), full_matrices=False)
    start = rng.standard_normal((300, 8))
    start -= np.outer(u[:, 0], u[:, 0] @ start)
    start += 1e-3 * np.linalg.norm(start, axis=0) * u[:, :1]
    handed = matrix_top_singular(m, torch.tensor(start, dtype=torch.float32))
    monkeypatch.setattr(ts, "_POWER_STEPS", 0)
    far = matrix_top_singular(m, torch.tensor(start, dtype=torch.float32))
    assert far.method == "iteration" and 4 < far.iterations <= 6
    assert handed.method == "iteration" and handed.iterations < far.iterations
    for got in (far, handed):
        assert abs(got.sigma - sv[0]) / sv[0] <= DEFAULT_TOL / 2  # the float32 matrix's own sigma_1


@pytest.mark.parametrize("shape", [(300, 3000), (3000, 300)])
def test_any_number_of_workers_gives_the_same_value_in_many_pieces(
    shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from normdyn.core import threads

    # small pieces and chunks, so every product is split: 3 Gram pieces of the 3000-long side,
    # 300 (wide) or 231 (tall) chunks of the refinement in 16 groups
    monkeypatch.setattr(ts, "_PIECE", 1 << 15)
    monkeypatch.setattr(ts, "_CHUNK", 1 << 12)
    rows, cols = shape
    s = np.concatenate([[1.0, 0.9], np.linspace(0.5, 0.0, 298)]) * 10.0
    m = torch.tensor(_with_spectrum(rows, cols, s, seed=11), dtype=torch.float32)
    drifted = m + 1e-3 * torch.tensor(np.random.default_rng(12).standard_normal(shape), dtype=torch.float32)
    exact = np.linalg.svd(drifted.double().numpy(), compute_uv=False)[0]
    results = {}
    for n in (1, 2, 3):
        with threads.budget(n):
            cold = matrix_top_singular(m, max_iter=1)  # the Gram fallback: its chunk groups
            warm = matrix_top_singular(drifted, cold.block)  # the iteration and the refinement
        results[n] = (cold, warm)
    assert results[1][0].method == "exact-fallback" and results[1][1].method == "iteration"
    for n in (2, 3):
        # each piece is the same arithmetic on one thread wherever it runs, and the pieces are
        # summed in their order: the results are the same to the bit, not merely close
        for one, other in zip(results[1], results[n]):
            assert one.sigma == other.sigma and torch.equal(one.block, other.block)
    assert abs(results[1][1].sigma - exact) / exact <= DEFAULT_TOL / 2


def test_a_weight_with_a_graph_or_under_inference_mode_gives_the_same_value_on_workers() -> None:
    from normdyn.core import threads

    rng = np.random.default_rng(13)
    m = torch.tensor(rng.standard_normal((256, 8192)), dtype=torch.float32)
    with threads.budget(2):
        plain = matrix_top_singular(m)
        # the workers compute with the caller's modes, and a tensor that requires grad is read as a value
        with torch.inference_mode():
            inference = matrix_top_singular(m.clone())
        graph = matrix_top_singular(m.clone().requires_grad_(True))
        tall = matrix_top_singular(m.T.contiguous().requires_grad_(True))
    # the same arithmetic on the same values: equal to the bit (tall: the other side's Gram operator)
    assert inference.sigma == plain.sigma and graph.sigma == plain.sigma
    assert tall.sigma == pytest.approx(plain.sigma, rel=DEFAULT_TOL)
