"""Theory of the teacher-student perceptron: generalization error curves.

Set-up (docs/perceptron.md): teacher w* and inputs x in R^N, labels
y = sign(w*.x), P = alpha N samples. A student direction J (|J|^2 = N) has
teacher overlap R and test error eps = arccos(R)/pi. The stability of sample
mu is Delta_mu = y_mu J.x_mu / sqrt(N). All results are for N -> infinity.

- Hebb rule (J = sum_mu y_mu x_mu):  R^2 = 2 alpha / (2 alpha + pi)
  (Engel & Van den Broeck, "Statistical Mechanics of Learning", 2001, eq. 3.8).
- Gibbs learning (a random student of the version space), R from
  R / sqrt(1 - R) = (alpha / pi) int Dt exp(-R t^2 / 2) / H(-sqrt(R) t)
  (ibid. eq. 2.42); eps_Gibbs ~ 0.625 / alpha at large alpha.
- Bayes-optimal (the centre of mass of the version space): R_Bayes = sqrt(R_Gibbs)
  (ibid. section 3.6; Opper & Haussler 1991); eps_Bayes ~ 0.442 / alpha.
- Zero-temperature replica-symmetric minimiser of sum_mu V(Delta_mu) on the
  sphere (ibid. ch. 4; Gardner 1988). With the proximal map
  Delta(t) = argmin_D [V(D) + (D - t)^2 / (2 x)] and g(t) = 2 H(-R t / sqrt(1 - R^2)):
      (A)  1 - R^2 = alpha int Dt g(t) (Delta(t) - t)^2
      (B)  pi R sqrt(1 - R^2) = alpha int dt exp(-t^2 / (2 (1 - R^2))) (Delta(t) - t)
  (A) is stationarity in x, (B) in R after an integration by parts.
  * maximal stability (max margin): V = hard constraint Delta >= kappa, so
    Delta(t) = max(t, kappa), x drops out; (A), (B) fix R and kappa_max.
    eps_MS ~ 0.500 / alpha.
  * fixed norm lambda with the logistic loss of the simulation,
    V(Delta) = (1/lambda) log(1 + exp(-c lambda Delta)) with c = 1 (the
    paper writes c = 2, i.e. its lambda is half of ours; the prefactor 1/lambda
    does not move the minimiser). lambda -> 0 gives the Hebb rule, lambda -> inf
    the maximal-stability perceptron.

H(x) = int_x^inf Dt is the Gaussian tail, Dt = exp(-t^2/2) dt / sqrt(2 pi).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import integrate, optimize, special

from normdyn.core.errors import ConfigError

__all__ = [
    "eps_from_overlap",
    "eps_hebb",
    "overlap_gibbs",
    "eps_gibbs",
    "eps_bayes",
    "max_stability",
    "eps_max_stability",
    "FixedNormPoint",
    "fixed_norm_curve",
    "optimal_norm",
    "max_margin_direction",
]

_T_MAX = 10.0  # the Gaussian weight beyond |t| = 10 is below 1e-22


def _check_alpha(alpha: float) -> None:
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ConfigError(f"alpha={alpha}: the load P/N must be a positive finite number")


def eps_from_overlap(R: float | np.ndarray) -> float | np.ndarray:
    """Test error of a student with normalised teacher overlap R: eps = arccos(R) / pi."""
    return np.arccos(np.clip(R, -1.0, 1.0)) / np.pi


def eps_hebb(alpha: float | np.ndarray) -> float | np.ndarray:
    """Hebb-rule error eps = arccos(sqrt(2 alpha / (2 alpha + pi))) / pi (0.2856 at alpha = 1)."""
    a = np.asarray(alpha, dtype=np.float64)
    return eps_from_overlap(np.sqrt(2 * a / (2 * a + np.pi)))


def _gibbs_rhs(R: float, alpha: float) -> float:
    # log H(-sqrt(R) t) = log_ndtr(sqrt(R) t): stable for large negative t
    def f(t: float) -> float:
        return math.exp(-(1 + R) * t * t / 2 - special.log_ndtr(math.sqrt(R) * t)) / math.sqrt(2 * math.pi)

    val, _ = integrate.quad(f, -_T_MAX, _T_MAX, limit=200, points=[0.0])
    return alpha / math.pi * val


@lru_cache(maxsize=256)
def overlap_gibbs(alpha: float) -> float:
    """Teacher overlap R of Gibbs learning: root of R/sqrt(1-R) = (alpha/pi) int Dt e^{-R t^2/2} / H(-sqrt(R) t)."""
    _check_alpha(alpha)
    return optimize.brentq(lambda R: R / math.sqrt(1 - R) - _gibbs_rhs(R, alpha), 1e-12, 1 - 1e-13, xtol=1e-15)


def eps_gibbs(alpha: float) -> float:
    """Gibbs-learning error arccos(R_Gibbs)/pi (~0.625/alpha at large alpha)."""
    return float(eps_from_overlap(overlap_gibbs(float(alpha))))


def eps_bayes(alpha: float) -> float:
    """Bayes-optimal error arccos(sqrt(R_Gibbs))/pi (~0.442/alpha at large alpha)."""
    return float(eps_from_overlap(math.sqrt(overlap_gibbs(float(alpha)))))


def _ms_equations(kappa: float, R: float, alpha: float) -> tuple[float, float]:
    """Residuals of (A) and (B) for Delta(t) = max(t, kappa)."""
    s = math.sqrt(1 - R * R)

    def a_f(t: float) -> float:
        return math.exp(-t * t / 2) / math.sqrt(2 * math.pi) * 2 * special.ndtr(R * t / s) * (kappa - t) ** 2

    # g(t) switches over a width s around 0: integrate the pieces separately
    cuts = sorted({-_T_MAX, *(c for c in (-30 * s, 0.0) if -_T_MAX < c < kappa), kappa})
    a_int = sum(integrate.quad(a_f, lo, hi, limit=200, epsabs=1e-14, epsrel=1e-10)[0] for lo, hi in zip(cuts, cuts[1:]))
    # int_{-inf}^{kappa} (kappa - t) e^{-t^2/(2 s^2)} dt in closed form
    b_int = (
        s
        * math.sqrt(2 * math.pi)
        * (kappa * special.ndtr(kappa / s) + s * math.exp(-(kappa**2) / (2 * s * s)) / math.sqrt(2 * math.pi))
    )
    return alpha * a_int - (1 - R * R), alpha * b_int - math.pi * R * s


@lru_cache(maxsize=256)
def max_stability(alpha: float) -> tuple[float, float]:
    """(R, kappa) of the maximally stable perceptron at load alpha (equations (A), (B))."""
    _check_alpha(alpha)

    def kappa_of(R: float) -> float:  # (B) is increasing in kappa: one root
        return optimize.brentq(lambda k: _ms_equations(k, R, alpha)[1], -40.0, 40.0, xtol=1e-14)

    R = optimize.brentq(lambda r: _ms_equations(kappa_of(r), r, alpha)[0], 1e-9, 1 - 1e-12, xtol=1e-14)
    return R, kappa_of(R)


def eps_max_stability(alpha: float) -> float:
    """Error of the maximal-stability (max-margin) perceptron (~0.500/alpha at large alpha)."""
    return float(eps_from_overlap(max_stability(float(alpha))[0]))


# ----------------------------------------------------------- fixed-norm curve
def _t_grid(alpha: float) -> np.ndarray:
    # g(t) switches over a width sqrt(1-R^2) around t = 0; R stays below the
    # Bayes-optimal overlap, so a grid fixed per alpha resolves every solution
    # (and the residuals stay smooth in R, which the root finder needs)
    s = math.sin(math.pi * eps_bayes(alpha))
    h = min(0.01, s / 25)
    n = int(2 * _T_MAX / h) | 1
    return np.linspace(-_T_MAX, _T_MAX, n)


def _prox_logistic(t: np.ndarray, x: float, lam: float) -> np.ndarray:
    """Delta(t) = argmin_D (1/lam) log(1 + e^{-lam D}) + (D - t)^2/(2x): root of D - t - x sigma(-lam D).

    The root lies in [t, t + x]; since x sigma(-lam D) < 1 once D >= log(1 + x)/lam,
    it also lies below max(t, 0) + 1 + log(1 + x)/lam, which keeps the bracket
    short when x is huge (large lambda).
    """
    lo = t.copy()
    hi = t + np.minimum(x, np.maximum(0.0, -t) + 1.0 + math.log1p(x) / lam)
    # h(D) = D - t - x sigma(-lam D) is concave for D > 0 and convex for D < 0: Newton
    # started on the root's side of 0 with the right sign of h converges monotonically
    d = np.where(t > -x / 2, np.maximum(t, 0.0), np.minimum(t + x, 0.0))
    for _ in range(100):  # Newton inside the bracket, bisection should rounding push it out
        sig = special.expit(-lam * d)
        h = d - t - x * sig
        if np.max(np.abs(h)) <= 1e-13 * (1.0 + np.max(np.abs(d))):
            break
        up = h > 0
        hi = np.where(up, d, hi)
        lo = np.where(up, lo, d)
        newton = d - h / (1.0 + x * lam * sig * (1.0 - sig))
        d = np.where((newton >= lo) & (newton <= hi), newton, 0.5 * (lo + hi))
    return d


def _fixed_norm_residuals(z: np.ndarray, lam: float, alpha: float) -> np.ndarray:
    log_x, u = z
    x, R = math.exp(log_x), math.tanh(u)
    s2 = 1 - R * R
    t = _t_grid(alpha)
    shift = _prox_logistic(t, x, lam) - t
    g = 2 * special.ndtr(R * t / math.sqrt(s2))
    dt_gauss = np.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    a = alpha * integrate.trapezoid(dt_gauss * g * shift**2, t) / s2 - 1
    b = alpha * integrate.trapezoid(np.exp(-t * t / (2 * s2)) * shift, t) / (math.pi * R * math.sqrt(s2)) - 1
    return np.array([a, b])


@dataclass(frozen=True)
class FixedNormPoint:
    """The replica-symmetric minimiser at norm ``lam``: overlap ``R``, error ``eps``, response ``x``."""

    lam: float
    R: float
    eps: float
    x: float


def fixed_norm_curve(lams: np.ndarray | list[float], alpha: float) -> list[FixedNormPoint]:
    """eps(lambda; alpha) of the fixed-norm logistic-loss minimiser, for increasing ``lams``.

    Solves (A), (B) with the logistic proximal map by continuation in lambda,
    starting from the Hebb solution x = 2 R sqrt(pi/2) / alpha.
    """
    _check_alpha(alpha)
    lams = np.asarray(lams, dtype=np.float64)
    if lams.ndim != 1 or len(lams) == 0 or np.any(lams <= 0) or np.any(np.diff(lams) <= 0):
        raise ConfigError("fixed_norm_curve: lams must be a non-empty increasing list of positive norms")
    R0 = math.sqrt(2 * alpha / (2 * alpha + math.pi))
    point = FixedNormPoint(0.0, R0, float(eps_from_overlap(R0)), 2 * R0 * math.sqrt(math.pi / 2) / alpha)
    out = []
    for lam in lams:
        point = _solve_from(float(lam), point, alpha)
        out.append(point)
    return out


def optimal_norm(alpha: float, curve: list[FixedNormPoint] | None = None) -> FixedNormPoint:
    """The fixed-norm point of minimal error: lambda*(alpha) and eps*(alpha).

    ``curve`` is a traced curve to start from (default: 60 log-spaced norms
    from 0.05 alpha to 50 alpha); the minimum is refined by a bounded scalar
    search in log lambda between the neighbours of the best point.
    """
    if curve is None:
        curve = fixed_norm_curve(np.geomspace(0.05 * alpha, 50 * alpha, 60), alpha)
    i = int(np.argmin([p.eps for p in curve]))
    if i in (0, len(curve) - 1):
        raise ConfigError(
            f"alpha={alpha:g}: the fixed-norm error has no interior minimum on lambda in "
            f"[{curve[0].lam:g}, {curve[-1].lam:g}]; widen the range"
        )
    start = curve[i - 1]

    def point(log_lam: float) -> FixedNormPoint:
        return _solve_from(math.exp(log_lam), start, alpha)

    res = optimize.minimize_scalar(
        lambda z: point(z).eps,
        bounds=(math.log(curve[i - 1].lam), math.log(curve[i + 1].lam)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return point(float(res.x))


def _solve_from(lam: float, start: FixedNormPoint, alpha: float) -> FixedNormPoint:
    """Solve (A), (B) at ``lam`` from the neighbouring solution ``start``."""
    z0 = np.array([math.log(start.x), math.atanh(start.R)])
    sol = optimize.root(_fixed_norm_residuals, z0, args=(lam, alpha), method="hybr", options={"xtol": 1e-11})
    if not sol.success or np.max(np.abs(sol.fun)) > 1e-7:
        raise ConfigError(f"fixed-norm equations did not converge at lambda={lam:g}, alpha={alpha:g}: {sol.message}")
    R = math.tanh(sol.x[1])
    return FixedNormPoint(lam, R, float(eps_from_overlap(R)), math.exp(sol.x[0]))


def max_margin_direction(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The max-margin (maximal-stability) direction of one training set, unit norm.

    Solves the quadratic programme min |w|^2 subject to y_mu w.x_mu >= 1
    (SLSQP, started from the Hebb vector scaled to be feasible when it is);
    ``y`` holds +-1. Raises ConfigError if the set is not linearly separable
    or the solver fails.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or not np.all(np.abs(y) == 1):
        raise ConfigError("max_margin_direction: x must be (P, N) and y a length-P vector of +-1")
    a = y[:, None] * x
    w0 = a.sum(axis=0)
    m0 = (a @ w0).min()
    w0 = w0 / m0 if m0 > 0 else w0
    res = optimize.minimize(
        lambda w: w @ w,
        w0,
        jac=lambda w: 2 * w,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda w: a @ w - 1, "jac": lambda w: a}],
        options={"maxiter": 1000, "ftol": 1e-12},
    )
    if not res.success or (a @ res.x).min() < 1 - 1e-6:
        raise ConfigError(f"max-margin programme failed ({res.message}); is the training set separable?")
    return res.x / np.linalg.norm(res.x)
