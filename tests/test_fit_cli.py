"""``normdyn fit``: store and CSV inputs, the JSON it writes, and clear errors on bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normdyn.analyzers.curves_io import read_curves_csv
from normdyn.analyzers.fit.aggregate import SeedCurve
from normdyn.analyzers.fit.pipeline import FitOptions, fit_curves
from normdyn.core.cli import cli
from normdyn.core.store import MeasureRecord, Run

SPEC_KEYS = {
    "gamma1",
    "gamma1_err",
    "k1",
    "gamma2",
    "gamma2_err",
    "k2",
    "gamma_pred",
    "gamma_meas",
    "gamma_meas_err",
    "sigma",
    "z",
    "window",
    "law1_min_P",
    "law2_min_P",
    "per_P",
}
PER_P_KEYS = {"P", "lambda_star", "eps_star", "n_seeds", "gamma1_P"}
WINDOW = ("0.0031", "0.11")


def synth_curves(
    Ps: tuple[int, ...] = (200, 400, 800, 1600), n_seeds: int = 3, n_ckpt: int = 40, seed: int = 0
) -> list[SeedCurve]:
    """eps = 0.05 lambda^-0.5 (1 + (lambda/lambda_s)^3), lambda_s = 0.05 P^0.8, small noise (see test_fit_laws)."""
    rng = np.random.default_rng(seed)
    out = []
    span = np.linspace(-3.5, 1.0, n_ckpt)
    for P in Ps:
        for s in range(n_seeds):
            l10s = np.log10(0.05) + 0.8 * np.log10(P) + 0.05 * rng.standard_normal()
            l10 = l10s + span
            eps = 0.05 * 10.0 ** (-0.5 * l10) * (1 + 10.0 ** (3 * span)) * np.exp(0.01 * rng.standard_normal(n_ckpt))
            out.append(SeedCurve(P, s, l10, eps))
    return out


def write_raw_csv(path: Path, curves: list[SeedCurve]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["P", "seed", "lambda", "test_error"])
        for c in curves:
            for lam, err in zip(c.log10_lambda, c.test_error):
                w.writerow([c.P, c.seed, repr(float(10.0**lam)), repr(float(err))])
    return path


def run_fit(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["fit", *args])
    return result.exit_code, result.output


def test_fit_curves_csv_writes_the_documented_json(tmp_path: Path) -> None:
    path = write_raw_csv(tmp_path / "curves.csv", synth_curves())
    out = tmp_path / "fit.json"
    code, output = run_fit("--curves", str(path), "--window", *WINDOW, "--json", str(out), "--quiet")
    assert code == 0, output
    data = json.loads(out.read_text())
    assert SPEC_KEYS <= set(data) and "ci" not in data
    assert [set(row) >= PER_P_KEYS for row in data["per_P"]] == [True] * 4
    expected = fit_curves(read_curves_csv(path), options=FitOptions(window=(0.0031, 0.11))).to_json()
    for key in SPEC_KEYS - {"per_P"}:
        assert data[key] == expected[key], key
    assert data["window"] == [0.0031, 0.11] and data["law1_min_P"] == 200 and data["law2_min_P"] == 200
    assert [r["n_seeds"] for r in data["per_P"]] == [3, 3, 3, 3]
    lines = output.splitlines()
    assert lines[0].startswith(f"law 1   gamma1     = {data['gamma1']:.4g} +- ")
    assert lines[3].startswith(f"product gamma_pred = {data['gamma_pred']:.4g} +- ")


def test_fit_json_to_stdout_with_bootstrap_and_min_P(tmp_path: Path) -> None:
    path = write_raw_csv(tmp_path / "curves.csv", synth_curves(Ps=(200, 400, 800, 1600, 3200)))
    code, output = run_fit(
        "--curves",
        str(path),
        "--window",
        *WINDOW,
        "--law1-min-P",
        "400",
        "--law2-min-P",
        "400",
        "--bootstrap",
        "20",
        "--json",
        "-",
        "--quiet",
    )
    assert code == 0, output
    data = json.loads(output)
    assert data["law1_min_P"] == 400 and data["law2_min_P"] == 400
    assert data["per_P"][0]["gamma1_P"] is None and data["per_P"][1]["gamma1_P"] is not None
    assert set(data["ci"]) >= {"gamma1", "gamma2", "gamma_pred", "gamma_meas", "level", "n_boot"}
    assert data["ci"]["n_boot"] == 20 and data["ci"]["level"] == 0.95


def test_fit_mean_curves_with_lambda_star_file(tmp_path: Path) -> None:
    grid = np.logspace(-2, 1, 31)
    with open(tmp_path / "mean.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["P", "lambda", "test_error"])
        for P in (100, 200, 400, 800):
            ls = 0.05 * P**0.8
            for i, lam in enumerate(grid * ls / 1.0):
                err = "nan" if i == 0 and P == 100 else repr(float(0.05 * lam**-0.5 * (1 + (lam / ls) ** 3)))
                w.writerow([P, repr(float(lam)), err])
    (tmp_path / "lstar.csv").write_text("P,lambda_star\n100,2\n200,4\n400,8\n800,16\n")
    code, output = run_fit(
        "--curves",
        str(tmp_path / "mean.csv"),
        "--lambda-star",
        str(tmp_path / "lstar.csv"),
        "--window",
        "0.01",
        "0.3",
        "--json",
        "-",
    )
    assert code == 0, output
    data = json.loads(output)
    assert [r["lambda_star"] for r in data["per_P"]] == pytest.approx([2.0, 4.0, 8.0, 16.0], rel=1e-14)
    assert data["gamma2"] == pytest.approx(1.0, rel=1e-12)
    assert data["gamma1"] == pytest.approx(0.5, abs=2e-3)
    assert [r["n_seeds"] for r in data["per_P"]] == [None] * 4
    assert data["lambda_star_source"] == str(tmp_path / "lstar.csv")
    code, output = run_fit("--curves", str(tmp_path / "mean.csv"), "--bootstrap", "10")
    assert (code, output) == (
        1,
        "Error: --bootstrap resamples seeds: it needs per-seed curves (columns P,seed,lambda,test_error)\n",
    )


def test_fit_store_equals_fit_of_the_same_curves(tmp_path: Path) -> None:
    store = tmp_path / "store"
    curves = synth_curves(Ps=(200, 400, 800), n_seeds=2, n_ckpt=8)  # each checkpoint append costs ~70 ms
    for c in curves:
        run = Run.create(
            store,
            f"P{c.P}-s{c.seed}",
            config={"lr": 0.001, "P": c.P, "seed": c.seed},
            model_spec={"name": "mlp"},
            dataset={"name": "toy"},
            P=c.P,
            seed=c.seed,
        )
        # row 0: a zero initialisation (lambda = 0 has no log): left out of the curve, not an error
        run.append_checkpoint({"w": torch.zeros(1)}, step=0, epoch=0.0, metrics={"test_error": 0.5})
        for step, e in enumerate(c.test_error, start=1):
            run.append_checkpoint({"w": torch.zeros(1)}, step=step, epoch=float(step), metrics={"test_error": float(e)})
        values = np.concatenate([[0.0], 10.0**c.log10_lambda])
        run.write_measure("spec", MeasureRecord(values=values, sha256=[""] * len(values)))
    code, output = run_fit(str(store), "--measure", "spec", "--window", "0.01", "0.3", "--json", "-")
    assert code == 0, output
    data = json.loads(output)
    expected = fit_curves(curves, options=FitOptions(window=(0.01, 0.3))).to_json()
    for key in SPEC_KEYS - {"per_P"}:
        assert data[key] == pytest.approx(expected[key], rel=1e-12), key
    assert data["source"] == {"store": str(store), "measure": "spec", "config": {"lr": 0.001}}


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "P,seed,lambda\n1,0,1\n",
            "{path}: missing column(s) test_error (found: P, seed, lambda); expected "
            "P,seed,lambda,test_error (per-seed curves) or P,lambda,test_error (mean curves)",
        ),
        (
            "P,seed,lambda,test_error\n100,0,1,0.5\n100,0,-1,0.4\n",
            "{path}, line 3: lambda = -1; must be > 0 and finite (log-log fits)",
        ),
        (
            "P,seed,lambda,test_error\n100,0,1,0.5\n100,0,2,0\n",
            "{path}, line 3: test_error = 0; must be > 0 and finite (log-log fits)",
        ),
        (
            "P,seed,lambda,test_error\n100,0,1,0.5\n100,0,2,abc\n",
            "{path}, line 3: column 'test_error' holds 'abc', not a number",
        ),
        (
            "P,seed,lambda,test_error\n100,0,1,0.5\n100,0,2,0.4\n100,0,4,0.3\n100,0,8,0.35\n",
            "a single training-set size (P=100); scaling laws need several P (at least 3)",
        ),
    ],
)
def test_bad_curves_files_give_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "curves.csv"
    path.write_text(content)
    assert run_fit("--curves", str(path), "--window", "0.1", "0.5") == (1, f"Error: {message.format(path=path)}\n")


def test_bad_lambda_star_file_and_narrow_window(tmp_path: Path) -> None:
    path = write_raw_csv(tmp_path / "curves.csv", synth_curves())
    (tmp_path / "lstar.csv").write_text("P,lstar\n200,1\n")
    assert run_fit("--curves", str(path), "--lambda-star", str(tmp_path / "lstar.csv")) == (
        1,
        f"Error: {tmp_path / 'lstar.csv'}: missing column(s) lambda_star (found: P, lstar); expected P,lambda_star\n",
    )
    code, output = run_fit("--curves", str(path), "--window", "0.1", "0.11")
    assert code == 1
    assert output.startswith("Error: law 1: the window [0.1, 0.11] of lambda/lambda* holds ")
    assert output.endswith("for P=200, need at least 3; widen --window or use a finer --grid\n")


def test_store_errors_and_usage(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert run_fit(str(tmp_path / "empty"), "--measure", "spec") == (
        1,
        f"Error: {tmp_path / 'empty'}: the store holds no readable run\n",
    )
    code, output = run_fit(str(tmp_path / "empty"))
    assert code == 2 and "STORE needs --measure NAME" in output
    code, output = run_fit()
    assert code == 2 and "give either STORE (with --measure) or --curves CURVES.csv" in output
