"""Figures and the HTML page of ``normdyn perceptron``: simulation and theory on the same axes.

Four figures (PNG and SVG each): the simulated eps(lambda) of every alpha with
the fixed-norm theory overlaid; the law-1 collapse eps/eps* against
lambda/lambda*; lambda*(alpha); eps*(alpha) against the Bayes-optimal,
Gibbs, maximal-stability and Hebb errors. ``index.html`` shows them with the
fitted exponents; ``summary.json`` holds every number shown.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from normdyn.analyzers.fit.pipeline import FitResult
from normdyn.analyzers.perceptron.theory import FixedNormPoint
from normdyn.analyzers.report.build import figure_style
from normdyn.core.atomic import write_bytes_atomic
from normdyn.core.table import format_value_error

__all__ = ["TheoryCurves", "write_report"]


@dataclass
class TheoryCurves:
    """The theory at each alpha of the experiment."""

    alphas: np.ndarray
    curves: list[list[FixedNormPoint]]  # eps(lambda; alpha) on a lambda grid, one list per alpha
    optimum: list[FixedNormPoint]  # lambda*(alpha), eps*(alpha)
    eps_hebb: np.ndarray
    eps_gibbs: np.ndarray
    eps_bayes: np.ndarray
    eps_max_stability: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """The per-alpha theory values (the curves are in the figures, not repeated here)."""
        return {
            "alpha": self.alphas.tolist(),
            "lambda_star": [p.lam for p in self.optimum],
            "eps_star": [p.eps for p in self.optimum],
            "eps_hebb": self.eps_hebb.tolist(),
            "eps_gibbs": self.eps_gibbs.tolist(),
            "eps_bayes": self.eps_bayes.tolist(),
            "eps_max_stability": self.eps_max_stability.tolist(),
        }


def _subplots(width: float, height: float) -> tuple[Figure, Any]:
    """A fresh figure and its axes, without pyplot (no global figure state to close)."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig: Figure, out: Path, stem: str) -> list[str]:
    """Write ``stem``.png and .svg atomically (a crash leaves the old file or the new one)."""
    names = [f"{stem}.png", f"{stem}.svg"]
    fig.tight_layout()
    for name in names:
        buf = io.BytesIO()
        fig.savefig(buf, format=name.rsplit(".", 1)[1], dpi=130)
        write_bytes_atomic(out / name, buf.getvalue())
    return names


def _fig_eps_lambda(fit: FitResult, theory: TheoryCurves, N: int, out: Path) -> list[str]:
    c = fit.curves
    colors = sns.color_palette("viridis", len(c.P))
    fig, ax = _subplots(6.4, 4.6)
    lam = 10.0**c.log10_grid
    for i, P in enumerate(c.P):
        ax.plot(lam, c.mean_error[i], color=colors[i], lw=1.8, label=f"alpha={P / N:g}")
        j = int(np.argmin(np.abs(theory.alphas - P / N)))
        ax.plot([p.lam for p in theory.curves[j]], [p.eps for p in theory.curves[j]], color=colors[i], ls="--", lw=1)
    ax.plot([], [], color="grey", ls="--", lw=1, label="fixed-norm theory")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="lambda = |w| / sqrt(N)",
        ylabel="test error eps",
        title="Gradient descent (solid, seed mean) and fixed-norm theory (dashed)",
    )
    ax.legend(fontsize=7)
    return _save(fig, out, "eps_lambda")


def _fig_collapse(fit: FitResult, theory: TheoryCurves, N: int, out: Path) -> list[str]:
    c = fit.curves
    colors = sns.color_palette("viridis", len(c.P))
    fig, ax = _subplots(6.4, 4.6)
    for i, P in enumerate(c.P):
        x = c.log10_grid - c.log10_lambda_star_grid[i]
        ax.plot(10.0**x, c.mean_error[i] / c.eps_star[i], color=colors[i], lw=1.6, label=f"alpha={P / N:g}")
        j = int(np.argmin(np.abs(theory.alphas - P / N)))
        opt = theory.optimum[j]
        ax.plot(
            [p.lam / opt.lam for p in theory.curves[j]],
            [p.eps / opt.eps for p in theory.curves[j]],
            color=colors[i],
            ls="--",
            lw=1,
        )
    lo, hi = fit.window
    xs = np.geomspace(lo, hi, 20)
    law1 = fit.fits.law1
    ax.plot(
        xs,
        law1.k1_ * xs ** (-law1.gamma1_),
        color="black",
        lw=2.2,
        label=f"fit: gamma1 = {format_value_error(law1.gamma1_, law1.gamma1_err_)}",
    )
    ax.plot(xs, law1.k1_ * xs**-0.5, color="red", lw=1, ls=":", label="theory slope 1/2")
    ax.axvspan(lo, hi, color="grey", alpha=0.12)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="lambda / lambda*",
        ylabel="eps / eps*",
        title="Law 1: collapse (solid: simulation, dashed: theory)",
    )
    ax.legend(fontsize=7)
    return _save(fig, out, "collapse")


def _fig_lambda_star(fit: FitResult, theory: TheoryCurves, N: int, out: Path) -> list[str]:
    c = fit.curves
    alpha = c.P / N
    fig, ax = _subplots(5.6, 4.2)
    ax.plot(alpha, 10.0**c.log10_lambda_star, "o", label="simulation (mean over seeds of argmin)")
    ax.plot(theory.alphas, [p.lam for p in theory.optimum], "s--", mfc="none", label="fixed-norm theory")
    law2 = fit.fits.law2
    a = np.geomspace(alpha.min(), alpha.max(), 20)
    ax.plot(
        a,
        law2.k2_ * (a * N) ** law2.gamma2_,
        color="black",
        label=f"fit: gamma2 = {format_value_error(law2.gamma2_, law2.gamma2_err_)} (theory 1)",
    )
    ax.set(xscale="log", yscale="log", xlabel="alpha = P / N", ylabel="lambda*", title="Law 2: lambda*(alpha)")
    ax.legend(fontsize=7)
    return _save(fig, out, "lambda_star")


def _fig_eps_star(fit: FitResult, theory: TheoryCurves, N: int, out: Path) -> list[str]:
    c = fit.curves
    fig, ax = _subplots(5.6, 4.2)
    ax.plot(c.P / N, c.eps_star, "o", label="simulation eps* (min of the mean curve)")
    ax.plot(theory.alphas, [p.eps for p in theory.optimum], "s", mfc="none", label="fixed-norm theory eps*")
    for values, name, style in (
        (theory.eps_bayes, "Bayes-optimal", "-"),
        (theory.eps_gibbs, "Gibbs", "-."),
        (theory.eps_max_stability, "maximal stability", "--"),
        (theory.eps_hebb, "Hebb", ":"),
    ):
        ax.plot(theory.alphas, values, style, lw=1.2, label=name)
    ax.set(xscale="log", yscale="log", xlabel="alpha = P / N", ylabel="test error", title="eps*(alpha)")
    ax.legend(fontsize=7)
    return _save(fig, out, "eps_star")


def write_report(out: str | Path, fit: FitResult, theory: TheoryCurves, *, N: int, extra: dict[str, Any]) -> Path:
    """Write the figures, ``summary.json`` and ``index.html`` into ``out``; return the index path.

    ``extra`` (timings, the experiment config, the theory fits) goes into
    summary.json and the page as it is.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(figure_style()):  # the report's look, applied locally: no global theme
        figures = {
            "Test error against the norm, with the fixed-norm theory": _fig_eps_lambda(fit, theory, N, out),
            "Law 1: the collapse": _fig_collapse(fit, theory, N, out),
            "Law 2: lambda*(alpha)": _fig_lambda_star(fit, theory, N, out),
            "eps*(alpha) and the classical learning curves": _fig_eps_star(fit, theory, N, out),
        }
    fit_json = fit.to_json()
    summary = {"fit": fit_json, "theory": theory.to_json(), **extra}
    write_bytes_atomic(out / "summary.json", json.dumps(summary, indent=2, default=_json_default).encode("utf-8"))

    def pm(key: str) -> str:
        return format_value_error(fit_json.get(key), fit_json.get(f"{key}_err"), sep=" &plusmn; ")

    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
        for k, v in (
            ("gamma1 (fit)", pm("gamma1")),
            ("gamma1 (theory)", "1/2"),
            ("gamma2 (fit)", pm("gamma2")),
            ("gamma2 (theory)", "1"),
            ("gamma_pred = gamma1 gamma2", pm("gamma_pred")),
            ("gamma_meas", pm("gamma_meas")),
            ("law-1 window (lambda/lambda*)", f"{fit.window[0]:.3g} .. {fit.window[1]:.3g}"),
        )
    )
    extra_rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in extra.items()
        if not isinstance(v, (dict, list))
    )
    body = "".join(
        f"<h2>{html.escape(title)}</h2><img src='{names[0]}' alt='{html.escape(title)}'>"
        f"<p><a href='{names[1]}'>SVG</a></p>"
        for title, names in figures.items()
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>normdyn perceptron</title>"
        f"<style>body{{font-family:sans-serif;max-width:900px;margin:auto}}td{{padding:2px 12px}}"
        f"img{{max-width:100%}}</style></head><body><h1>Teacher-student perceptron, N = {N}</h1>"
        f"<table>{rows}{extra_rows}</table>{body}<p>All numbers: <a href='summary.json'>summary.json</a>."
        f"</p></body></html>"
    )
    index = out / "index.html"
    write_bytes_atomic(index, page.encode("utf-8"))
    return index


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
