"""Bootstrap over seeds: resample seeds within each P, re-aggregate, refit.

Each replicate draws, for every P independently, as many seeds as that P
has, with replacement (numpy ``Generator.integers`` from a fixed seed), takes
the mean curves and the seed-mean lambda* of the drawn seeds, and refits all
laws with the same window and options as the point estimate (the window is
not re-chosen per replicate). A replicate whose fit fails (for instance a
window left with too few points) is counted in ``n_failed`` and left out.
Intervals are percentile intervals: the (1-level)/2 and (1+level)/2
quantiles of the replicate values (``numpy.percentile``, linear method).

scipy.stats.bootstrap resamples several samples independently too, but it
cannot leave failed replicates out, and it refuses a P with a single seed;
hence the explicit loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

from normdyn.analyzers.fit.aggregate import SeedGrid
from normdyn.analyzers.fit.laws import FitOptions, LawFits, fit_laws
from normdyn.core.errors import FitError

__all__ = ["BOOTSTRAP_EXPONENTS", "bootstrap_exponents"]

BOOTSTRAP_EXPONENTS: dict[str, Callable[[LawFits], float]] = {
    "gamma1": lambda f: f.law1.gamma1_,
    "gamma2": lambda f: f.law2.gamma2_,
    "gamma_pred": lambda f: f.combined.gamma_pred,
    "gamma_meas": lambda f: f.eps_star.gamma_meas_,
}


def bootstrap_exponents(
    grid: SeedGrid,
    window: tuple[float, float],
    options: FitOptions,
    *,
    n: int,
    seed: int = 0,
    level: float = 0.95,
    lambda_star: Mapping[int, float] | None = None,
    lambda_star_source: str = "",
    progress: bool = False,
) -> dict[str, Any]:
    """Percentile intervals of gamma1, gamma2, gamma_pred, gamma_meas from ``n`` seed resamples.

    Returns ``{"level", "n_boot", "n_failed", "seed", "method", NAME: [lo, hi], "samples": {NAME: array}}``.
    """
    if n < 2:
        raise FitError(f"--bootstrap {n}: use at least 2 replicates (hundreds for a 95% interval)")
    if not 0 < level < 1:
        raise FitError(f"confidence level {level:g}: must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in BOOTSTRAP_EXPONENTS}
    failed = 0
    for _ in tqdm(range(n), desc="bootstrap", disable=not progress, leave=False):
        pick = [rng.integers(0, len(s), len(s)) for s in grid.seeds]
        mean = grid.mean(pick)
        try:
            if lambda_star is not None:
                mean = mean.with_lambda_star(lambda_star, lambda_star_source)
            fits = fit_laws(mean, window, options)
        except FitError:
            failed += 1
            continue
        for name, get in BOOTSTRAP_EXPONENTS.items():
            values[name].append(float(get(fits)))
    if failed == n:
        raise FitError(f"every one of the {n} bootstrap replicates failed to fit; check the window and the data")
    q = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
    out: dict[str, Any] = {
        "level": level,
        "n_boot": n,
        "n_failed": failed,
        "seed": seed,
        "method": "percentile, seeds resampled within each P",
    }
    samples = {k: np.array(v) for k, v in values.items()}
    for name, arr in samples.items():
        out[name] = [float(x) for x in np.percentile(arr, q)]
    out["samples"] = samples
    return out
