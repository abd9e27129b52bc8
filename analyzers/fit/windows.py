"""The law-1 window: an automatic, deterministic choice and a sensitivity table.

Automatic choice (when no ``--window`` is given), with the selected law-1
fitter (``fitter``, a class of the law-1 contract) and its collapse (the fit
over a window holding every grid point):

1. Candidate windows [10^a, 10^b] of lambda/lambda* have edges on a 0.1-decade
   lattice (a, b integer multiples of ``step``), lie below the minimum
   (b <= -step, i.e. lambda/lambda* < 1), span at least ``min_width`` decades
   (half a decade), and hold at least 3 grid points of every law-1 P.
2. A window's score is the spread of its per-P slopes: the standard
   deviation of gamma1_P over the P (0 when there is a single P).
3. The windows whose score is within ``agree_tol`` (0.02 in gamma1) of the
   best score are acceptable; the widest acceptable one wins, ties go to
   the lower score, then to the window nearer the minimum (larger b).

The sensitivity table refits gamma1 with each edge moved by -0.2 .. +0.2
decades, so one can see how much the answer depends on the choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from normdyn.analyzers.fit.laws import Law1Fitter
from normdyn.core.errors import FitError

__all__ = ["WindowChoice", "choose_window", "window_sensitivity", "SENSITIVITY_SHIFTS"]

SENSITIVITY_SHIFTS = (-0.2, -0.1, 0.0, 0.1, 0.2)  # decades


@dataclass(frozen=True)
class WindowChoice:
    """The chosen window (lo, hi) in lambda/lambda*, its score and how many candidates were tried."""

    window: tuple[float, float]
    score: float
    candidates: int


def choose_window(
    log10_grid: np.ndarray,
    mean_error: np.ndarray,
    P: np.ndarray,
    *,
    fitter: Callable[..., Law1Fitter],
    step: float = 0.1,
    min_width: float = 0.5,
    agree_tol: float = 0.02,
) -> WindowChoice:
    """The widest window of lambda/lambda* < 1 whose per-P slopes agree best (module docstring)."""
    span = float(log10_grid[-1] - log10_grid[0])
    collapse = fitter(window=(10.0**-span, 10.0**span)).fit(log10_grid, mean_error, P)  # every grid point
    log10_x, log10_y = collapse.log10_x_, collapse.log10_y_
    lowest = float(np.max(np.min(np.where(np.isfinite(log10_y), log10_x, np.inf), axis=1)))  # every P has points there
    k_lo = math.ceil(lowest / step - 1e-9)
    k_hi = -1
    width_steps = math.ceil(min_width / step - 1e-9)
    scored: list[tuple[float, float, float, float]] = []  # (score, width, b, a), edges in log10
    tried = 0
    for a in range(k_lo, k_hi - width_steps + 1):
        for b in range(a + width_steps, k_hi + 1):
            tried += 1
            window = (10.0 ** (a * step), 10.0 ** (b * step))
            try:
                fit = fitter(window=window).fit(log10_grid, mean_error, P)
            except FitError:
                continue
            score = float(np.std(fit.gamma1_P_))
            scored.append((score, (b - a) * step, b * step, a * step))
    if not scored:
        raise FitError(
            f"no window of lambda/lambda* < 1 spanning {min_width:g} decades holds 3 grid points for "
            f"every P in {', '.join(str(int(p)) for p in P)}; pass --window LO HI or a finer --grid"
        )
    best = min(s[0] for s in scored)
    acceptable = [s for s in scored if s[0] <= best + agree_tol]
    score, _, hi, lo = max(acceptable, key=lambda s: (round(s[1], 9), -s[0], s[2]))
    return WindowChoice((10.0**lo, 10.0**hi), score, tried)


def window_sensitivity(
    log10_grid: np.ndarray,
    mean_error: np.ndarray,
    P: np.ndarray,
    window: tuple[float, float],
    *,
    fitter: Callable[..., Law1Fitter],
    shifts: tuple[float, ...] = SENSITIVITY_SHIFTS,
) -> list[dict[str, Any]]:
    """gamma1 for the window with each edge shifted by ``shifts`` decades; rows that cannot be fitted say why."""
    lo, hi = window
    rows: list[dict[str, Any]] = []
    for d_lo in shifts:
        for d_hi in shifts:
            w = (lo * 10.0**d_lo, hi * 10.0**d_hi)
            row: dict[str, Any] = {"lo": w[0], "hi": w[1], "shift_lo": d_lo, "shift_hi": d_hi}
            if w[1] <= w[0]:
                continue
            try:
                fit = fitter(window=w).fit(log10_grid, mean_error, P)
                row.update(gamma1=fit.gamma1_, gamma1_err=fit.gamma1_err_, spread=float(np.std(fit.gamma1_P_)))
            except FitError as exc:
                row.update(gamma1=None, gamma1_err=None, spread=None, error=str(exc))
            rows.append(row)
    return rows
