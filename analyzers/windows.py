"""The law-1 window: an automatic, deterministic choice and a sensitivity table.

Automatic choice (when no ``--window`` is given):

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from normdyn.core import plugins
from normdyn.core.errors import FitError

__all__ = ["WindowChoice", "choose_window", "window_sensitivity", "SENSITIVITY_SHIFTS"]

SENSITIVITY_SHIFTS = (-0.2, -0.1, 0.0, 0.1, 0.2)  # decades


@dataclass(frozen=True)
class WindowChoice:
    """The chosen window (lo, hi) in lambda/lambda*, its score and how many candidates were tried."""

    window: tuple[float, float]
    score: float
    candidates: int


def _fit_law1(
    log10_grid: np.ndarray, mean_error: np.ndarray, P: np.ndarray, window: tuple[float, float], method: str
) -> Any:
    return plugins.get("fitters", "law1")(window=window, method=method).fit(log10_grid, mean_error, P)


def choose_window(
    log10_grid: np.ndarray,
    mean_error: np.ndarray,
    P: np.ndarray,
    *,
    method: str = "paper",
    step: float = 0.1,
    min_width: float = 0.5,
    agree_tol: float = 0.02,
) -> WindowChoice:
    """The widest window of lambda/lambda* < 1 whose per-P slopes agree best (module docstring)."""
    log10_x, log10_y = plugins.get("fitters", "law1").collapse(log10_grid, mean_error, P)
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
                fit = _fit_law1(log10_grid, mean_error, P, window, method)
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
    method: str = "paper",
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
                fit = _fit_law1(log10_grid, mean_error, P, w, method)
                row.update(gamma1=fit.gamma1_, gamma1_err=fit.gamma1_err_, spread=float(np.std(fit.gamma1_P_)))
            except FitError as exc:
                row.update(gamma1=None, gamma1_err=None, spread=None, error=str(exc))
            rows.append(row)
    return rows
