"""What every built-in report figure shares: a pyplot-free figure and the seed band.

Not a plugin itself (it registers nothing); the section modules import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normdyn.core.table import format_value_error

__all__ = ["new_axes", "seed_band", "value_pm"]


def new_axes(ncols: int = 1, width: float = 5.2, height: float = 3.8) -> tuple[Any, Any]:
    """A fresh figure with ``ncols`` axes side by side (no pyplot: nothing global to close)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    # Fixed margins instead of a layout engine: constrained layout measures every text extent and
    # doubled the rendering time; these margins (inches) hold log-axis tick labels and one-line axis labels.
    fig.subplots_adjust(left=0.95 / (width * ncols), right=0.98, bottom=0.55 / height, top=0.97, wspace=0.25)
    return fig, fig.subplots(1, ncols)


def seed_band(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over the seed ``rows`` (NaN-aware; NaN where no seed has a value)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1])
    finite = np.isfinite(rows)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, rows, 0.0).sum(axis=0) / count
    lo = np.where(count > 0, np.min(np.where(finite, rows, np.inf), axis=0), np.nan)
    hi = np.where(count > 0, np.max(np.where(finite, rows, -np.inf), axis=0), np.nan)
    return mean, lo, hi


def value_pm(value: Any, err: Any) -> str:
    """``value ± err`` for figure labels and tables (core.table's one formatter)."""
    return format_value_error(value, err, sep=" ± ")
