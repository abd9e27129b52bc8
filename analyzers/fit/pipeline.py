"""The fitting pipeline end to end: curves in, both dynamical laws and their check out.

Entry points: :func:`fit_store` (runs of a store, lambda from a stored
measure) and :func:`fit_curves` (per-seed curves, a :class:`SeedGrid`, or
mean curves from elsewhere). Both return a :class:`FitResult`, whose
:meth:`FitResult.to_json` is exactly what ``normdyn fit --json`` writes and
whose attributes hold what figures need (grid, mean curves, collapse,
lambda*, eps*, the predicted eps* curve). See docs/fitting.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normdyn.analyzers.fit.aggregate import MeanCurves, SeedCurve, SeedGrid, aggregate
from normdyn.analyzers.fit.bootstrap import bootstrap_exponents
from normdyn.analyzers.fit.laws import FitOptions, LawFits, check_methods, fit_laws, fitter_class, law_P_mask
from normdyn.analyzers.fit.store_curves import store_curves
from normdyn.analyzers.fit.windows import choose_window, window_sensitivity
from normdyn.core.errors import FitError
from normdyn.core.table import format_table, format_value_error

__all__ = ["FitOptions", "FitResult", "fit_curves", "fit_store"]


def _num(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class FitResult:
    """Everything one fit produced.

    ``curves`` are the mean curves of every P (``curves.log10_grid``,
    ``curves.mean_error``, ``curves.log10_lambda_star``, ``curves.eps_star``);
    ``fits`` the fitted law1/law2/eps_star fitters and their combination
    (the collapse is ``fits.law1.log10_x_``, ``log10_y_``, ``in_window_`` for the law-1 P);
    ``seed_grid`` the per-seed curves on the grid (None for mean-curve input).
    """

    curves: MeanCurves
    fits: LawFits
    window: tuple[float, float]
    window_auto: bool
    window_sensitivity: list[dict[str, Any]]
    options: FitOptions
    seed_grid: SeedGrid | None = None
    ci: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def law1_P(self) -> np.ndarray:
        """Mask of the P that law 1 used."""
        return law_P_mask(self.curves.P, self.options.law1_min_P, "--law1-min-P")

    @property
    def law2_P(self) -> np.ndarray:
        """Mask of the P that law 2 used."""
        return law_P_mask(self.curves.P, self.options.law2_min_P, "--law2-min-P")

    def predicted_eps_star(self, P: np.ndarray | None = None) -> np.ndarray:
        """The combined law's eps*(P) = A P^(-gamma1 gamma2), A fitted (at the fitted P by default)."""
        return self.fits.combined.predict(self.curves.P if P is None else P)

    def per_P(self) -> list[dict[str, Any]]:
        """One dict per P: P, lambda_star (law 2's), lambda_star_grid, eps_star, n_seeds, gamma1_P, ..."""
        c, law1 = self.curves, self.fits.law1
        in1, in2 = self.law1_P, self.law2_P
        g1 = dict(zip(law1.P_.tolist(), zip(law1.gamma1_P_.tolist(), law1.gamma1_err_P_.tolist())))
        pred = self.predicted_eps_star()
        rows = []
        for i, p in enumerate(c.P.tolist()):
            gamma, err = g1.get(p, (None, None)) if in1[i] else (None, None)
            rows.append(
                {
                    "P": int(p),
                    "lambda_star": _num(10.0 ** c.log10_lambda_star[i]),
                    "lambda_star_grid": _num(10.0 ** c.log10_lambda_star_grid[i]),
                    "eps_star": _num(c.eps_star[i]),
                    "eps_star_pred": _num(pred[i]),
                    "n_seeds": None if c.n_runs is None else int(c.n_runs[i]),
                    "gamma1_P": _num(gamma),
                    "gamma1_P_err": _num(err),
                    "in_law1": bool(in1[i]),
                    "in_law2": bool(in2[i]),
                }
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``normdyn fit --json`` writes (docs/fitting.md lists every key)."""
        f, P = self.fits, self.curves.P
        out: dict[str, Any] = {
            "gamma1": _num(f.law1.gamma1_),
            "gamma1_err": _num(f.law1.gamma1_err_),
            "k1": _num(f.law1.k1_),
            "gamma2": _num(f.law2.gamma2_),
            "gamma2_err": _num(f.law2.gamma2_err_),
            "k2": _num(f.law2.k2_),
            "gamma_pred": _num(f.combined.gamma_pred),
            "gamma_meas": _num(f.eps_star.gamma_meas_),
            "gamma_meas_err": _num(f.eps_star.gamma_meas_err_),
            "sigma": _num(f.combined.sigma),
            "z": _num(f.combined.z),
            "window": [_num(self.window[0]), _num(self.window[1])],
            "law1_min_P": int(P[self.law1_P].min()),
            "law2_min_P": int(P[self.law2_P].min()),
            "method": self.options.method,
            "law2_method": self.options.law2_method,
            "eps_star_method": self.options.eps_star_method,
            "window_auto": self.window_auto,
            "law2_offset": _num(f.law2.offset_) if self.options.law2_offset else None,
            "k_meas": _num(f.eps_star.k_meas_),
            "eps_star_pred_prefactor": _num(10.0**f.combined.log10_prefactor),
            "lambda_star_source": self.curves.lambda_star_source,
            "grid": [
                _num(self.curves.log10_grid[0]),
                _num(self.curves.log10_grid[-1]),
                int(self.curves.log10_grid.size),
            ],
            "dropped_checkpoints": None if self.seed_grid is None else self.seed_grid.dropped,
            "per_P": self.per_P(),
            "window_sensitivity": [
                {k: (_num(v) if isinstance(v, float) else v) for k, v in row.items()} for row in self.window_sensitivity
            ],
            "source": self.source,
            "notes": list(self.notes),
        }
        if self.ci is not None:
            out["ci"] = {k: v for k, v in self.ci.items() if k != "samples"}
        return out

    def format_text(self) -> str:
        """The readable summary ``normdyn fit`` prints."""
        j = self.to_json()

        def g(value: float | None, spec: str = ".4g") -> str:
            return "-" if value is None else format(value, spec)

        def pm(value: float | None, err: float | None) -> str:
            return format_value_error(value, err, ".4g", ".2g")

        how = "automatic" if self.window_auto else "given"
        lines = [
            f"law 1   gamma1     = {pm(j['gamma1'], j['gamma1_err'])}   k1 = {g(j['k1'])}   "
            f"({j['method']}; window {j['window'][0]:.4g}..{j['window'][1]:.4g} of lambda/lambda*, {how}; "
            f"P >= {j['law1_min_P']})",
            f"law 2   gamma2     = {pm(j['gamma2'], j['gamma2_err'])}   k2 = {g(j['k2'])}   "
            f"({j['law2_method']}; lambda* from {j['lambda_star_source']}; P >= {j['law2_min_P']})",
            f"direct  gamma_meas = {pm(j['gamma_meas'], j['gamma_meas_err'])}   ({j['eps_star_method']})",
            f"product gamma_pred = {pm(j['gamma_pred'], j['sigma'])}   z = {g(j['z'], '.3g')}",
        ]
        if self.ci is not None:
            ci = self.ci
            lines.append(
                f"bootstrap {ci['level']:.0%} intervals ({ci['n_boot']} replicates, {ci['n_failed']} failed): "
                + ", ".join(
                    f"{k} [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" for k in ("gamma1", "gamma2", "gamma_pred", "gamma_meas")
                )
            )
        headers = ["P", "lambda_star", "eps_star", "eps_star_pred", "n_seeds", "gamma1_P"]
        rows = [
            [
                r["P"],
                _cell(r["lambda_star"]),
                _cell(r["eps_star"]),
                _cell(r["eps_star_pred"]),
                "-" if r["n_seeds"] is None else r["n_seeds"],
                _cell(r["gamma1_P"]),
            ]
            for r in j["per_P"]
        ]
        lines += ["", format_table(headers, rows), "", "gamma1 with the window edges moved (decades):"]
        sens = [
            [
                f"{r['shift_lo']:+.1f}",
                f"{r['shift_hi']:+.1f}",
                r["lo"],
                r["hi"],
                _cell(r["gamma1"]),
                _cell(r["gamma1_err"]),
            ]
            for r in self.window_sensitivity
        ]
        lines.append(format_table(["d_lo", "d_hi", "lo", "hi", "gamma1", "gamma1_err"], sens))
        return "\n".join(lines)


def _cell(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _resolve_window(mean: MeanCurves, options: FitOptions) -> tuple[tuple[float, float], bool]:
    check_methods(options)  # here, or the window search would hide a bad name behind "no window"
    if options.window is not None:
        return (float(options.window[0]), float(options.window[1])), False
    m1 = law_P_mask(mean.P, options.law1_min_P, "--law1-min-P")
    fitter = fitter_class("law1", options.method)
    choice = choose_window(mean.log10_grid, mean.mean_error[m1], mean.P[m1], fitter=fitter)
    return choice.window, True


def fit_curves(
    curves: Sequence[SeedCurve] | SeedGrid | MeanCurves,
    *,
    options: FitOptions = FitOptions(),
    grid: tuple[float, float, int] | None = None,
    lambda_star: Mapping[int, float] | None = None,
    lambda_star_source: str = "lambda_star file",
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    ci_level: float = 0.95,
    progress: bool = False,
) -> FitResult:
    """Fit both laws on per-seed curves (aggregated on ``grid``, automatic if None) or on mean curves.

    ``lambda_star`` (P -> lambda*) replaces the law-2 lambda*. ``bootstrap``
    > 0 adds percentile intervals from that many seed resamples (per-seed
    curves only).
    """
    seed_grid: SeedGrid | None
    if isinstance(curves, MeanCurves):
        seed_grid, mean = None, curves
        if grid is not None:
            raise FitError("--grid applies to per-seed curves; mean curves come on their own grid")
    else:
        seed_grid = curves if isinstance(curves, SeedGrid) else aggregate(curves, grid)
        mean = seed_grid.mean()
    if lambda_star is not None:
        mean = mean.with_lambda_star(lambda_star, lambda_star_source)
    if np.unique(mean.P).size < 2:
        raise FitError(f"a single training-set size (P={int(mean.P[0])}); scaling laws need several P (at least 3)")
    window, auto = _resolve_window(mean, options)
    fits = fit_laws(mean, window, options)
    m1 = law_P_mask(mean.P, options.law1_min_P, "--law1-min-P")
    law1 = fitter_class("law1", options.method)
    sensitivity = window_sensitivity(mean.log10_grid, mean.mean_error[m1], mean.P[m1], window, fitter=law1)
    notes = []
    if seed_grid is not None and seed_grid.dropped:
        notes.append(
            f"{seed_grid.dropped} checkpoint(s) where lambda did not exceed all earlier values were left "
            "out of the interpolation (non-monotone lambda(t))"
        )
    ci = None
    if bootstrap:
        if seed_grid is None:
            raise FitError("--bootstrap resamples seeds: it needs per-seed curves (columns P,seed,lambda,test_error)")
        ci = bootstrap_exponents(
            seed_grid,
            window,
            options,
            n=bootstrap,
            seed=bootstrap_seed,
            level=ci_level,
            lambda_star=lambda_star,
            lambda_star_source=lambda_star_source,
            progress=progress,
        )
        if any(len(s) < 2 for s in seed_grid.seeds):
            notes.append("some P have a single seed: the bootstrap cannot see their seed-to-seed scatter")
    return FitResult(mean, fits, window, auto, sensitivity, options, seed_grid, ci, notes)


def fit_store(
    store: str | os.PathLike[str], measure: str, *, where: Mapping[str, str] | None = None, **kwargs: Any
) -> FitResult:
    """Fit the runs of ``store`` (one experiment, selected by ``where``) with lambda = ``measure``.

    Keyword arguments are those of :func:`fit_curves`; runs that cannot be
    used are skipped and named in ``result.notes``.
    """
    group, notes = store_curves(store, measure, where)
    result = fit_curves(group.curves, **kwargs)
    result.notes = notes + result.notes
    result.source = {"store": str(store), "measure": measure, "config": group.config}
    return result
