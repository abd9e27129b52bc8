"""Report sections of the solvable model: the perceptron's runs next to their N -> infinity theory.

They render only when the report's context carries a theory
(``context.theory``: the runs are ``perceptron`` models on ``teacher`` data
measured by ``perceptron_lambda``, see normdyn.analyzers.perceptron.analysis),
so ``normdyn report`` on any store of perceptron runs shows them, and every
other report is unchanged. alpha = P / N throughout.

- a table per alpha: lambda* and eps* of the simulation and of the fixed-norm
  theory, the Hebb, Gibbs, Bayes-optimal and maximal-stability errors; and the
  exponents of the simulation, of the theory curves under the same fit, and
  their asymptotic values (gamma1 = 1/2, gamma2 = 1);
- eps(lambda) per alpha with the fixed-norm theory dashed;
- the law-1 collapse with the theory's normalised curves;
- lambda*(alpha), simulated and theoretical, with the law-2 fit;
- eps*(alpha) against the classical learning curves.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from normdyn.core.hookspecs import Register, hookimpl
from normdyn.plugins.reports.figure_basics import new_axes, value_pm

__all__ = ["TheoryTable", "TheoryErrorVsLambda", "TheoryCollapse", "TheoryLambdaStar", "TheoryEpsStar"]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


def _nearest(alphas: np.ndarray, alpha: float) -> int:
    return int(np.argmin(np.abs(alphas - alpha)))


class TheoryTable:
    """The per-alpha comparison with the theory, and the three kinds of exponents side by side."""

    name = "perceptron_theory_table"
    title = "Perceptron: simulation and theory"
    order = 12

    def render(self, context: Any, out: Any) -> None:
        """Write theory.csv (per alpha), theory-exponents.csv and theory.json (both, as numbers)."""
        th, fit = context.theory, context.fit
        if th is None:
            return
        c = th.curves
        sim: dict[int, tuple[float, float]] = {}
        if fit is not None:
            sim = {
                int(P): (float(10.0**ls), float(es))
                for P, ls, es in zip(fit.curves.P, fit.curves.log10_lambda_star, fit.curves.eps_star)
            }
        rows = []
        for i, alpha in enumerate(c.alphas.tolist()):
            P = int(round(alpha * th.N))
            lam_sim, eps_sim = sim.get(P, (None, None))
            rows.append(
                [
                    alpha,
                    P,
                    lam_sim,
                    c.optimum[i].lam,
                    eps_sim,
                    c.optimum[i].eps,
                    float(c.eps_hebb[i]),
                    float(c.eps_gibbs[i]),
                    float(c.eps_bayes[i]),
                    float(c.eps_max_stability[i]),
                ]
            )
        out.table(
            "theory",
            [
                "alpha",
                "P",
                "lambda_star_sim",
                "lambda_star_theory",
                "eps_star_sim",
                "eps_star_theory",
                "eps_hebb",
                "eps_gibbs",
                "eps_bayes",
                "eps_max_stability",
            ],
            rows,
            f"Per load alpha = P/N (N = {th.N}): the simulation's minimum (seed mean) and the fixed-norm "
            "theory's, with the classical learning curves (N -> infinity).",
        )
        law1 = None if fit is None else fit.fits.law1
        law2 = None if fit is None else fit.fits.law2
        same1 = None if th.fit is None else th.fit.fits.law1
        same2 = None if th.fit is None else th.fit.fits.law2
        exponents = [
            [
                "gamma1",
                "-" if law1 is None else value_pm(law1.gamma1_, law1.gamma1_err_),
                "-" if same1 is None else value_pm(same1.gamma1_, same1.gamma1_err_),
                "1/2",
            ],
            [
                "gamma2",
                "-" if law2 is None else value_pm(law2.gamma2_, law2.gamma2_err_),
                "-" if same2 is None else value_pm(same2.gamma2_, same2.gamma2_err_),
                "1",
            ],
        ]
        same_fit = {
            "gamma1": None if same1 is None else same1.gamma1_,
            "gamma1_err": None if same1 is None else same1.gamma1_err_,
            "gamma2": None if same2 is None else same2.gamma2_,
            "gamma2_err": None if same2 is None else same2.gamma2_err_,
            "error": th.fit_error,
        }
        doc = {"N": th.N, **c.to_json(), "same_fit": same_fit}
        out.file("theory.json", (json.dumps(doc, indent=2, allow_nan=False, default=_plain) + "\n").encode("utf-8"))
        out.table(
            "theory-exponents",
            ["exponent", "simulation", "theory curves, same fit", "theory, asymptotic"],
            exponents,
            "The exponents of the simulation, of the theory's curves fitted with the same fitters and window, "
            "and their asymptotic values" + (f" (theory fit: {th.fit_error})" if th.fit_error else ""),
        )


class _Overlay:
    """A figure section: draws only when the context has both the theory and the simulation's fit."""

    def render(self, context: Any, out: Any) -> None:
        """Draw the figure (nothing without a theory or a fit)."""
        if context.theory is not None and context.fit is not None:
            self.draw(context, context.theory, context.fit, out)

    def draw(self, context: Any, th: Any, fit: Any, out: Any) -> None:
        raise NotImplementedError


def _theory_at(th: Any, P: int) -> tuple[list[Any], Any]:
    """The theory's curve eps(lambda) and its optimum at the load of ``P`` samples."""
    j = _nearest(th.curves.alphas, P / th.N)
    return th.curves.curves[j], th.curves.optimum[j]


class TheoryErrorVsLambda(_Overlay):
    """eps(lambda) per alpha, the simulation's seed mean solid and the fixed-norm theory dashed."""

    name = "perceptron_error_vs_lambda"
    title = "Perceptron: test error against the norm, with the fixed-norm theory"
    order = 22

    def draw(self, context: Any, th: Any, fit: Any, out: Any) -> None:
        """Draw every alpha's mean curve and its theory curve."""
        c = fit.curves
        fig, ax = new_axes()
        lam = 10.0**c.log10_grid
        for i, P in enumerate(c.P.tolist()):
            ax.plot(lam, c.mean_error[i], color=context.color(P), lw=1.8, label=f"alpha={P / th.N:g}")
            curve, _ = _theory_at(th, P)
            ax.plot([p.lam for p in curve], [p.eps for p in curve], color=context.color(P), ls="--", lw=1)
        ax.plot([], [], color="grey", ls="--", lw=1, label="fixed-norm theory")
        ax.set(xscale="log", yscale="log", xlabel="lambda = |w| / sqrt(N)", ylabel="test error eps")
        ax.legend(fontsize="small", ncol=2)
        out.figure(fig, "perceptron-eps-lambda", "Gradient descent (solid, seed mean) and fixed-norm theory (dashed).")


class TheoryCollapse(_Overlay):
    """The law-1 collapse eps/eps* against lambda/lambda*, simulation and theory, with the fitted law."""

    name = "perceptron_collapse"
    title = "Perceptron: law-1 collapse, simulation and theory"
    order = 32

    def draw(self, context: Any, th: Any, fit: Any, out: Any) -> None:
        """Draw the normalised mean and theory curves, the fit over its window and the slope 1/2."""
        c = fit.curves
        fig, ax = new_axes()
        for i, P in enumerate(c.P.tolist()):
            x = c.log10_grid - c.log10_lambda_star_grid[i]
            ax.plot(
                10.0**x, c.mean_error[i] / c.eps_star[i], color=context.color(P), lw=1.6, label=f"alpha={P / th.N:g}"
            )
            curve, opt = _theory_at(th, P)
            ax.plot(
                [p.lam / opt.lam for p in curve],
                [p.eps / opt.eps for p in curve],
                color=context.color(P),
                ls="--",
                lw=1,
            )
        lo, hi = fit.window
        xs = np.geomspace(lo, hi, 20)
        law1 = fit.fits.law1
        ax.plot(
            xs,
            law1.predict(xs),
            color="black",
            lw=2.2,
            label=f"fit: gamma1 = {value_pm(law1.gamma1_, law1.gamma1_err_)}",
        )
        ax.plot(xs, law1.k1_ * xs**-0.5, color="red", lw=1, ls=":", label="theory slope 1/2")
        ax.axvspan(lo, hi, color="grey", alpha=0.12)
        ax.set(xscale="log", yscale="log", xlabel="lambda / lambda*", ylabel="eps / eps*")
        ax.legend(fontsize="small")
        out.figure(
            fig,
            "perceptron-collapse",
            f"Solid: simulation, dashed: theory; black: the law-1 fit over [{lo:.3g}, {hi:.3g}]; "
            "dotted: the asymptotic slope 1/2.",
        )


class TheoryLambdaStar(_Overlay):
    """lambda*(alpha): the simulation's, the theory's, and the law-2 fit."""

    name = "perceptron_lambda_star"
    title = "Perceptron: law 2, lambda*(alpha)"
    order = 42

    def draw(self, context: Any, th: Any, fit: Any, out: Any) -> None:
        """Draw lambda* of the simulation and of the theory against alpha, and k2 (alpha N)^gamma2."""
        c, N = fit.curves, th.N
        alpha = c.P / N
        fig, ax = new_axes()
        ax.plot(alpha, 10.0**c.log10_lambda_star, "o", label=f"simulation ({c.lambda_star_source})")
        ax.plot(th.curves.alphas, [p.lam for p in th.curves.optimum], "s--", mfc="none", label="fixed-norm theory")
        law2 = fit.fits.law2
        a = np.geomspace(alpha.min(), alpha.max(), 20)
        ax.plot(
            a,
            10.0 ** law2.predict_log10(a * N),
            color="black",
            label=f"fit: gamma2 = {value_pm(law2.gamma2_, law2.gamma2_err_)} (theory 1)",
        )
        ax.set(xscale="log", yscale="log", xlabel="alpha = P / N", ylabel="lambda*")
        ax.legend(fontsize="small")
        out.figure(fig, "perceptron-lambda-star", "The norm at the minimal test error against the load.")


class TheoryEpsStar(_Overlay):
    """eps*(alpha) of the simulation and the theory against the classical learning curves."""

    name = "perceptron_eps_star"
    title = "Perceptron: eps*(alpha) and the classical learning curves"
    order = 52

    def draw(self, context: Any, th: Any, fit: Any, out: Any) -> None:
        """Draw eps* of the simulation and the theory with the Bayes, Gibbs, maximal-stability and Hebb errors."""
        c, t = fit.curves, th.curves
        fig, ax = new_axes()
        ax.plot(c.P / th.N, c.eps_star, "o", label="simulation eps* (min of the mean curve)")
        ax.plot(t.alphas, [p.eps for p in t.optimum], "s", mfc="none", label="fixed-norm theory eps*")
        for values, label, style in (
            (t.eps_bayes, "Bayes-optimal", "-"),
            (t.eps_gibbs, "Gibbs", "-."),
            (t.eps_max_stability, "maximal stability", "--"),
            (t.eps_hebb, "Hebb", ":"),
        ):
            ax.plot(t.alphas, values, style, lw=1.2, label=label)
        ax.set(xscale="log", yscale="log", xlabel="alpha = P / N", ylabel="test error")
        ax.legend(fontsize="small")
        out.figure(
            fig, "perceptron-eps-star", "The minimal test error against the load, with the N -> infinity curves."
        )


@hookimpl
def register_report_sections(register: Register) -> None:
    """Register the five theory sections (they render for perceptron runs only)."""
    register(TheoryTable())
    register(TheoryErrorVsLambda())
    register(TheoryCollapse())
    register(TheoryLambdaStar())
    register(TheoryEpsStar())
