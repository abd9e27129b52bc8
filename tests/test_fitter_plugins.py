"""Fitters are interchangeable: a third-party law-1 fitter chosen by name in ``normdyn fit`` and ``report``.

The third-party fitter is the example plugin's Theil-Sen estimator
(examples/normdyn-example-plugin), registered as a plugin object in a fixture.
"""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normdyn.analyzers.curves_io import read_curves_csv
from normdyn.analyzers.fit.aggregate import SeedCurve
from normdyn.analyzers.fit.pipeline import FitOptions, fit_curves
from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.store import MeasureRecord, Run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "normdyn-example-plugin"
PS = (200, 400, 800, 1600)
WINDOW = ("0.0031", "0.11")


@pytest.fixture
def theil_sen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The example plugin's fitters module registered as a plugin; unregistered afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    module = importlib.import_module("normdyn_example_plugin.fitters")
    plugins.register_plugin(module, name="example-fitters")
    try:
        yield module.TheilSenLaw1
    finally:
        plugins.unregister_plugin(name="example-fitters")
    assert "theil_sen" not in plugins.names("fitters")


def power_law_mean_curves(g: float, outlier: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean curves with eps/eps* = (lambda/lambda*)^-g exactly below a grid-point minimum at lambda* = P/100."""
    log10_grid = np.linspace(-3.0, 2.0, 101)  # steps of 0.05 decade
    P = np.array(PS)
    u = log10_grid[None, :] - np.log10(P / 100.0)[:, None]
    log10_eps = np.where(u <= 0, -g * u, u) - 1.0
    if outlier:  # one grid point per P far off the law, inside the window
        log10_eps[np.arange(len(P)), np.argmin(np.abs(u + 1.0), axis=1)] += 0.3
    return log10_grid, 10.0**log10_eps, P


def test_theil_sen_recovers_a_known_exponent_despite_an_outlier(theil_sen: Any) -> None:
    window = (10**-1.6, 10**-0.2)  # 29 grid points per P, the outlier among them
    clean = theil_sen(window=window).fit(*power_law_mean_curves(0.5, outlier=False))
    # an exact power law: every pairwise slope is 0.5 up to float rounding (~1e-15 on slopes of order 1)
    assert clean.gamma1_ == pytest.approx(0.5, abs=1e-12) and clean.k1_ == pytest.approx(1.0, abs=1e-12)
    assert clean.gamma1_err_ == pytest.approx(0.0, abs=1e-12)
    curves = power_law_mean_curves(0.5, outlier=True)
    robust = theil_sen(window=window).fit(*curves)
    ols = plugins.get("fitters", "paper")(window=window).fit(*curves)
    # 28 of the 406 pairwise slopes touch the outlier, so their median is still exactly 0.5
    assert robust.gamma1_P_ == pytest.approx([0.5] * len(PS), abs=1e-12)
    assert abs(ols.gamma1_ - 0.5) > 1e-3  # least squares is pulled by the outlier
    assert robust.log10_x_.shape == (len(PS), 101) and robust.in_window_.sum(axis=1).tolist() == [29] * len(PS)


def synth_seed_curves() -> list[SeedCurve]:
    """eps = 0.05 lambda^-0.5 (1 + (lambda/lambda_s)^3), lambda_s = 0.05 P^0.8, small noise (as test_fit_cli)."""
    rng = np.random.default_rng(0)
    span = np.linspace(-3.5, 1.0, 40)
    out = []
    for P in PS:
        for s in range(3):
            l10 = np.log10(0.05) + 0.8 * np.log10(P) + 0.05 * rng.standard_normal() + span
            eps = 0.05 * 10.0 ** (-0.5 * l10) * (1 + 10.0 ** (3 * span)) * np.exp(0.01 * rng.standard_normal(40))
            out.append(SeedCurve(P, s, l10, eps))
    return out


def write_curves_csv(path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["P", "seed", "lambda", "test_error"])
        for c in synth_seed_curves():
            for lam, err in zip(c.log10_lambda, c.test_error):
                w.writerow([c.P, c.seed, repr(float(10.0**lam)), repr(float(err))])
    return path


def test_fit_uses_a_third_party_law1_fitter_by_name(tmp_path: Path, theil_sen: Any) -> None:
    path = write_curves_csv(tmp_path / "curves.csv")
    result = CliRunner().invoke(
        cli, ["fit", "--curves", str(path), "--window", *WINDOW, "--method", "theil_sen", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["method"], data["law2_method"], data["eps_star_method"]) == ("theil_sen", "law2_ols", "eps_star_ols")
    paper = fit_curves(read_curves_csv(path), options=FitOptions(window=(0.0031, 0.11)))
    c = paper.curves
    direct = theil_sen(window=(0.0031, 0.11)).fit(c.log10_grid, c.mean_error, c.P)
    assert data["gamma1"] == direct.gamma1_ and data["gamma1_err"] == direct.gamma1_err_  # the same computation
    assert data["gamma1"] != paper.to_json()["gamma1"]  # and not the built-in estimator's
    assert data["gamma_pred"] == pytest.approx(direct.gamma1_ * data["gamma2"], rel=1e-12)  # float product
    assert data["gamma2"] == paper.to_json()["gamma2"]  # law 2 does not depend on the law-1 fitter


def make_store(root: Path) -> Path:
    """One seed per P; eps = P^-1/2 (x^-1/2 + x^1/2)/2 at x = lambda / (10 P) (as test_report_build)."""
    for P in PS:
        run = Run.create(
            root,
            f"toy-P{P}",
            config={"model": "toy", "P": P, "seed": 0},
            model_spec={"name": "toy", "layers": []},
            dataset={"name": "toy"},
            P=P,
            seed=0,
        )
        u = np.linspace(-2.0, 1.0, 31)
        for i, ui in enumerate(u):
            eps = P**-0.5 * 0.5 * (10.0 ** (-ui / 2) + 10.0 ** (ui / 2))
            run.append_checkpoint({"w": torch.zeros(1)}, step=i, epoch=float(i), metrics={"test_error": eps})
        sha = list(run.checkpoints()["sha256"])
        run.write_measure("toy_norm", MeasureRecord(10.0 * P * 10.0**u, "toy", "1", {}, sha, {}))
        run.set_status("complete")
    return root


def test_report_uses_a_third_party_law1_fitter_by_name(tmp_path: Path, theil_sen: Any) -> None:
    store = make_store(tmp_path / "store")
    args = ["--measure", "toy_norm", "--window", "0.01", "0.3", "--method", "theil_sen"]
    report = CliRunner().invoke(cli, ["report", str(store), "--out", str(tmp_path / "out"), *args])
    assert report.exit_code == 0, report.output
    fit = CliRunner().invoke(cli, ["fit", str(store), *args, "--json", "-"])
    assert fit.exit_code == 0, fit.output
    written = json.loads((tmp_path / "out" / "store" / "toy_norm" / "results.json").read_text())
    assert written["method"] == "theil_sen" and written["gamma1"] == json.loads(fit.output)["gamma1"]
    assert "--method theil_sen" in (tmp_path / "out" / "index.html").read_text()  # provenance


@pytest.mark.parametrize(
    "option, name, message",
    [
        (
            "--method",
            "law2_ols",
            "law 1: fitter 'law2_ols' estimates law2, not law1; use one of paper, pooled, theil_sen",
        ),
        ("--law2-method", "theil_sen", "law 2: fitter 'theil_sen' estimates law1, not law2; use one of law2_ols"),
        ("--eps-star-method", "median", "eps*(P): unknown method 'median'; use one of eps_star_ols"),
    ],
)
def test_a_fitter_of_the_wrong_law_or_unknown_is_refused(
    tmp_path: Path, theil_sen: Any, option: str, name: str, message: str
) -> None:
    path = write_curves_csv(tmp_path / "curves.csv")
    result = CliRunner().invoke(cli, ["fit", "--curves", str(path), option, name])
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
    store = make_store(tmp_path / "store")
    result = CliRunner().invoke(cli, ["report", str(store), "--out", str(tmp_path / "out"), option, name])
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
