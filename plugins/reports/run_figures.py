"""Report sections drawn from the runs alone: learning curves and lambda against epoch (log time axis).

They need no fit, so they render even when the fit failed. Seeds of one P
are put on the union of their logged epochs (linear interpolation in log
epoch, nothing extrapolated) and shown as a mean line with a min-max band.
Epoch 0 (the initial weights) cannot sit on a log axis and is left out of
the figures; it stays in ``learning_curves.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normdyn.core.hookspecs import Register, hookimpl
from normdyn.plugins.reports.figure_basics import new_axes, seed_band

__all__ = ["LearningCurves", "LambdaVsEpoch", "seeds_on_common_epochs"]


def seeds_on_common_epochs(
    epochs: Sequence[np.ndarray], values: Sequence[np.ndarray], log_values: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, min, max) over seeds on the union of their positive epochs.

    Each seed is interpolated linearly in log epoch (and in log value when
    ``log_values``), NaN outside its own epochs or where its value is NaN.
    """
    grid = np.unique(np.concatenate([e[e > 0] for e in epochs]))
    rows = []
    for e, v in zip(epochs, values):
        ok = (e > 0) & np.isfinite(v) & ((v > 0) if log_values else True)
        if ok.sum() == 0:
            rows.append(np.full(grid.size, np.nan))
            continue
        y = np.log10(v[ok]) if log_values else v[ok]
        rows.append(np.interp(np.log10(grid), np.log10(e[ok]), y, left=np.nan, right=np.nan))
    mean, lo, hi = seed_band(np.array(rows))
    if log_values:
        mean, lo, hi = 10.0**mean, 10.0**lo, 10.0**hi
    return grid, mean, lo, hi


def _draw(ax: Any, context: Any, column: str, log_values: bool, style: str = "-", label: bool = True) -> None:
    for p in context.P_values:
        runs = context.runs_of(p)
        values = [r.lam if column == "lambda" else r.metrics[column] for r in runs]
        grid, mean, lo, hi = seeds_on_common_epochs([r.epoch for r in runs], values, log_values)
        if not np.isfinite(mean).any():
            continue
        ax.fill_between(grid, lo, hi, color=context.color(p), alpha=0.15, linewidth=0)
        ax.plot(grid, mean, style, color=context.color(p), label=f"P={p}" if label else None)
    ax.set_xscale("log")


class LearningCurves:
    """Figure (5): test and train error and loss against epoch, mean over seeds per P; plus learning_curves.csv."""

    name = "learning_curves"
    title = "Learning curves"
    order = 60

    def render(self, context: Any, out: Any) -> None:
        """Draw error (test solid, train dashed) and loss panels; write every run's checkpoint rows."""
        fig, (ax_err, ax_loss) = new_axes(2)
        _draw(ax_err, context, "test_error", log_values=False)
        _draw(ax_err, context, "train_error", log_values=False, style="--", label=False)
        ax_err.set(xlabel="epoch", ylabel="error (test solid, train dashed)")
        ax_err.legend(fontsize="small", ncol=2)
        _draw(ax_loss, context, "test_loss", log_values=True)
        _draw(ax_loss, context, "train_loss", log_values=True, style="--", label=False)
        ax_loss.set(xlabel="epoch", ylabel="loss (test solid, train dashed)", yscale="log")
        out.figure(
            fig,
            "learning-curves",
            "Error and loss against epoch (log axis), mean over seeds per P; band: range over seeds.",
        )
        headers = [
            "run",
            "P",
            "seed",
            "step",
            "epoch",
            "train_error",
            "test_error",
            "train_loss",
            "test_loss",
            f"lambda_{context.measure}",
        ]
        rows = [
            [
                r.run_id,
                r.P,
                r.seed,
                int(r.step[i]),
                float(r.epoch[i]),
                *(float(r.metrics[c][i]) for c in ("train_error", "test_error", "train_loss", "test_loss")),
                float(r.lam[i]),
            ]
            for r in context.runs
            for i in range(len(r.step))
        ]
        out.table("learning_curves", headers, rows, "Every logged checkpoint of every run", show=False)


class LambdaVsEpoch:
    """Figure (6): lambda against epoch (log-log), mean of log lambda over seeds per P."""

    name = "lambda_vs_epoch"
    title = "Norm growth: lambda against epoch"
    order = 70

    def render(self, context: Any, out: Any) -> None:
        """Draw the growth of the measure during training."""
        if not any(np.isfinite(r.lam).any() for r in context.runs):
            return
        fig, ax = new_axes()
        _draw(ax, context, "lambda", log_values=True)
        ax.set(xlabel="epoch", ylabel=f"lambda ({context.measure})", yscale="log")
        ax.legend(fontsize="small", ncol=2)
        out.figure(
            fig,
            "lambda-vs-epoch",
            "The complexity measure during training (geometric mean over seeds, band: range over seeds).",
        )


@hookimpl
def register_report_sections(register: Register) -> None:
    """Register the learning-curve and lambda-against-epoch figures."""
    register(LearningCurves())
    register(LambdaVsEpoch())
