"""Theory of the teacher-student perceptron: classical values and limits of the fixed-norm curve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from normdyn.analyzers.perceptron import theory as th
from normdyn.core.errors import ConfigError


def test_hebb_known_value_and_formula() -> None:
    assert th.eps_hebb(1.0) == pytest.approx(0.2856, abs=1e-4)
    # independent form: R = sqrt(2a/(2a+pi)); large alpha eps ~ sqrt(pi/2)/(pi sqrt(alpha)) ~ 0.40/sqrt(alpha)
    assert th.eps_hebb(1e4) * math.sqrt(1e4) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-3)


def test_large_alpha_asymptotics() -> None:
    a = 1000.0
    assert th.eps_bayes(a) * a == pytest.approx(0.442, abs=0.001)
    assert th.eps_gibbs(a) * a == pytest.approx(0.625, abs=0.002)
    assert th.eps_max_stability(100.0) * 100.0 == pytest.approx(0.500, abs=0.001)
    assert th.eps_max_stability(a) * a == pytest.approx(0.500, abs=0.001)


def test_ordering_at_moderate_alpha() -> None:
    for a in (0.5, 2.0, 8.0):
        assert th.eps_bayes(a) < th.eps_max_stability(a) < th.eps_hebb(a)
        assert th.eps_bayes(a) < th.eps_gibbs(a)


def test_fixed_norm_curve_limits_and_optimum() -> None:
    a = 4.0
    curve = th.fixed_norm_curve([1e-3, 0.1, 1.0, 10.0, 400.0], a)
    assert curve[0].eps == pytest.approx(float(th.eps_hebb(a)), abs=2e-4)  # small norm: Hebb
    assert curve[-1].eps == pytest.approx(th.eps_max_stability(a), rel=0.01)  # large norm: max margin
    opt = th.optimal_norm(a)
    assert opt.eps < min(p.eps for p in curve)
    # logistic loss at its best norm is close to Bayes-optimal (and never below it)
    assert th.eps_bayes(a) <= opt.eps <= th.eps_bayes(a) * 1.01
    assert 1.0 < opt.lam / a < 3.0


def test_fixed_norm_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="increasing"):
        th.fixed_norm_curve([2.0, 1.0], 1.0)
    with pytest.raises(ConfigError, match="alpha=-1"):
        th.overlap_gibbs(-1.0)


def test_max_margin_direction_matches_known_geometry() -> None:
    # two points +-e1 labelled by sign: the max-margin direction is e1 whatever else
    x = np.array([[1.0, 0.3], [-1.0, 0.3], [2.0, -1.0]])
    y = np.array([1.0, -1.0, 1.0])
    w = th.max_margin_direction(x, y)
    assert w == pytest.approx([1.0, 0.0], abs=1e-6)
    with pytest.raises(ConfigError, match="separable"):
        th.max_margin_direction(np.array([[1.0], [1.0]]), np.array([1.0, -1.0]))
