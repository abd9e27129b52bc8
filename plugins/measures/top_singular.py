"""The largest singular value of a matrix or linear operator, warm-startable.

Used by the spectral measures (matrices) and the conv operator norm
(operators). The reference approach computes all singular values of every
layer of every checkpoint; successive checkpoints of a run differ little, so
a block subspace iteration started from the previous checkpoint's top
singular vectors converges in one or two passes over the weights.

Convergence is tested, not assumed: after each Rayleigh-Ritz step on the
Gram operator A = M M^T (block of k vectors, Ritz values theta_1 >= theta_2,
residual norms r_1, r_2) the error of lambda_1 = sigma_1^2 is bounded by

- Kato-Temple, with the second Ritz pair as the gap estimate:
  ``theta_1 <= lambda_1 <= theta_1 + r_1^2 / (theta_1 - theta_2 - r_2)``;
- Krylov-Weinstein, which needs no gap and so also holds for a repeated or
  clustered top eigenvalue: an eigenvalue lies in ``[theta_1 - r_1, theta_1 + r_1]``;

iteration stops when either bound is below ``tol * theta_1`` (relative error
of sigma_1 below tol/2). Matrices small enough are decomposed exactly. The
iteration of a float32 matrix runs its products in float32, whose rounding
alone puts up to 4.2e-7 relative error on sigma_1 (measured); so its top
Ritz vector is refined in float64 (the Rayleigh quotient and residual of
the float64 matrix), the bound is tested again on those, and sigma_1 is the
square root of the float64 Rayleigh quotient. A matrix that does not meet
the bound after ``max_iter`` steps, or after that refinement, falls back to
the eigen-decomposition of its Gram matrix: from float32 products summed in
float64, its top eigenvector refined and tested as the iteration's; the
float64 Gram matrix where that fails. The refinement passes over the matrix
in float64 chunks of about 2 MiB of its rows, converted into reused
buffers (one per piece of work running at once), never a whole float64 copy:
on the 512 x 32768 float32 layer of the CIFAR CNN that copy alone cost 36 ms,
half of a warm-started call (2 CPU cores).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any

import numpy as np
import torch

from normdyn.core.threads import map_ordered

__all__ = ["TopSingular", "matrix_top_singular", "operator_top_singular", "DEFAULT_TOL"]

DEFAULT_TOL = 1e-7
_EXACT_COST = 5e7  # m * n * min(m, n) below which a full decomposition is cheaper than iterating
_BLOCK = 8
#: float64 entries per chunk of the refinement: 2 MiB, 18.5 ms a pass over 512 x 32768 against 19-23
#: for 4 MiB in one thread, 12 against 16-18 ms on 2 workers (2 CPU cores)
_CHUNK = 1 << 18
_SUM_CHUNK = 1024  # entries per float32 partial product of a Rayleigh-Ritz step (:func:`_inner_rows`)
#: Entries of M per piece of a Gram product on the CPU (its columns, or rows, along the longer
#: side: 16 pieces of 512 x 2048 for the CIFAR CNN's 512 x 32768 layer), which both products of
#: the piece read while it is in cache
_PIECE = 1 << 20
#: Groups of the refinement's row chunks, each one task of :func:`map_ordered` with its own partial
#: sums (so its results do not depend on the number of workers)
_GROUPS = 16
#: Power steps of the top Ritz vector (float64 passes, :func:`_refine64`) that a float32 iteration
#: of a matrix hands over to instead of another block step: a step of 8 vectors costs about three
#: passes of one (64 against 23 ms on 512 x 32768 in analyze, one CPU thread, cProfile)
_POWER_STEPS = 2


@dataclass
class TopSingular:
    """sigma_1, the block to warm-start the next call with, and how it was found."""

    sigma: float
    block: torch.Tensor | None
    iterations: int
    method: str  # "exact", "iteration" or "exact-fallback"


def _inner_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a b^T in float64 for row blocks a (m, dim) and b (n, dim). Float32 blocks: float32 products over
    chunks of ``_SUM_CHUNK`` columns, summed in float64, so no sum runs over more than 1024 float32
    terms (the Gram matrix of a random 52 x 65536 float32 block: 3e-8 relative error against
    float64, 5e-7 for one float32 product; 8 ms against 53 ms for converting both blocks to
    float64, 2 CPU cores)."""
    if a.dtype == torch.float64:
        return a @ b.T
    dim = a.shape[1]
    whole = dim - dim % _SUM_CHUNK
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    if whole:
        chunks = whole // _SUM_CHUNK
        pa = a[:, :whole].reshape(a.shape[0], chunks, _SUM_CHUNK).transpose(0, 1)
        pb = b[:, :whole].reshape(b.shape[0], chunks, _SUM_CHUNK).transpose(0, 1)
        out += (pa @ pb.mT).double().sum(0)
    if whole < dim:
        out += (a[:, whole:] @ b[:, whole:].T).double()
    return out


def _ritz(
    block: torch.Tensor, gram_block: torch.Tensor, keep: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rayleigh-Ritz on span(block) given its images A block (column blocks, (dim, m)): Ritz values
    (descending, float64), the first ``keep`` (default all) Ritz vectors as columns and their
    residual norms (:func:`_ritz_rows` on the transposes, without the images)."""
    theta, vecs, _, resid = _ritz_rows(block.T, gram_block.T, keep)
    return theta, vecs.T, resid


def _ritz_rows(
    rows: torch.Tensor,
    imgs: torch.Tensor,
    keep: int | None = None,
    inner: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rayleigh-Ritz on the span of the rows of ``rows`` (m, dim) given their images ``imgs``
    (the rows of (A rows^T)^T): Ritz values (descending, float64), the first ``keep`` (default
    all) Ritz vectors as rows, their images (combinations of the given images, no product) and
    their residual norms.

    The projection is the generalized one, with the basis's own Gram matrix B^T B (Cholesky
    factor L; Ritz values of L^-1 B^T A B L^-T), both small matrices summed in float64
    (:func:`_inner_rows`), so a float32 basis that is orthonormal only to its rounding costs the
    Ritz values nothing. Projecting with one float32 product as if B^T B were the identity put
    the float32 Ritz values of a conv above lambda_1 by 2.6e-5 relative (a ResNet-18 stage-1
    conv, 65536 entries), so its residuals never fell below about 2e-5 theta_1 and the
    iteration stalled on a near-double top (281 restarts, 72 s for one layer). The vectors are
    combined as s^T rows, small matrix on the left: MKL took 3.7x as long for the same product
    as (rows^T s) on a 65536 x 52 basis (2 CPU cores). ``inner``: the two small matrices
    (rows imgs^T, rows rows^T) where the caller keeps them (:class:`_InnerProducts`)."""
    h, b = inner if inner is not None else (_inner_rows(rows, imgs), _inner_rows(rows, rows))
    h = (h + h.T) / 2
    chol, info = torch.linalg.cholesky_ex(b)
    if int(info) == 0:
        eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        linv = torch.linalg.solve_triangular(chol, eye, upper=False)
        c = linv @ h @ linv.T
        theta, y = torch.linalg.eigh((c + c.T) / 2)
        s = linv.T @ y
    else:  # a numerically singular basis: project as if it were orthonormal
        theta, s = torch.linalg.eigh(h)
    theta, s = theta.flip(0), s.flip(1)[:, :keep]
    st = s.T.to(rows.dtype).contiguous()
    vecs = st @ rows
    images = st @ imgs
    resid = torch.linalg.vector_norm(images - vecs * theta[: s.shape[1]].to(rows.dtype).unsqueeze(1), dim=1)
    return theta, vecs, images, resid.double()


class _InnerProducts:
    """rows imgs^T and rows rows^T (float64, :func:`_inner_rows`) of a basis that grows block by
    block, kept across the Rayleigh-Ritz steps of a Krylov pass: a step computes the entries of the
    rows added since the last one only (new rows against all, and the old rows against the new
    images), 2.3x fewer than recomputing both matrices at each test of a pass."""

    def __init__(self, rows: torch.Tensor, imgs: torch.Tensor):
        self.rows, self.imgs = rows, imgs
        size = rows.shape[0]
        self.h = torch.zeros(size, size, dtype=torch.float64, device=rows.device)
        self.b = torch.zeros_like(self.h)
        self.known = 0  # rows[:known] and their images have their entries

    def reset(self) -> None:
        """The rows were replaced (a restart): nothing is known."""
        self.known = 0

    def upto(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows imgs^T, rows rows^T) of rows[:end], views of the kept matrices."""
        lo, rows, imgs = self.known, self.rows, self.imgs
        if lo < end:
            # the new rows on the left: twice as fast as the long basis on the left here (MKL)
            new_b = _inner_rows(rows[lo:end], rows[:end])
            self.b[lo:end, :end] = new_b
            self.b[:lo, lo:end] = new_b[:, :lo].T
            self.h[lo:end, :end] = _inner_rows(rows[lo:end], imgs[:end])
            if lo:
                self.h[:lo, lo:end] = _inner_rows(imgs[lo:end], rows[:lo]).T
        self.known = end
        return self.h[:end, :end], self.b[:end, :end]


def _converged(theta: torch.Tensor, resid: torch.Tensor, tol: float) -> bool:
    """Whether the Krylov-Weinstein or the Kato-Temple bound on lambda_1 - theta_1 is <= tol * theta_1."""
    if theta[0] <= 0:
        return True  # a zero operator: sigma_1 = 0 exactly
    if resid[0] <= tol * theta[0]:
        return True  # Krylov-Weinstein
    if len(theta) == 1:
        return False
    gap = theta[0] - theta[1] - resid[1]
    if gap <= 0:
        return False
    return bool(resid[0] ** 2 / gap <= tol * theta[0])


def _converged_cluster(theta: torch.Tensor, resid: torch.Tensor, tol: float) -> bool:
    """:func:`_converged`, or the block Kato-Temple bound for a top cluster of j Ritz pairs:
    ``lambda_1 <= theta_1 + ||R_j||^2 / (theta_j - theta_{j+1} - r_{j+1})`` with R_j the residual
    matrix of the first j Ritz vectors (its Frobenius norm, the root of r_1^2 + ... + r_j^2,
    bounds its spectral norm) for any j of the block (quadratic residual bound for a cluster,
    e.g. Li and Li 2005, with the next Ritz pair as the gap estimate as for j = 1)."""
    if _converged(theta, resid, tol):
        return True
    sq = torch.cumsum(resid**2, dim=0)
    gaps = theta[:-1] - theta[1:] - resid[1:]
    ok = (gaps > 0) & (sq[:-1] <= tol * theta[0] * gaps)
    return bool(ok.any())


def _orthonormal(block: torch.Tensor) -> torch.Tensor:
    """Q of the thin QR of ``block`` (n x k, n >= k): :func:`_orthonormal_rows` of its transpose."""
    return _orthonormal_rows(block.T.contiguous()).T


def _orthonormal_rows(rows: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning those of ``rows`` (k x n, n >= k, contiguous): CholeskyQR2
    (R^-T X twice, R the Cholesky factor of X X^T in float64), a few times faster than
    Householder QR on a long block (13 vs 59 ms on 16 x 65536 float32, 2 CPU cores);
    Householder QR where X X^T is not numerically positive definite or the result is not
    orthonormal to 1e-3 (an ill-conditioned block). The factors multiply from the left, on the
    rows: R^-1 applied on the right of the (n, k) transpose took MKL 4.9 ms against 2.2 ms for
    the whole step on 4 x 65536 (2 CPU cores)."""
    x = rows
    for _ in range(2):
        r, info = torch.linalg.cholesky_ex((x @ x.T).double(), upper=True)
        if int(info) != 0:
            return torch.linalg.qr(rows.T)[0].T.contiguous()
        x = torch.linalg.inv(r).T.to(x.dtype) @ x
    eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    if float(torch.linalg.matrix_norm(x @ x.T - eye)) > 1e-3:
        return torch.linalg.qr(rows.T)[0].T.contiguous()
    return x


_Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, bool]

#: Top residual, relative to theta_1, at which a float32 iteration stops for the float64 step to
#: decide: the float32 products' rounding keeps residuals from going much below ~1e-6 theta_1.
_FLOOR = 4e-6
#: Ritz vectors in the first float64 certification step: 3 certify a separated sigma_1 (the gap to
#: theta_2) or a near-double top (the cluster bound, gap theta_2 - theta_3): on a ResNet-18 run 16
#: of its 17 iterated convs passed with 3 at every checkpoint, as with 4 (586 float64 products
#: instead of 720, counting the whole-block retries)
_CERTIFY = 3
#: Depths of a Krylov pass at which the bound is tested before the pass ends (and at its end):
#: every 3 blocks. On conv_bench's stored ResNet-18 run (10 checkpoints, 2-core Zen 1) testing
#: from depth 3 on took 48.0-48.6 s against 51.1-54.3 s from depth 6 on (a warm start often meets
#: the bound early in its second pass); every 2 blocks 48.6-49.6 s, every block 53.3-56.5 s.
_KRYLOV_CHECKS = (3, 6, 9)


def _stop(theta: torch.Tensor, resid: torch.Tensor, tol: float, floor: float, cluster: bool) -> bool:
    """The bound holds (:func:`_converged_cluster` or :func:`_converged`), or the top residual is at
    the rounding ``floor`` (relative to theta_1; 0 for none)."""
    if resid[0] <= floor * theta[0]:
        return True
    return _converged_cluster(theta, resid, tol) if cluster else _converged(theta, resid, tol)


def _steps_left(theta: torch.Tensor, resid: torch.Tensor, before: float, tol: float) -> float:
    """Steps the top residual still needs to meet :func:`_converged` at the rate of the last step,
    all relative to theta_1 (``before``: the previous step's r_1 / theta_1; the Ritz value itself
    grows while a poor start finds the top): the larger of the Krylov-Weinstein target tol and the
    Kato-Temple one sqrt(tol gap / theta_1), over log(rate); infinite where r_1 does not fall."""
    top = float(theta[0])
    if top <= 0:
        return float("inf")
    r = float(resid[0]) / top
    if not 0 < r < before:
        return float("inf")
    gap = float(theta[0] - theta[1] - resid[1]) / top if len(theta) > 1 else 0.0
    target = max(tol, (tol * max(gap, 0.0)) ** 0.5)
    return math.log(target / r) / math.log(r / before) if target < r else 0.0


def _iterate(
    gram: Callable[[torch.Tensor], torch.Tensor],
    block: torch.Tensor,
    tol: float,
    max_iter: int,
    floor: float = 0.0,
    predict: bool = False,
    near: float = 0.0,
) -> _Result:
    """Subspace iteration with Rayleigh-Ritz; returns (Ritz values, block, residuals, iterations, stopped).
    With ``near`` it also stops where the top Ritz vector needs at most that many power steps
    (:func:`_power_steps`), for a caller that takes them (:func:`_refine64`) and resumes where they fail.
    With ``predict`` it also gives up (not stopped) once the top residual's last rate says the bound
    needs more than ``max_iter`` steps in all (:func:`_steps_left`), for a caller with a fallback;
    from the third step on: a start that holds little of a separated top has the rate of the rest
    of its block at first (on 30 starts and spectra, judging from the second step gave up on 4 of
    the 8 that met the bound in 5 or 6 steps, from the third on none)."""
    block = _orthonormal(block)
    theta = resid = torch.zeros(1, dtype=torch.float64)
    before = float("inf")
    for it in range(1, max_iter + 1):
        gb = gram(block)
        theta, vecs, resid = _ritz(block, gb)
        if _stop(theta, resid, tol, floor, cluster=False) or (near and _power_steps(theta, resid, tol) <= near):
            return theta, vecs, resid, it, True
        if predict and it > 2 and it + _steps_left(theta, resid, before, tol) > max_iter:
            return theta, vecs, resid, it, False
        before = float(resid[0] / theta[0]) if theta[0] > 0 else float("inf")
        block = _orthonormal(gb)
    return theta, block, resid, max_iter, False


def _iterate_krylov(
    gram: Callable[[torch.Tensor], torch.Tensor],
    block: torch.Tensor,
    tol: float,
    max_iter: int,
    depth: int,
    floor: float = 0.0,
) -> _Result:
    """Thick-restarted block Krylov iteration: Rayleigh-Ritz on span(Y, A X, ..., A^depth X), X the
    top k vectors of Y; the first pass has Y = X = the start block, every later one the previous
    pass's top 2k Ritz vectors as Y (their images are combinations of the pass's images: a restart
    costs no product, and keeps twice the directions it iterates). Same returns and stopping test
    as :func:`_iterate` (one "iteration" is one pass). Each pass costs depth block products, like
    as many subspace steps, but its Ritz values converge at the Chebyshev rate (about the square
    root of the gap's effect per product instead of the gap itself), which is what a
    near-continuous top spectrum (a conv operator's) needs.

    Each new block is orthogonalized against the last two blocks (the block Lanczos recurrence's
    own terms, where nearly all of A q_j lies) and then once against the whole basis (full
    reorthogonalization), instead of twice against the whole basis. The bound is also tested part
    way (at the depths of ``_KRYLOV_CHECKS``), where a warm start often has it already."""
    dim, k = block.shape
    carry = 2 * k  # Ritz vectors a restart keeps
    theta = resid = torch.zeros(1, dtype=torch.float64)
    # the basis and its images, filled in place, hold their vectors as rows: each block is then one
    # contiguous slab, so a pass over the first blocks reads those alone (as columns of a (dim, m)
    # array every pass read whole rows, all m columns of them), and a block goes to the operator
    # as the transpose of a contiguous array (the conv's input layout, without a copy)
    rows = block.new_empty(carry + depth * k, dim)
    imgs = block.new_empty(carry + depth * k, dim)
    checks = {j for j in _KRYLOV_CHECKS if j < depth} | {depth}
    inner = _InnerProducts(rows, imgs)
    x = _orthonormal_rows(block.T.contiguous())
    rows[:k] = x
    imgs[:k] = gram(x.T).T
    start = k  # rows[:start] and their images: the pass's Y
    vecs = x  # the last Ritz vectors, as rows
    for it in range(1, max_iter + 1):
        first, end = 0, start  # the previous block: rows[first:end]
        for j in range(1, depth + 1):
            q = imgs[first : first + k]  # A times the previous block's first k vectors
            recent = rows[max(0, first - k) : end]
            # coefficients as (basis @ q^T), the long rows on the left: 2.4x faster than q @ basis^T (MKL)
            q = q - (recent @ q.T).T @ recent
            done = rows[:end]
            rows[end : end + k] = _orthonormal_rows(q - (done @ q.T).T @ done)
            imgs[end : end + k] = gram(rows[end : end + k].T).T
            first, end = end, end + k
            if j in checks:
                theta, vecs, images, resid = _ritz_rows(rows[:end], imgs[:end], keep=carry, inner=inner.upto(end))
                if _stop(theta[:carry], resid[:carry], tol, floor, cluster=True):
                    return theta, vecs[:k].T, resid, it, True
        # restart from the top 2k Ritz vectors, orthonormalized with their images alike
        inner.reset()
        r, info = torch.linalg.cholesky_ex(_inner_rows(vecs, vecs), upper=True)
        if int(info) != 0:
            x = _orthonormal_rows(vecs[:k].contiguous())
            rows[:k] = x
            imgs[:k] = gram(x.T).T
            start = k
            continue
        rinv_t = torch.linalg.inv(r).T.to(vecs.dtype)
        rows[:carry] = rinv_t @ vecs
        imgs[:carry] = rinv_t @ images
        start = carry
    return theta, vecs[:k].T, resid, max_iter, False


def _ordered_sum(parts: Iterable[Any]) -> Any:
    """parts[0] + parts[1] + ... added in that order, into new arrays or tensors (the pieces of
    :func:`map_ordered`, or the rows of a partial-sum tensor): the same value whatever the schedule."""
    return functools.reduce(operator.add, parts)


def _power_steps(theta: torch.Tensor, resid: torch.Tensor, tol: float) -> float:
    """Power steps (v <- A v / ||A v||) the top Ritz vector needs for :func:`_converged`'s
    Kato-Temple bound: each scales its error, and so r_1, by at most lambda_2 / lambda_1, estimated
    (theta_2 + r_2) / theta_1, and the bound r_1^2 / gap by its square; 0 where the bound holds,
    infinite without a gap."""
    top = float(theta[0])
    if _converged(theta, resid, tol):
        return 0.0
    if top <= 0 or len(theta) < 2:
        return float("inf")
    gap = float(theta[0] - theta[1] - resid[1])
    rate = float(theta[1] + resid[1]) / top
    if gap <= 0 or not 0 < rate < 1:
        return float("inf")
    excess = float(resid[0]) ** 2 / (gap * tol * top)
    return math.log(excess) / (-2.0 * math.log(rate))


def _refine64(
    m: torch.Tensor,
    wide: bool,
    theta: torch.Tensor,
    vecs: torch.Tensor,
    resid: torch.Tensor,
    tol: float,
    steps: int = 0,
) -> tuple[float, torch.Tensor] | None:
    """theta_1 recomputed in float64 from the top Ritz vector v (v^T A v / v^T v, A = M M^T if
    ``wide`` else M^T M) and v, or None when its float64 residual fails the bound of
    :func:`_converged` (the second Ritz pair of the float32 step stays the gap estimate) after up
    to ``steps`` power steps v <- A v / ||A v||, each tested again.

    M is converted to float64 chunk by chunk of its rows (contiguous, about ``_CHUNK`` entries)
    into a reused buffer (one per group running at once), in cache; the chunks form up to
    ``_GROUPS`` groups, each a task of :func:`map_ordered` with its own partial sums, added in
    group order. Where A = M^T M, one pass per vector: theta_1 = sum of ||M_r v||^2,
    A v = sum of M_r^T (M_r v). Where A = M M^T, u = M^T v takes a first pass, then each pass
    gives A v = M u and, while power steps remain, M^T (A v) on the same chunks, the next
    vector's u. Converting into a fresh float64 tensor per chunk cost its page faults, chunks of
    M^T's rows (strided columns of M) a strided copy: 68 ms against 14 ms for the refinement of
    a 512 x 32768 float32 layer (one CPU thread); column chunks of M, for one pass where
    A = M M^T, a strided copy too (1.6x the time per entry in analyze). numpy for these float64
    chunk products was slower inside analyze (1.72 against 1.53 s over 40 checkpoints on one
    worker), so they stay in torch. A power step costs one pass where a float32 block step costs
    a Gram product of the whole block: the iteration hands over to the refinement where
    :func:`_power_steps` says a few suffice."""
    v = vecs[:, 0].double()
    v = v / torch.linalg.vector_norm(v)
    rows, cols = m.shape
    step = max(1, _CHUNK // cols)
    starts = list(range(0, rows, step))
    count = min(len(starts), _GROUPS)
    groups = [starts[i * len(starts) // count : (i + 1) * len(starts) // count] for i in range(count)]
    acc = torch.empty(count, cols, dtype=torch.float64, device=m.device)
    scalars = torch.zeros(count, dtype=torch.float64, device=m.device)
    free: SimpleQueue[torch.Tensor] = SimpleQueue()  # conversion buffers, one per worker at most

    def pass_(work: Callable[[int, int, int, torch.Tensor], object]) -> None:
        """``work(group, start, stop, chunk)`` on every chunk, each converted to float64 into its
        worker's buffer, the groups on the worker threads (:func:`map_ordered`), each group's
        chunks in order."""

        def group(g: int) -> None:
            try:
                buf = free.get_nowait()
            except Empty:
                buf = torch.empty(min(step, rows), cols, dtype=torch.float64, device=m.device)
            try:
                for start in groups[g]:
                    stop = min(start + step, rows)
                    chunk = buf[: stop - start]
                    chunk.copy_(m[start:stop])
                    work(g, start, stop, chunk)
            finally:
                free.put(buf)

        map_ordered(group, range(count), None if m.device.type == "cpu" else 1)  # one thread feeds a GPU

    if wide:  # v over M's rows: u = M^T v
        acc.zero_()
        pass_(lambda g, start, stop, chunk: acc[g].addmv_(chunk.T, v[start:stop]))
        u = _ordered_sum(acc)
    for attempt in range(steps + 1):
        more = attempt < steps
        acc.zero_()
        if wide:
            av = torch.empty_like(v)
            theta1 = u @ u

            def wide_pass(
                g: int,
                start: int,
                stop: int,
                chunk: torch.Tensor,
                u: torch.Tensor = u,
                av: torch.Tensor = av,
                more: bool = more,
            ) -> None:
                torch.mv(chunk, u, out=av[start:stop])  # rows of M u: disjoint slices
                if more:  # M^T (A v), for the next vector
                    acc[g].addmv_(chunk.T, av[start:stop])

            pass_(wide_pass)
            after = _ordered_sum(acc) if more else None
        else:
            scalars.zero_()

            def tall_pass(g: int, start: int, stop: int, chunk: torch.Tensor, v: torch.Tensor = v) -> None:
                part = chunk @ v
                scalars[g] += part @ part
                acc[g].addmv_(chunk.T, part)

            pass_(tall_pass)
            av, theta1, after = _ordered_sum(acc), _ordered_sum(scalars), None
        r1 = torch.linalg.vector_norm(av - theta1 * v)
        theta64 = torch.cat([theta1.reshape(1).cpu(), theta[1:].cpu()])
        resid64 = torch.cat([r1.reshape(1).cpu(), resid[1:].cpu()])
        if _converged(theta64, resid64, tol):
            return float(theta1), v
        if more:
            size = torch.linalg.vector_norm(av)
            v = av / size
            if after is not None:
                u = after / size
    return None


#: Relative error estimate of the eigenvalues of :func:`_gram_chunked`'s matrix: 30-300 times the
#: largest measured (4.7e-8 of its largest entry per entry; 3.4e-9 and 1.5e-10 on sigma_1^2 of the
#: analyze benchmark's 512 x 32768 layer at its first checkpoints).
_GRAM_ERR = 1e-6


def _gram_chunked(m: torch.Tensor, wide: bool) -> torch.Tensor:
    """M M^T if ``wide`` else M^T M, in float64, for a float32 M without its float64 copy: float32
    products over chunks of ``_SUM_CHUNK`` of the summed dimension, summed in float64 (as
    :func:`_inner_rows`). 198 ms against 439 ms for the float64 copy and its product on a
    512 x 32768 layer (one CPU thread), largest entry error 4.7e-8 of the largest entry. On the
    CPU the chunks form up to 4 groups (fewer where their sums would take more than 64 MiB), each
    a task of :func:`map_ordered` with its own sum, the sums added in group order."""
    rows, cols = m.shape
    dim, summed = (rows, cols) if wide else (cols, rows)
    starts = list(range(0, summed, _SUM_CHUNK))
    cpu = m.device.type == "cpu"
    count = max(1, min(4, len(starts), (8 << 20) // (dim * dim))) if cpu else 1
    src = m.numpy(force=True) if cpu else m  # on the CPU numpy's BLAS, as the iteration's products

    def group(i: int) -> np.ndarray | torch.Tensor:
        out = np.zeros((dim, dim)) if cpu else torch.zeros(dim, dim, dtype=torch.float64, device=m.device)
        for start in starts[i * len(starts) // count : (i + 1) * len(starts) // count]:
            part = src[:, start : start + _SUM_CHUNK] if wide else src[start : start + _SUM_CHUNK].T
            out += part @ part.T
        return out

    total = _ordered_sum(map_ordered(group, range(count)))
    return torch.from_numpy(total) if cpu else total


def _start_block(
    dim: int, k: int, warm: torch.Tensor | None, dtype: torch.dtype, device: torch.device, seed: int
) -> torch.Tensor:
    if warm is not None and warm.shape[0] == dim:
        return warm.to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim, k, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def matrix_top_singular(
    m: torch.Tensor, warm: torch.Tensor | None = None, *, tol: float = DEFAULT_TOL, max_iter: int = 6, seed: int = 0
) -> TopSingular:
    """sigma_1 of matrix ``m``, warm-started from ``warm`` (a previous result's ``block``).

    Small matrices (m * n * min(m, n) <= 5e7) get an exact float64 Gram eigenvalue. Larger
    ones iterate on the Gram operator of the shorter side with a block of 8
    vectors in the matrix's own dtype (float32 products, float64 Ritz step),
    then refine the top Ritz vector in float64 (module docstring; up to
    ``_POWER_STEPS`` float64 power steps where a block step leaves it that close), so the
    relative error of sigma_1 is below tol/2 (measured at most 2.6e-8 with
    the default tol 1e-7, on float32 matrices up to 4608 x 512 with
    clustered, repeated and widely spread singular values);
    without convergence after ``max_iter`` steps, or as soon as the top
    residual's rate over the last step says that more than ``max_iter`` are
    needed in all, the Gram matrix is eigen-decomposed (module docstring),
    which also provides the next warm start. A warm start from a slightly
    different matrix with a separated top singular value converges in 1-3
    steps; more than about 6 cost as much as the fallback (8 ms against 200 ms
    for the CIFAR CNN's 512 x 32768 layer per step, one CPU thread). The rate
    is what tells them apart: a Marchenko-Pastur top (the first checkpoint of
    a small initialisation) gives up after 3 steps, a start far from a well
    separated top (the next checkpoint, whose top the first one's block
    hardly holds) finishes in 5 instead of giving up after 4.
    """
    m = m.detach()  # a value, never a graph: the products write into buffers (out=, in place)
    rows, cols = m.shape
    if rows == 0 or cols == 0:
        return TopSingular(0.0, None, 0, "exact")
    if rows * cols * min(rows, cols) <= _EXACT_COST:
        # sigma_1^2 = largest eigenvalue of the float64 Gram matrix of the shorter side: exact to
        # float64 rounding relative to sigma_1, and much cheaper than an SVD of the whole matrix
        m64 = m.double()
        gram64 = m64 @ m64.T if rows <= cols else m64.T @ m64
        return TopSingular(max(float(torch.linalg.eigvalsh(gram64)[-1]), 0.0) ** 0.5, None, 0, "exact")
    wide = rows <= cols  # iterate on the side with the shorter vectors
    dim = rows if wide else cols
    work = m if m.is_floating_point() and m.dtype in (torch.float32, torch.float64) else m.float()

    long = cols if wide else rows
    width = max(_SUM_CHUNK, _PIECE // dim)
    pieces = [(a, min(a + width, long)) for a in range(0, long, width)]
    array = work.numpy(force=True) if work.device.type == "cpu" else None  # the same memory

    def gram(block: torch.Tensor) -> torch.Tensor:
        # in row form, the block's transpose on the left of both products: 21 against 28 ms on a
        # 512 x 32768 float32 layer, 17 against 95 ms on its transpose (block of 8, one CPU thread)
        rows_t = block.T.contiguous()
        if array is None:
            return ((rows_t @ work) @ work.T).T if wide else ((rows_t @ work.T) @ work).T
        # on the CPU, A = sum over pieces P (column blocks of M, or row blocks of M^T) of P P^T, on
        # the worker threads of normdyn.core.threads (no barrier for a reader thread to stall) and
        # summed in their order, so any number of workers gives the same value; in numpy, whose
        # OpenBLAS ran these thin products in 34 ms for the 16 pieces of 512 x 32768 against 48 ms
        # in torch's MKL, whole or in pieces (one thread; 19.5 against 28 ms on 2 workers, AMD EPYC)
        left = rows_t.numpy(force=True)

        def piece(span: tuple[int, int]) -> np.ndarray:
            p = array[:, span[0] : span[1]] if wide else array[span[0] : span[1]].T
            return (left @ p) @ p.T

        return torch.from_numpy(_ordered_sum(map_ordered(piece, pieces))).T

    k = min(_BLOCK, dim)
    start = _start_block(dim, k, warm, work.dtype, work.device, seed)
    if work.dtype == torch.float64:
        theta, block, resid, iters, ok = _iterate(gram, start, tol, max_iter, predict=True)
        if ok:
            return TopSingular(max(float(theta[0]), 0.0) ** 0.5, block, iters, "iteration")
    else:
        # a float32 step that leaves the top Ritz vector a few power steps from the bound hands over
        # to the float64 refinement, whose passes take them (one pass each instead of a block step);
        # where they fail, the iteration resumes from the block
        theta, block, resid, iters, ok = _iterate(gram, start, tol, max_iter, predict=True, near=_POWER_STEPS)
        while ok:
            steps = math.ceil(_power_steps(theta, resid, tol))
            got = _refine64(work, wide, theta, block, resid, tol, steps)
            if got is not None:
                block = block.clone()
                block[:, 0] = got[1].to(work.dtype)  # the refined top vector starts the next checkpoint
                return TopSingular(max(got[0], 0.0) ** 0.5, block, iters, "iteration")
            if steps == 0 or iters >= max_iter:
                break  # the float32 bound held and the float64 one did not: the fallback decides
            theta, block, resid, more, ok = _iterate(gram, block, tol, max_iter - iters, predict=True)
            iters += more
    if work.dtype != torch.float64:
        # the Gram matrix from float32 products summed in float64: its top eigenvector, refined and
        # tested as the iteration's is, with its second eigenvalue plus _GRAM_ERR theta_1 as the gap
        # estimate; the float64 Gram matrix only where that fails
        evals, evecs = torch.linalg.eigh(_gram_chunked(work, wide))
        theta = evals.flip(0)[: k + 1]
        resid = torch.full_like(theta, _GRAM_ERR * max(float(theta[0]), 0.0))
        top = evecs[:, -k:].flip(1)
        got = _refine64(work, wide, theta, top, resid, tol)
        if got is not None:
            return TopSingular(max(got[0], 0.0) ** 0.5, top.to(work.dtype), iters, "exact-fallback")
    w64 = work.double()
    evals, evecs = torch.linalg.eigh(w64 @ w64.T if wide else w64.T @ w64)
    top = evecs[:, -k:].flip(1).to(work.dtype)
    return TopSingular(max(float(evals[-1]), 0.0) ** 0.5, top, iters, "exact-fallback")


def _certify64(
    apply_gram64: Callable[[torch.Tensor], torch.Tensor], block: torch.Tensor, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Rayleigh-Ritz of the float64 operator on span(block): (Ritz values, Ritz vectors,
    residuals, whether :func:`_converged_cluster` holds on them)."""
    x = _orthonormal(block.double())
    theta, vecs, resid = _ritz(x, apply_gram64(x))
    return theta, vecs, resid, _converged_cluster(theta, resid, tol)


def operator_top_singular(
    apply_gram: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    warm: torch.Tensor | None = None,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = 2000,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    block_size: int = _BLOCK,
    seed: int = 0,
    krylov_depth: int = 0,
    apply_gram64: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TopSingular:
    """sigma_1 of a linear operator given only through ``apply_gram`` (blocks of column vectors).

    ``apply_gram(X)`` returns A^T A X for X of shape (dim, k) in ``dtype``. ``krylov_depth`` 0 is
    subspace iteration; d > 0 is the restarted block Krylov iteration on d + 1 blocks (one
    "iteration" is then one restart, stopped also by the cluster bound of
    :func:`_converged_cluster`). With ``apply_gram64`` (the same operator in float64, for a
    float32 ``apply_gram``) the iteration runs in ``dtype`` until its bound holds or its top
    residual reaches the rounding floor (``_FLOOR`` times theta_1), then one float64
    Rayleigh-Ritz step on its block decides: the bound is tested on the float64 Ritz values and
    residuals and sigma_1 is the root of the float64 theta_1; where it fails there, the
    iteration goes on in float64 from that block. There is no dense fallback: an iteration
    that does not meet the bound after ``max_iter`` steps raises ArithmeticError naming the
    bound reached.
    """
    k = min(block_size, dim)
    start = _start_block(dim, k, warm, dtype, torch.device(device), seed)
    # a Krylov basis near the operator's size (or rank) degenerates: its last blocks are rounding
    krylov = krylov_depth > 0 and 4 * k * (krylov_depth + 1) <= dim

    def iterate(gram: Callable[[torch.Tensor], torch.Tensor], block: torch.Tensor, floor: float) -> _Result:
        if krylov:
            return _iterate_krylov(gram, block, tol, max_iter, krylov_depth, floor)
        return _iterate(gram, block, tol, max_iter, floor)

    if apply_gram64 is None:
        theta, block, resid, iters, ok = iterate(apply_gram, start, 0.0)
    else:
        theta, block, resid, iters, ok = iterate(apply_gram, start, _FLOOR)
        # the top few Ritz vectors certify a separated sigma_1 or a pair (a product of _CERTIFY vectors
        # instead of k in float64); the whole block where the cluster is wider
        theta, vecs, resid, ok = _certify64(apply_gram64, block[:, :_CERTIFY], tol)
        if not ok and k > _CERTIFY:
            theta, vecs, resid, ok = _certify64(apply_gram64, block, tol)
        block = torch.cat([vecs.to(dtype), block[:, vecs.shape[1] :]], dim=1)
        if not ok:
            theta, vecs, resid, more, ok = iterate(apply_gram64, block.double(), 0.0)
            block, iters = vecs.to(dtype), iters + more
    top = max(float(theta[0]), 0.0)
    if not ok:
        raise ArithmeticError(f"operator norm did not converge in {max_iter} iterations (sigma_1 ~ {top**0.5:.6g})")
    return TopSingular(top**0.5, block, iters, "iteration")
