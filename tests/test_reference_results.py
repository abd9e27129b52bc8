"""The reference code's result files (np.save of a dict) read without running a pickle, and fitted."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.lib import format as npy_format

from normdyn.analyzers.fit.laws import FitOptions
from normdyn.analyzers.fit.pipeline import fit_curves
from normdyn.analyzers.reference_results import read_reference_run, read_reference_runs, reference_curves
from normdyn.core.cli import cli
from normdyn.core.errors import DataError
from normdyn.core.safe_pickle import load_npy

WINDOW = (0.01, 0.3)


def _logs(P: int, seed: int, gamma1: float = 0.5) -> dict:
    """A run as the reference's train() returns it: 50 log epochs, errors in percent, model_norm growing."""
    epochs = np.unique(np.logspace(0, 3, num=50, dtype=int))
    lam_star = 0.05 * P**0.8
    lam = lam_star * np.logspace(-2.5, 0.5, epochs.size) * (1 + 0.01 * seed)
    err = 0.05 * lam**-gamma1 * (1 + (lam / lam_star) ** 3) * (P / 100) ** -0.2
    return {
        "log_epochs": epochs,
        "train_error": np.linspace(90.0, 0.0, epochs.size),
        "train_loss": np.linspace(2.3, 0.01, epochs.size),
        "val_error": 100.0 * err,
        "val_loss": np.linspace(2.3, 1.0, epochs.size),
        "model_norm": lam,
        "fro": np.sqrt(lam),
    }


def _save(directory: Path, P: int, seed: int, **extra: object) -> Path:
    path = directory / f"CNN_MNIST_P{P}_seed{seed}_WD0.0_INIT0.05.npy"
    np.save(path, {**_logs(P, seed), **extra})
    return path


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))

    marker = ""


def _save_malicious(path: Path, marker: Path) -> None:
    evil = _Evil()
    _Evil.marker = str(marker)
    with open(path, "wb") as fh:
        npy_format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump({"log_epochs": np.arange(3), "val_error": evil}, fh, protocol=3)


def test_a_result_file_is_read_with_P_seed_and_fractions(tmp_path: Path) -> None:
    path = _save(tmp_path, 375, 2)
    run = read_reference_run(path)
    assert (run.P, run.seed) == (375, 2)
    logs = _logs(375, 2)
    np.testing.assert_array_equal(run.epochs, logs["log_epochs"].astype(float))
    # percent -> fraction is one division by 100: equal to 1 ulp-scale rounding
    np.testing.assert_allclose(run.test_error, logs["val_error"] / 100.0, rtol=1e-15)
    np.testing.assert_array_equal(run.series["model_norm"], logs["model_norm"])
    assert set(run.series) == {"train_error", "train_loss", "val_error", "val_loss", "model_norm", "fro"}


def test_import_curves_then_fit_gives_the_fit_of_the_files(tmp_path: Path) -> None:
    paths = [_save(tmp_path, P, s) for P in (100, 200, 400, 800) for s in range(3)]
    out = tmp_path / "curves.csv"
    result = CliRunner().invoke(cli, ["import-curves", *map(str, paths), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"{out}: {12 * 50 - 12 * (50 - _logs(100, 0)['log_epochs'].size)} rows from 12 run(s), "
        f"P = 100, 200, 400, 800; fit with: normdyn fit --curves {out}"
    )
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    first = _logs(100, 0)
    assert float(rows[0]["lambda"]) == first["model_norm"][0]  # repr round-trips the file's value exactly
    fitted = CliRunner().invoke(
        cli, ["fit", "--curves", str(out), "--window", *map(str, WINDOW), "--json", "-", "--quiet"]
    )
    assert fitted.exit_code == 0, fitted.output
    data = json.loads(fitted.output)
    runs, errors = read_reference_runs(paths)
    assert errors == []
    direct = fit_curves(reference_curves(runs), options=FitOptions(window=WINDOW)).to_json()
    # log10 is taken on arrays of different lengths on the two paths: equal up to last-bit rounding
    assert data["gamma1"] == pytest.approx(direct["gamma1"], rel=1e-9)
    assert data["gamma2"] == pytest.approx(direct["gamma2"], rel=1e-9)
    assert data["gamma2"] == pytest.approx(0.8, abs=0.02)  # lambda*(P) = 0.05 P^0.8 by construction


def test_another_series_plays_lambda(tmp_path: Path) -> None:
    path = _save(tmp_path, 100, 0)
    out = tmp_path / "c.csv"
    result = CliRunner().invoke(cli, ["import-curves", str(path), "--out", str(out), "--measure", "fro"])
    assert result.exit_code == 0, result.output
    with open(out) as fh:
        assert float(next(csv.DictReader(fh))["lambda"]) == np.sqrt(_logs(100, 0)["model_norm"])[0]


def test_a_malicious_pickle_is_refused_and_does_not_run(tmp_path: Path) -> None:
    bad = tmp_path / "CNN_MNIST_P100_seed0_WD0.0.npy"
    marker = tmp_path / "pwned"
    _save_malicious(bad, marker)
    with pytest.raises(DataError) as info:
        load_npy(bad, what="a deep_norm result file")
    assert str(info.value).startswith(f"{bad}: refused to load posix.system (only numpy arrays, dicts, lists")
    assert not marker.exists()


def test_bad_files_are_reported_and_the_good_ones_still_imported(tmp_path: Path) -> None:
    good = _save(tmp_path, 100, 0)
    evil = tmp_path / "CNN_MNIST_P200_seed0_WD0.0.npy"
    _save_malicious(evil, tmp_path / "pwned")
    unnamed = tmp_path / "results.npy"
    np.save(unnamed, _logs(100, 1))
    short = tmp_path / "CNN_MNIST_P400_seed0_WD0.0.npy"
    np.save(short, {**_logs(400, 0), "model_norm": np.ones(3)})
    missing = tmp_path / "CNN_MNIST_P800_seed0_WD0.0.npy"
    np.save(missing, {"log_epochs": np.arange(3)})
    twice = tmp_path / "ResNet_MNIST_P100_seed0_WD0.0.npy"
    np.save(twice, _logs(100, 0))
    out = tmp_path / "curves.csv"
    files = [good, evil, unnamed, short, missing, twice]
    result = CliRunner().invoke(cli, ["import-curves", *map(str, files), "--out", str(out)])
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert errors == [
        f"error: {evil}: refused to load posix.system (only numpy arrays, dicts, lists and numbers are allowed "
        "in a deep_norm result file; the file may carry code)",
        f"error: {unnamed}: the name does not say P and seed (expected e.g. CNN_MNIST_P375_seed0_WD0.0.npy); "
        "rename it or convert it to a CSV of P,seed,lambda,test_error",
        f"error: {short}: model_norm has 3 values for {_logs(400, 0)['log_epochs'].size} logged epochs",
        f"error: {missing}: no train_error, val_error (found: log_epochs)",
        f"error: {twice}: a second file for P=100, seed=0 (first: {good})",
    ]
    assert result.stdout.startswith(f"{out}: ") and "from 1 run(s), P = 100;" in result.stdout
    assert not (tmp_path / "pwned").exists()


def test_a_plain_npy_array_loads_without_pickle(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(5.0))
    np.testing.assert_array_equal(load_npy(path), np.arange(5.0))
    (tmp_path / "b.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"b\.npy: not a \.npy file"):
        load_npy(tmp_path / "b.npy")
