"""Report sections drawn from the fit: test error against lambda, the law-1 collapse, lambda*(P), eps*(P).

Each section reads ``context.fit`` (a FitResult, see docs/fitting.md) and
does nothing when the fit failed (the report then shows the fit's error).
Figures are matplotlib ``Figure`` objects (no pyplot state), one colour per P
from ``context.color``; ``out.figure`` saves them as PNG and SVG.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normdyn.core.hookspecs import Register, hookimpl
from normdyn.plugins.reports.figure_basics import new_axes, seed_band, value_pm

__all__ = ["ErrorVsLambda", "Collapse", "LambdaStar", "EpsStar"]


class ErrorVsLambda:
    """Figure (1): mean test error against lambda for every P (log-log), band = range over seeds; plus curves.csv."""

    name = "error_vs_lambda"
    title = "Test error against lambda"
    order = 20

    def render(self, context: Any, out: Any) -> None:
        """Draw the figure and write the aggregated curves (one row per P and grid point)."""
        fit = context.fit
        if fit is None:
            return
        curves, grid = fit.curves, 10.0**fit.curves.log10_grid
        fig, ax = new_axes()
        rows: list[list[Any]] = []
        for i, p in enumerate(curves.P.tolist()):
            mean = curves.mean_error[i]
            lo, hi = mean, mean
            if fit.seed_grid is not None:
                _, lo, hi = seed_band(fit.seed_grid.errors[i])
                ax.fill_between(grid, lo, hi, color=context.color(p), alpha=0.2, linewidth=0)
            ax.plot(grid, mean, color=context.color(p), label=f"P={p}")
            star = 10.0 ** curves.log10_lambda_star_grid[i]
            ax.plot([star], [curves.eps_star[i]], "o", color=context.color(p), markersize=4)
            n = None if curves.n_seeds is None else curves.n_seeds[i]
            rows += [
                [p, float(g), float(m), float(a), float(b), None if n is None else int(n[j])]
                for j, (g, m, a, b) in enumerate(zip(grid, mean, lo, hi))
                if np.isfinite(m)
            ]
        ax.set(xscale="log", yscale="log", xlabel=f"lambda ({context.measure})", ylabel="test error")
        ax.legend(fontsize="small", ncol=2)
        out.figure(
            fig,
            "error-vs-lambda",
            "Mean test error over seeds against lambda, per P; band: range over "
            "seeds; dot: the minimum (lambda*, eps*) of the mean curve.",
        )
        out.table(
            "curves",
            ["P", "lambda", "mean_test_error", "min_test_error", "max_test_error", "n_seeds"],
            rows,
            "Aggregated curves on the common lambda grid",
            show=False,
        )


class Collapse:
    """Figure (2): eps/eps* against lambda/lambda* for the law-1 P, with the fitted power law over its window."""

    name = "collapse"
    title = "Law 1: early-regime collapse"
    order = 30

    def render(self, context: Any, out: Any) -> None:
        """Draw every law-1 P's normalised mean curve, the window, and k1 (lambda/lambda*)^(-gamma1)."""
        fit = context.fit
        if fit is None:
            return
        law1 = fit.fits.law1
        lo, hi = fit.window
        fig, ax = new_axes()
        ax.axvspan(lo, hi, color="0.85", alpha=0.6, linewidth=0, label="fit window")
        for p, lx, ly, inside in zip(law1.P_.tolist(), law1.log10_x_, law1.log10_y_, law1.in_window_):
            ok = np.isfinite(ly)
            ax.plot(10.0 ** lx[ok], 10.0 ** ly[ok], color=context.color(int(p)), alpha=0.5, linewidth=1)
            ax.plot(
                10.0 ** lx[inside],
                10.0 ** ly[inside],
                "o",
                color=context.color(int(p)),
                markersize=3,
                label=f"P={int(p)}",
            )
        x = np.logspace(np.log10(lo), np.log10(hi), 50)
        ax.plot(
            x,
            law1.predict(x),
            "k--",
            linewidth=1.5,
            label=f"{law1.k1_:.3g} x^(-{value_pm(law1.gamma1_, law1.gamma1_err_)})",
        )
        ax.set(xscale="log", yscale="log", xlabel="lambda / lambda*", ylabel="eps / eps*")
        ax.legend(fontsize="small", ncol=2)
        out.figure(
            fig,
            "collapse",
            f"Mean curves normalised by their minimum; points: inside the window "
            f"[{lo:.3g}, {hi:.3g}]; dashed: the law-1 fit (gamma1 = {law1.gamma1_:.3f}).",
        )


class LambdaStar:
    """Figure (3): lambda*(P) with the law-2 fit k2 P^gamma2."""

    name = "lambda_star"
    title = "Law 2: lambda*(P)"
    order = 40

    def render(self, context: Any, out: Any) -> None:
        """Draw lambda* per P (the seeds' values faintly) and the fitted power law over the law-2 P."""
        fit = context.fit
        if fit is None:
            return
        law2, curves = fit.fits.law2, fit.curves
        fig, ax = new_axes()
        if fit.seed_grid is not None:
            for p, at_min in zip(curves.P.tolist(), fit.seed_grid.log10_lambda_at_min):
                ax.plot([p] * len(at_min), 10.0**at_min, "x", color=context.color(p), alpha=0.6)
        ax.plot(curves.P, 10.0**curves.log10_lambda_star, "ko", label=f"lambda* ({curves.lambda_star_source})")
        P = np.logspace(np.log10(law2.P_.min()), np.log10(law2.P_.max()), 50)
        ax.plot(
            P,
            10.0 ** law2.predict_log10(P),
            "k--",
            label=f"{law2.k2_:.3g} P^({value_pm(law2.gamma2_, law2.gamma2_err_)})",
        )
        ax.set(xscale="log", yscale="log", xlabel="P (training samples)", ylabel=f"lambda* ({context.measure})")
        ax.legend(fontsize="small")
        out.figure(
            fig,
            "lambda-star",
            "lambda at the minimal test error against P; crosses: single seeds; "
            f"dashed: the law-2 fit (gamma2 = {law2.gamma2_:.3f}).",
        )


class EpsStar:
    """Figure (4): eps*(P) measured against the predicted A P^(-gamma1 gamma2) and the direct fit."""

    name = "eps_star"
    title = "Combined law: eps*(P)"
    order = 50

    def render(self, context: Any, out: Any) -> None:
        """Draw the measured eps*, the combined law's prediction and the direct power-law fit."""
        fit = context.fit
        if fit is None:
            return
        f, curves = fit.fits, fit.curves
        P = np.logspace(np.log10(curves.P.min()), np.log10(curves.P.max()), 50)
        fig, ax = new_axes()
        ax.plot(curves.P, curves.eps_star, "ko", label="eps* measured")
        ax.plot(
            P,
            fit.predicted_eps_star(P),
            "C3-",
            label=f"predicted P^(-gamma1 gamma2), gamma_pred = {value_pm(f.combined.gamma_pred, f.combined.sigma)}",
        )
        ax.plot(
            P,
            f.eps_star.predict(P),
            "k:",
            label=f"direct fit, gamma_meas = {value_pm(f.eps_star.gamma_meas_, f.eps_star.gamma_meas_err_)}",
        )
        ax.set(xscale="log", yscale="log", xlabel="P (training samples)", ylabel="eps* (minimal mean test error)")
        ax.legend(fontsize="small")
        out.figure(
            fig,
            "eps-star",
            f"Minimal mean test error against P: measured, predicted from the two laws, "
            f"and fitted directly (z = {f.combined.z:.2f}).",
        )


@hookimpl
def register_report_sections(register: Register) -> None:
    """Register the four fit figures."""
    register(ErrorVsLambda())
    register(Collapse())
    register(LambdaStar())
    register(EpsStar())
