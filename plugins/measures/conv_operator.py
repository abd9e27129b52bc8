"""The exact operator norm of convolutions on their real input shape, and the
spectral complexity that uses it.

The operator norm of a conv depends on the input's spatial shape, the
padding, the stride and the dilation, and differs from the reshaped kernel's
sigma (c_out x c_in*k*k) in either direction: it is at least that sigma when
some output position's receptive field lies wholly inside the input (its
output is then the reshaped kernel times that patch), and it can be smaller
when every receptive field reaches into the zero padding (strided or dilated
convs on small inputs). Methods, in this order:

- circular padding, stride 1: the operator is block-circulant, its singular
  values are those of the c_out x c_in matrices of the kernel's DFT at every
  frequency of the input grid (Sedghi, Gupta and Long 2019); sigma_1 is
  their maximum (per group for grouped convs);
- disjoint receptive fields (in every spatial dimension the input pixels read
  by different output positions never coincide: kernel span d(k-1)+1 <= stride
  with no circular wrap, or interleaved dilated taps; e.g. the ViT patch
  embedding, kernel = stride): the operator is block-diagonal, one block per
  output position and group, each block the reshaped kernel restricted to the
  taps that fall inside the input (padding taps are zeros; pixels no output
  reads are zero columns), so
  ``sigma_1 = max over groups g and tap masks T of sigma_1(W[g, :, T] as cog x (cig*|T|))``;
  with no padding every block is the whole kernel and sigma_1 is exactly the
  reshaped kernel's sigma (per group);
- small inputs (c_in * prod(in_shape) <= 2048): the largest eigenvalue of the
  dense float64 Gram matrix A^T A, built by applying the conv's Gram operator
  to the identity basis;
- otherwise: a thick-restarted block Krylov iteration on the Gram operator A^T A
  (the conv, then the transposed conv) in float32, with the Kato-Temple /
  Krylov-Weinstein bounds of :mod:`normdyn.plugins.measures.top_singular` and
  their block form for a top cluster (a zero-padded conv's top eigenvalue comes
  in near-equal pairs), certified by a float64 Rayleigh-Ritz step (and finished
  in float64 where that fails); every start holds the kernel's symbol's best
  waves (:func:`symbol_start`), later checkpoints' also the previous
  checkpoint's Ritz block. ``iterative_conv_norm(..., fast=False)`` is the plain path kept
  as the independent check: float64 subspace iteration with autograd's
  adjoint, whose speed is the rate (sigma_next / sigma_1)^2 per step (the
  64-fold sigma_1 of a CIFAR ViT patch embedding, which the closed form
  handles, took it 86-896 steps and one kernel in 6 none within 1000).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from math import prod
from typing import Any

import torch
import torch.nn.functional as F

from normdyn.core import threads
from normdyn.core.errors import MeasureError
from normdyn.core.hookspecs import hookimpl
from normdyn.core.layers import LayerSpec
from normdyn.plugins.measures.spectral import bartlett, layer_norms
from normdyn.plugins.measures.top_singular import DEFAULT_TOL, operator_top_singular

#: Conv operators have a near-continuous top spectrum (neighbouring frequencies), so the
#: Kato-Temple gap is small and iterations are many; 1e-6 on sigma_1^2 keeps sigma_1 exact
#: to 5e-7 at a few seconds per layer for the first checkpoint, far less warm-started.
CONV_TOL = 1e-6

#: Inputs of at most this many entries (c_in * prod(in_shape)) get the exact dense Gram matrix:
#: 2048 x 2048 in float64 is 32 MiB and its eigenvalues take well under a second.
DENSE_DIM = 2048

#: The Krylov iteration's block and depth: Rayleigh-Ritz on span(X, AX, ..., A^12 X), X of 4
#: vectors, 52 Gram products per restart. Deep, narrow bases beat wide, shallow ones on a conv's
#: near-continuous top spectrum: on the ResNet-18 CIFAR convs (cold from the symbol start, then
#: warm from the previous checkpoint) 4 x 13 needed 2-4x fewer products than 16 x 5 (104 against
#: 400 cold, 52 against 160 warm on a stage-1 conv; 0.26 s against 0.96 s cold, idle 2-core CPU).
KRYLOV_BLOCK = 4
KRYLOV_DEPTH = 12

__all__ = [
    "conv_forward",
    "circular_conv_norm",
    "disjoint_conv_norm",
    "gram_operator",
    "symbol_start",
    "dense_conv_norm",
    "iterative_conv_norm",
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
    grid = torch.zeros(co, cig, *in_shape, dtype=torch.float64, device=weight.device)
    for offset in itertools.product(*[range(k) for k in weight.shape[2:]]):
        pos = tuple((a * d) % n for a, d, n in zip(offset, dilation, in_shape))
        target: tuple[slice | int, ...] = (slice(None), slice(None), *pos)
        source: tuple[slice | int, ...] = (slice(None), slice(None), *offset)
        grid[target] += weight[source].double()
    spectrum = torch.fft.fftn(grid, dim=tuple(range(2, grid.dim())))
    cog = co // groups
    best = 0.0
    for g in range(groups):
        block = spectrum[g * cog : (g + 1) * cog]  # (cog, cig, *freq)
        mats = block.reshape(cog, cig, -1).permute(2, 0, 1)
        best = max(best, float(torch.linalg.svdvals(mats).max()))
    return best


def _tap_masks(n: int, k: int, stride: int, pad: int, dilation: int, circular: bool) -> set[tuple[int, ...]] | None:
    """The distinct sets of in-input taps of the output positions along one spatial dimension
    (input length n), or None when two output positions read a common input pixel (or one reads
    a pixel twice, through the circular wrap)."""
    n_out = (n + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    seen: set[int] = set()
    masks: set[tuple[int, ...]] = set()
    for o in range(n_out):
        taps = [(a, o * stride + a * dilation - pad) for a in range(k)]
        inside = [(a, i % n if circular else i) for a, i in taps if circular or 0 <= i < n]
        pixels = {i for _, i in inside}
        if len(pixels) < len(inside) or pixels & seen:
            return None
        seen |= pixels
        masks.add(tuple(a for a, _ in inside))
    return masks


def disjoint_conv_norm(layer: LayerSpec, weight: torch.Tensor) -> float | None:
    """Closed-form sigma_1 of a conv whose output positions read disjoint input pixels (module
    docstring): max over groups and tap masks of the masked reshaped kernel's sigma_1 (float64);
    None when the receptive fields overlap in some spatial dimension."""
    assert layer.in_shape is not None
    per_dim = []
    for j, n in enumerate(layer.in_shape):
        masks = _tap_masks(
            n,
            weight.shape[2 + j],
            layer.stride[j],
            layer.padding[j],
            layer.dilation[j],
            layer.padding_mode == "circular",
        )
        if masks is None:
            return None
        per_dim.append(sorted(masks))
    w64 = weight.detach().double().cpu()
    cog = w64.shape[0] // layer.groups
    best = 0.0
    for combo in itertools.product(*per_dim):
        if any(len(mask) == 0 for mask in combo):
            continue  # an output that reads only padding: a zero block
        sub = w64
        for j, mask in enumerate(combo):
            sub = sub.index_select(2 + j, torch.tensor(mask))
        for g in range(layer.groups):
            block = sub[g * cog : (g + 1) * cog].reshape(cog, -1)
            best = max(best, float(torch.linalg.svdvals(block)[0]))
    return best


_CONV_T = {"conv1d": F.conv_transpose1d, "conv2d": F.conv_transpose2d}


def _adjoint(layer: LayerSpec, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """y (batch, C_out, *out_shape) -> A^T y for a zero-padded conv: the transposed conv, with the
    output padding that gives back the input shape where the stride drops trailing pixels; None
    for circular padding (its adjoint wraps; autograd provides it). A float64 stride-1 conv of
    one group gets the conv of y with the flipped, transposed kernel and the complementary
    padding instead, the same operator: torch's float64 transposed conv took 1.3-3.3x its time
    (72 against 22 ms for 4 vectors through a 512-channel conv on 4 x 4, 2 CPU cores); in
    float32 neither is faster throughout."""
    if layer.padding_mode != "zeros":
        return None
    assert layer.in_shape is not None
    ks = weight.shape[2:]
    conv = _CONV[layer.kind]
    flip_pad = [d * (k - 1) - p for k, p, d in zip(ks, layer.padding, layer.dilation)]
    if (
        weight.dtype == torch.float64
        and layer.groups == 1
        and all(s == 1 for s in layer.stride)
        and all(p >= 0 for p in flip_pad)
    ):
        # in the weight's memory format (channels-last where gram_operator asked for it)
        last = not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
        flipped = weight.flip(tuple(range(2, weight.dim()))).transpose(0, 1)
        flipped = flipped.contiguous(memory_format=torch.channels_last if last else torch.contiguous_format)
        return lambda y: conv(y, flipped, None, 1, tuple(flip_pad), layer.dilation, 1)
    out_pad = []
    for n, k, s, p, d in zip(layer.in_shape, ks, layer.stride, layer.padding, layer.dilation):
        n_out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        out_pad.append(n - ((n_out - 1) * s - 2 * p + d * (k - 1) + 1))
    conv_t = _CONV_T[layer.kind]
    return lambda y: conv_t(y, weight, None, layer.stride, layer.padding, tuple(out_pad), layer.groups, layer.dilation)


def gram_operator(
    layer: LayerSpec,
    weight: torch.Tensor,
    dtype: torch.dtype = torch.float64,
    *,
    autograd: bool = False,
    channels_last: bool = False,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(X -> A^T A X for blocks X of shape (dim, b), dim = c_in * prod(in_shape)) in ``dtype``.
    A^T is the transposed conv where the padding is zeros (about 40 % less time than autograd's
    backward, which builds a graph per product), autograd's gradient of 1/2 ||A x||^2 where it
    is circular or ``autograd`` asks for it (the plain path, an independent adjoint).
    ``channels_last``: a vector's entries in the order (*in_shape, c_in), the channel fastest
    (the same operator with its coordinates permuted, hence the same spectrum), so that the
    convs run on channels-last tensors without a copy: 6-12 % less time per float32 product
    and 15-55 % per float64 one on the ResNet-18 CIFAR convs (2-core Zen 1, one thread)."""
    assert layer.in_shape is not None and layer.in_channels is not None
    w = weight.detach().to(dtype)
    if channels_last and w.dim() == 4:
        w = w.contiguous(memory_format=torch.channels_last)
    forward = conv_forward(layer, w)
    adjoint = None if autograd else _adjoint(layer, w)
    in_shape = layer.in_shape
    shape = (layer.in_channels, *in_shape)
    dim = prod(shape)
    spatial = len(in_shape)
    # (b, *in_shape, c) <-> (b, c, *in_shape)
    to_conv = (0, spatial + 1, *range(1, spatial + 1))
    from_conv = (0, *range(2, spatial + 2), 1)

    def apply_gram(block: torch.Tensor) -> torch.Tensor:
        b = block.shape[1]
        if channels_last:
            x = block.T.reshape(b, *in_shape, shape[0]).permute(to_conv)
        else:
            x = block.T.reshape(b, *shape)
        if adjoint is not None:
            g = adjoint(forward(x))
        else:
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                y = forward(x)
                (g,) = torch.autograd.grad(0.5 * (y * y).sum(), x)
        if channels_last:
            g = g.permute(from_conv)
        return g.reshape(b, dim).T

    return apply_gram, dim


def _to_channels_last(block: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A block (dim, b) of vectors in (c, *spatial) order as vectors in (*spatial, c) order."""
    spatial = len(shape) - 1
    return block.reshape(*shape, -1).permute(*range(1, spatial + 1), 0, spatial + 1).reshape(block.shape)


def _from_channels_last(block: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`_to_channels_last`."""
    spatial = len(shape) - 1
    moved = block.reshape(*shape[1:], shape[0], -1)
    return moved.permute(spatial, *range(spatial), spatial + 1).reshape(block.shape)


def dense_conv_norm(layer: LayerSpec, weight: torch.Tensor) -> float:
    """sigma_1 = sqrt(largest eigenvalue of the dense float64 Gram matrix A^T A), whose columns are
    the Gram operator applied to the identity basis in chunks of 256."""
    apply_gram, dim = gram_operator(layer, weight)
    eye = torch.eye(dim, dtype=torch.float64, device=weight.device)
    gram = torch.cat([apply_gram(eye[:, i : i + 256]) for i in range(0, dim, 256)], dim=1)
    return max(float(torch.linalg.eigvalsh((gram + gram.T) / 2)[-1]), 0.0) ** 0.5


def _symbol_matrices(weight: torch.Tensor, n: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, J, freqs): the kernel's DFT matrices M(omega) = sum_p W[:, :, p] e^{-i omega . p} = R - iJ
    (c_out x c_in, their real and negated imaginary parts in float32) at the frequencies of grid
    ``n`` in one half-space (the last coordinate up to n_last // 2, as rfftn keeps: M(-omega) is
    M(omega)'s conjugate, with the same singular values and, for the waves, the same real span),
    shape (F, c_out, c_in) each, and those frequencies' integer coordinates (F, len(n)). Computed
    as two real products of the taps' cosines and sines with the kernel laid out (taps, c_out *
    c_in): in the (F, c_out, c_in) layout directly, 5-10x faster than a float64 FFT of the
    zero-padded kernel and its permuted copy (15-40 ms against 0.1-0.2 s for a ResNet-18 conv, 2
    CPU cores). Kept real: a complex64 copy of both and the conjugate's took longer than the power
    steps they serve (0.74 s and 0.35 s of a ResNet-18 run's 4 s of symbol starts, one thread)."""
    co, ci = weight.shape[:2]
    ks = weight.shape[2:]
    taps = torch.cartesian_prod(*[torch.arange(k, dtype=torch.float64) for k in ks]).reshape(-1, len(ks))
    axes = [torch.arange(m) for m in n[:-1]] + [torch.arange(n[-1] // 2 + 1)]
    freqs = torch.cartesian_prod(*axes).reshape(-1, len(n))
    omega = 2 * torch.pi * freqs.double() / torch.tensor(n, dtype=torch.float64)
    phase = omega @ taps.T  # (F, taps)
    w = weight.detach().float().cpu().reshape(co * ci, -1).T  # (taps, co * ci)
    real = (torch.cos(phase).float() @ w).reshape(-1, co, ci)
    imag = (torch.sin(phase).float() @ w).reshape(-1, co, ci)
    return real, imag, freqs


def _apply_symbol(ab: torch.Tensor, rt: torch.Tensor, jt: torch.Tensor) -> torch.Tensor:
    """(M v)^T as rows (F, 2, c_out) [p; q], M v = p + iq, for v = a + ib given as rows ab (F, 2, c_in)
    and M = R - iJ given as rt = R^T, jt = J^T: p = R a + J b, q = R b - J a."""
    ar, aj = ab @ rt, ab @ jt  # [a R^T; b R^T], [a J^T; b J^T]
    return torch.stack([ar[:, 0] + aj[:, 1], ar[:, 1] - aj[:, 0]], dim=1)


def symbol_start(
    layer: LayerSpec, weight: torch.Tensor, k: int, state: dict[str, torch.Tensor] | None = None
) -> torch.Tensor | None:
    """A start block of ``k`` vectors for a zero-padded stride-1 conv (dilation 1, one group),
    from its symbol; None for other convs. The operator's top right singular vectors are close
    to a plane wave v e^{-i omega . p} under the lowest Dirichlet mode sin(pi (p + 1) / (n + 1))
    of the input box, with omega where sigma_1 of the kernel's DFT matrix M(omega) is largest
    and v its top right singular vector (the box's edges perturb both). So: M on the input's
    frequency grid (the FFT method's matrices, one of each pair +-omega), v at every frequency
    by batched power steps on M^H M, and the real and imaginary parts of those waves (times the
    mode) at the k/2 best frequencies. ``state`` keeps every frequency's v across calls (the
    previous checkpoint's): from there 2 power steps rank the frequencies, from a random start 6."""
    assert layer.in_shape is not None
    if (
        layer.padding_mode != "zeros"
        or layer.groups != 1
        or any(s != 1 for s in layer.stride)
        or any(d != 1 for d in layer.dilation)
        or any(kk > n for kk, n in zip(weight.shape[2:], layer.in_shape))
    ):
        return None
    n = layer.in_shape
    ci = weight.shape[1]
    # on the CPU whatever the device: small products, once per checkpoint
    real, imag, grid = _symbol_matrices(weight, n)
    rt, jt = real.mT, imag.mT
    previous = None if state is None else state.get("v")
    if previous is not None and previous.shape == (real.shape[0], 2, ci):
        ab, steps = previous, 2
    else:
        gen = torch.Generator().manual_seed(0)
        ab, steps = torch.randn(real.shape[0], 2, ci, generator=gen, dtype=torch.float32), 6
    # every frequency's v = a + ib as the rows [a; b] (F, 2, c_in), in real arithmetic: row vectors,
    # whose batched products are 3-4x faster than columns here
    for _ in range(steps):
        pq = _apply_symbol(ab, rt, jt)  # (M v)^T = [p; q]
        pr, pj = pq @ real, pq @ imag  # [p R; q R], [p J; q J]
        # M^H (p + iq) = R^T p - J^T q + i (R^T q + J^T p)
        ab = torch.stack([pr[:, 0] - pj[:, 1], pr[:, 1] + pj[:, 0]], dim=1)
        ab = ab / torch.linalg.vector_norm(ab, dim=(1, 2), keepdim=True).clamp_min(1e-30)
    sigma = torch.linalg.vector_norm(_apply_symbol(ab, rt, jt), dim=(1, 2))
    if state is not None:
        state["v"] = ab
    chosen: list[int] = []
    seen: set[tuple[int, ...]] = set()
    for f in torch.argsort(sigma, descending=True).tolist():
        freq = tuple(int(a) for a in grid[f])
        if freq in seen:
            continue
        seen |= {freq, tuple((-a) % m for a, m in zip(freq, n))}
        chosen.append(f)
        if 2 * len(chosen) >= k:
            break
    axes = [torch.arange(m, dtype=torch.float64) for m in n]
    mode = torch.ones(n, dtype=torch.float64)
    for j, a in enumerate(axes):
        shape = [1] * len(n)
        shape[j] = n[j]
        mode = mode * torch.sin(torch.pi * (a + 1) / (n[j] + 1)).reshape(shape)
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (len(n), *n)
    cols = []
    for f in chosen:
        omega = 2 * torch.pi * grid[f].double() / torch.tensor(n, dtype=torch.float64)
        phase = torch.exp(-1j * (omega.reshape(-1, *[1] * len(n)) * pos).sum(0))
        v = torch.complex(ab[f, 0].double(), ab[f, 1].double())
        wave = v.reshape(ci, *[1] * len(n)) * (phase * mode)
        cols += [wave.real.reshape(-1), wave.imag.reshape(-1)]
    block = torch.stack(cols[:k], dim=1)
    return block.to(weight.device)


def iterative_conv_norm(
    layer: LayerSpec,
    weight: torch.Tensor,
    warm: torch.Tensor | None = None,
    *,
    tol: float = CONV_TOL,
    fast: bool = True,
    symbol: dict[str, torch.Tensor] | None = None,
) -> tuple[float, torch.Tensor]:
    """(sigma_1 by iteration on the Gram operator, the block to warm-start with); the relative
    error of sigma_1 is below tol/2 (see top_singular). ``fast``: the restarted block Krylov
    iteration (KRYLOV_BLOCK, KRYLOV_DEPTH) with the cluster bound on float32 products (transposed conv as
    the adjoint), certified, and finished where needed, on float64 ones; otherwise (the plain
    path) float64 subspace iteration with the Kato-Temple / Krylov-Weinstein bounds and
    autograd's adjoint. ``symbol``: the symbol start's state across checkpoints (:func:`symbol_start`)."""
    # the fast path's operators take their vectors channels-last (gram_operator); the blocks in and
    # out of this function are in the usual (c_in, *in_shape) order
    assert layer.in_shape is not None and layer.in_channels is not None
    shape = (layer.in_channels, *layer.in_shape)
    gram64, dim = gram_operator(layer, weight, autograd=not fast, channels_last=fast)
    # the operator the iteration runs on: float32 on the fast path (certified on gram64)
    gram = gram_operator(layer, weight, torch.float32, channels_last=True)[0] if fast else gram64
    # operators as small as the dense Gram matrix's (reached only by calling this directly)
    # get the 16-vector subspace iteration: a Krylov basis would be near their size
    block = KRYLOV_BLOCK if fast and dim > DENSE_DIM else 16
    if fast:
        # the previous checkpoint's Ritz block but its last vector, and the symbol's best wave: a warm start alone
        # can miss a top that moved to other frequencies between checkpoints and stop on the
        # old one (the ResNet-18 stem, blocks of 4 and 16 alike: 2e-3 low at 1 checkpoint of 10)
        fresh = symbol_start(layer, weight, block if warm is None else 1, symbol)
        if warm is None:
            warm = fresh
        elif fresh is not None:
            warm = torch.cat([warm[:, : block - 1].to(fresh), fresh], dim=1)
        if warm is not None:
            warm = _to_channels_last(warm, shape)
    try:
        top = operator_top_singular(
            gram,
            dim,
            warm,
            tol=tol,
            dtype=torch.float32 if fast else torch.float64,
            device=weight.device,
            block_size=block,
            max_iter=1000,
            krylov_depth=KRYLOV_DEPTH if fast else 0,
            apply_gram64=gram64 if fast else None,
        )
    except ArithmeticError as exc:
        raise MeasureError(f"layer {layer.name!r}: {exc}") from None
    assert top.block is not None
    return top.sigma, _from_channels_last(top.block, shape) if fast else top.block


def conv_norm(
    layer: LayerSpec,
    weight: torch.Tensor,
    warm: torch.Tensor | None = None,
    *,
    tol: float = CONV_TOL,
    symbol: dict[str, torch.Tensor] | None = None,
) -> tuple[float, torch.Tensor | None]:
    """(sigma_1 of the conv operator on its input shape, warm-start block for the next checkpoint),
    by the first method of the module docstring that applies (only the iteration has a block;
    ``symbol`` keeps its symbol start's state, see :func:`symbol_start`)."""
    if layer.in_shape is None or layer.in_channels is None:
        raise MeasureError(
            f"layer {layer.name!r}: the conv operator norm needs in_shape and in_channels in the model spec"
        )
    if layer.padding_mode == "circular" and all(s == 1 for s in layer.stride):
        return circular_conv_norm(weight, layer.in_shape, layer.dilation, layer.groups), None
    conv_forward(layer, weight)  # refuses an unsupported padding mode before any method runs
    closed = disjoint_conv_norm(layer, weight)
    if closed is not None:
        return closed, None
    if layer.in_channels * prod(layer.in_shape) <= DENSE_DIM:
        return dense_conv_norm(layer, weight), None
    return iterative_conv_norm(layer, weight, warm, tol=tol, symbol=symbol)


def conv_operator_norms(view: Any, state: dict[str, Any], *, fold_bn: bool, tol: float) -> dict[str, float]:
    """Operator norm of every conv layer of ``view``, by layer name (cached in ``view.cache``).

    On the CPU with n > 1 workers (:func:`normdyn.core.threads.workers`: torch's intra-op threads,
    or analyze's budget beside its reader), the layers go to n worker threads of one
    intra-op thread each, the longest first (by the previous checkpoint's times), instead of one
    after another with n threads per operation: the iteration's operations are small (a conv on
    4 vectors, products with a 4-row block), whose n-thread speedup is well below n. Every layer's
    arithmetic is the same wherever it runs (its own warm start and symbol state, one thread), so
    the values do not depend on the schedule; the first layer that fails (in model order) raises."""
    key = ("conv_operator_norms", fold_bn, tol)
    if key in view.cache:
        return view.cache[key]
    warm: dict[str, torch.Tensor] = state.setdefault("warm_conv", {})
    symbols: dict[str, dict[str, torch.Tensor]] = state.setdefault("symbol_conv", {})
    seconds: dict[str, float] = state.setdefault("seconds_conv", {})
    jobs = []
    for layer in view.layers:
        if layer.kind in _CONV:
            weight, _ = view.folded(layer, fold_bn)
            jobs.append((layer, weight.to(view.device), warm.get(layer.name), symbols.setdefault(layer.name, {})))

    def work(
        job: tuple[LayerSpec, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]],
    ) -> tuple[float, torch.Tensor | None, float]:
        layer, weight, start, symbol = job
        t0 = time.perf_counter()
        sigma, block = conv_norm(layer, weight, start, tol=tol, symbol=symbol)
        return sigma, block, time.perf_counter() - t0

    def attempt(
        job: tuple[LayerSpec, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]],
    ) -> tuple[float, torch.Tensor | None, float] | Exception:
        try:
            return work(job)
        except Exception as exc:  # raised below in model order, not in the order of the schedule
            return exc

    workers = threads.workers()
    if workers > 1 and len(jobs) > 1 and torch.device(view.device).type == "cpu":
        order = sorted(jobs, key=lambda job: -seconds.get(job[0].name, float("inf")))
        done = dict(zip((job[0].name for job in order), threads.map_ordered(attempt, order, workers)))
        results = []
        for job in jobs:
            got = done[job[0].name]
            if isinstance(got, Exception):
                raise got
            results.append(got)
    else:  # one layer, one worker or a GPU: in this thread with its own torch threads
        results = [work(job) for job in jobs]
    out = {}
    for (layer, *_), (sigma, block, dt) in zip(jobs, results):
        if block is not None:
            warm[layer.name] = block
        seconds[layer.name] = dt
        out[layer.name] = sigma
    view.cache[key] = out
    return out


class ConvOperatorNorm:
    """Exact operator norm of each conv layer on its real input shape, one value per layer:

    ||conv_i||_op = max_{x != 0} ||conv_i(x)||_2 / ||x||_2,  x of shape (C_in, *in_shape),

    with the layer's stride, padding (zeros or circular), dilation and groups;
    stored as ``conv_operator_norm.LAYER``, computed as the module docstring
    says (FFT, closed form for disjoint receptive fields, dense Gram matrix,
    or iteration). Params: fold_bn (True), tol (1e-6, the bound on the
    relative error of sigma_1^2 where the iteration is used).
    Version 2: exact for disjoint receptive fields (the ViT patch embedding,
    where version 1 stored NaN) and for small inputs. Version 3: every
    checkpoint's iteration starts from the kernel's symbol as well as from the
    previous checkpoint's block; a warm start alone could stop on a top that
    had moved to other frequencies (2e-3 low on a ResNet-18 stem at one
    checkpoint of ten), so version 2's values may be off by more than tol there.
    """

    name = "conv_operator_norm"
    version = "3"
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
    Version 3: the conv norms of conv_operator_norm version 3.
    """

    name = "spectral_complexity_op"
    version = "3"
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
