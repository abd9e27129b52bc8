"""normdyn report: every promised file, links that resolve, results.json == fit --json, failures per item."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.hookspecs import hookimpl
from normdyn.core.store import MeasureRecord, Run

MEASURE = "toy_norm"
PS = (100, 200, 400, 800)
SEEDS = (0, 1)
N_CKPT = 31  # u = log10(lambda/lambda*) from -2 to 1 in steps of 0.1: the minimum is a checkpoint
FIGURES = ("error-vs-lambda", "collapse", "lambda-star", "eps-star", "learning-curves", "lambda-vs-epoch")
TABLES = ("exponents.csv", "per_P.csv", "curves.csv", "learning_curves.csv", "runs.csv")


def make_store(root: Path, Ps: tuple[int, ...] = PS, measures: tuple[str, ...] = (MEASURE,)) -> Path:
    """Runs whose eps(lambda) = P^-1/2 (x^-1/2 + x^1/2)/2, x = lambda / (10 P): minimum at lambda* = 10 P."""
    for P in Ps:
        for s in SEEDS:
            run = Run.create(
                root,
                f"toy-P{P}-s{s}",
                config={"model": "toy", "P": P, "seed": s, "lr": 0.1},
                model_spec={"name": "toy", "layers": []},
                dataset={"name": "toy"},
                P=P,
                seed=s,
            )
            u = np.linspace(-2.0, 1.0, N_CKPT) + 0.01 * s
            for i, ui in enumerate(u):
                eps = P**-0.5 * 0.5 * (10.0 ** (-ui / 2) + 10.0 ** (ui / 2))
                run.append_checkpoint(
                    {"w": torch.full((2,), float(i))},
                    step=10 * i,
                    epoch=float(i),
                    metrics={"test_error": eps, "train_error": eps / 2, "test_loss": 2 * eps, "train_loss": eps},
                )
            sha = list(run.checkpoints()["sha256"])
            for k, name in enumerate(measures):
                run.write_measure(name, MeasureRecord(10.0 * P * 10.0**u * (k + 1), "toy", "1", {}, sha, {}))
            run.set_status("complete")
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store, one report (rendering figures is the slow part: share it between tests)."""
    root = tmp_path_factory.mktemp("report")
    store = make_store(root / "store")
    out = root / "out"
    missing = root / "missing"
    result = CliRunner().invoke(cli, ["report", str(missing), str(store), "--out", str(out), "--measure", MEASURE])
    return {"store": store, "out": out, "result": result, "missing": missing}


def test_report_writes_every_promised_file(report: dict[str, Any]) -> None:
    result, out = report["result"], report["out"]
    directory = out / "store" / MEASURE
    expected = {f"fig-{f}.{ext}" for f in FIGURES for ext in ("png", "svg")} | set(TABLES) | {"results.json"}
    assert {p.name for p in directory.iterdir()} == expected
    assert (out / "index.html").is_file()
    lines = result.output.splitlines()
    assert lines[-1] == f"report: {out / 'index.html'}"
    assert lines[-2].startswith(f"ok: {report['store']} {MEASURE} -> {directory}  gamma1=")


def test_a_failing_store_is_reported_and_the_rest_written(report: dict[str, Any]) -> None:
    result, missing = report["result"], report["missing"]
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == f"failed: {missing} {MEASURE}: {missing}: no such store directory"
    page = (report["out"] / "index.html").read_text()
    assert f"{missing}: no such store directory" in page
    assert not (report["out"] / "missing").exists()


def test_index_is_self_contained_and_links_only_existing_files(report: dict[str, Any]) -> None:
    out = report["out"]
    page = (out / "index.html").read_text()
    targets = re.findall(r'(?:href|src)="([^"]+)"', page)
    files = [t for t in targets if not t.startswith(("data:", "#"))]
    assert files, "index.html links no file"
    assert [t for t in files if not (out / t).is_file()] == []
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert f"{MEASURE}/results.json" in page
    anchors = set(re.findall(r'id="([^"]+)"', page))
    assert {t[1:] for t in targets if t.startswith("#")} <= anchors
    assert "normdyn report" in page and "--measure toy_norm" in page  # the command line is provenance


def test_results_json_equals_fit_json(report: dict[str, Any]) -> None:
    fit = CliRunner().invoke(cli, ["fit", str(report["store"]), "--measure", MEASURE, "--json", "-", "--quiet"])
    assert fit.exit_code == 0, fit.output
    written = json.loads((report["out"] / "store" / MEASURE / "results.json").read_text())
    assert written == json.loads(fit.output)
    assert written["gamma2"] == pytest.approx(1.0, abs=1e-6)  # lambda* = 10 P exactly
    assert written["gamma_meas"] == pytest.approx(0.5, abs=0.02)  # eps* = P^-1/2 up to the grid


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_tables_hold_the_fit_and_every_checkpoint(report: dict[str, Any]) -> None:
    directory = report["out"] / "store" / MEASURE
    results = json.loads((directory / "results.json").read_text())
    per_p = _read_csv(directory / "per_P.csv")
    assert [int(r["P"]) for r in per_p] == list(PS)
    assert [float(r["eps_star"]) for r in per_p] == [r["eps_star"] for r in results["per_P"]]
    assert [float(r["lambda_star"]) for r in per_p] == pytest.approx([10.0 * p for p in PS], rel=0.02)
    rows = _read_csv(directory / "learning_curves.csv")
    assert len(rows) == len(PS) * len(SEEDS) * N_CKPT
    first = rows[0]
    assert (first["run"], first["P"], first["seed"], first["step"]) == ("toy-P100-s0", "100", "0", "0")
    assert float(first[f"lambda_{MEASURE}"]) == pytest.approx(10.0 * 100 * 10.0**-2.0)
    curves = _read_csv(directory / "curves.csv")
    for r in curves:
        assert float(r["min_test_error"]) <= float(r["mean_test_error"]) <= float(r["max_test_error"])
    assert {int(r["P"]) for r in curves} == set(PS)
    runs = _read_csv(directory / "runs.csv")
    assert [(r["run"], r["measure_plugin"], r["measure_version"]) for r in runs][0] == ("toy-P100-s0", "toy", "1")


def test_every_stored_measure_by_default_and_unknown_measure_fails(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", Ps=(100, 200, 400), measures=("norm_a", "norm_b"))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["report", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    a = json.loads((out / "s" / "norm_a" / "results.json").read_text())
    b = json.loads((out / "s" / "norm_b" / "results.json").read_text())
    assert b["gamma2"] == pytest.approx(a["gamma2"])  # lambda_b = 2 lambda_a: same exponent
    result = CliRunner().invoke(cli, ["report", str(store), "--out", str(tmp_path / "o2"), "--measure", "absent"])
    assert result.exit_code == 1
    assert "measure 'absent' not computed" in result.output


def test_failed_fit_keeps_the_run_figures(tmp_path: Path) -> None:
    store = make_store(tmp_path / "one", Ps=(100,))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["report", str(store), "--out", str(out)])
    assert result.exit_code == 1
    assert f"fit failed: {store} {MEASURE}: a single training-set size (P=100)" in result.output
    names = {p.name for p in (out / "one" / MEASURE).iterdir()}
    assert names == {
        "fig-learning-curves.png",
        "fig-learning-curves.svg",
        "fig-lambda-vs-epoch.png",
        "fig-lambda-vs-epoch.svg",
        "learning_curves.csv",
        "runs.csv",
    }


class _TableSection:
    name = "third_party_table"
    title = "A third-party section"
    order = 5

    def render(self, context: Any, out: Any) -> None:
        out.table(
            "max_lambda",
            ["P", "max_lambda"],
            [[p, float(max(np.nanmax(r.lam) for r in context.runs_of(p)))] for p in context.P_values],
            "Largest lambda per P",
        )


class _BrokenSection:
    name = "broken"
    order = 6

    def render(self, context: Any, out: Any) -> None:
        raise ValueError("no data for this figure")


class _SectionPlugin:
    @hookimpl
    def register_report_sections(self, register: Any) -> None:
        register(_TableSection())
        register(_BrokenSection())


def test_plugin_sections_render_and_a_failing_one_is_reported(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", Ps=(100, 200, 400))
    out = tmp_path / "out"
    plugins.register_plugin(_SectionPlugin(), name="test-sections")
    try:
        result = CliRunner().invoke(cli, ["report", str(store), "--out", str(out)])
    finally:
        plugins.unregister_plugin(name="test-sections")
    assert result.exit_code == 1
    assert f"section failed: {store} {MEASURE} broken: ValueError: no data for this figure" in result.output
    rows = _read_csv(out / "s" / MEASURE / "max_lambda.csv")
    assert [int(r["P"]) for r in rows] == [100, 200, 400]
    assert [float(r["max_lambda"]) for r in rows] == pytest.approx([10.0 * p * 10.0**1.01 for p in (100, 200, 400)])
    page = (out / "index.html").read_text()
    assert page.index("A third-party section") < page.index("Fitted exponents")  # order 5 before 10
    assert "section &#x27;broken&#x27; failed: no data for this figure" in page
    assert (out / "s" / MEASURE / "fig-collapse.png").is_file()
