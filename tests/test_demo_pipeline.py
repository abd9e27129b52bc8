"""normdyn demo: the whole loop (train, analyse, fit, report) on a tiny plan, through the same run_demo."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from normdyn.core.cli import cli
from normdyn.core.schedule import parse_schedule
from normdyn.core.store import list_runs
from normdyn.plugins.commands.demo_experiment import DemoPlan, demo_plan, perceptron_schedule, run_demo


def tiny_plan(seed: int = 0) -> DemoPlan:
    """The demo's plan shrunk to seconds: 3 P x 2 seeds of a 4-channel CNN1d, 3 x 1 perceptrons."""
    plan = demo_plan(quick=True, seed=seed)
    train = {
        **plan.train,
        "model_params": {"channels": [4, 4]},
        "steps": 60,
        "schedule": "log:8",
        "dataset_params": {**plan.train["dataset_params"], "num_samples": 1000},
    }
    perceptron = replace(
        plan.perceptron, N=40, alphas=(1.0, 2.0, 4.0), seeds=(seed,), steps=200, schedule=perceptron_schedule(12, 200)
    )
    return replace(plan, P=(100, 200, 400), seeds=(seed, seed + 1), train=train, perceptron=perceptron)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("demo") / "out"
    lines: list[str] = []
    result = run_demo(out, plan=tiny_plan(), jobs=1, say=lines.append)
    return {"out": out, "result": result, "lines": lines}


def test_demo_writes_stores_and_report(demo: dict) -> None:
    out, result = demo["out"], demo["result"]
    mnist = list_runs(out / "stores" / "mnist1d")
    assert sorted((r.P, r.seed) for r in mnist) == [(p, s) for p in (100, 200, 400) for s in (0, 1)]
    assert all(r.status == "complete" and "spectral_complexity" in r.measures() for r in mnist)
    assert all(r.dataset["label_noise"] == 0.2 and r.model_spec["name"] == "cnn1d" for r in mnist)
    perceptrons = list_runs(out / "stores" / "perceptron")
    assert sorted(r.P for r in perceptrons) == [40, 80, 160]
    assert all("perceptron_lambda" in r.measures() for r in perceptrons)
    assert result.report.index == out / "report" / "index.html"
    assert result.report.index.is_file()
    assert [(Path(t.store).name, t.measure) for t in result.report.targets] == [
        ("mnist1d", "spectral_complexity"),
        ("perceptron", "perceptron_lambda"),
    ]
    assert set(result.exponents) == {"mnist1d/spectral_complexity", "perceptron/perceptron_lambda"}
    assert set(result.seconds) == {"train_mnist1d", "analyze_mnist1d", "perceptron", "report", "total"}
    assert demo["lines"][0] == "training 6 MNIST-1D runs (P = 100, 200, 400; 2 seeds) ..."


def test_demo_perceptron_fit_matches_its_results_json(demo: dict) -> None:
    target = demo["result"].report.targets[1]
    assert target.error is None and target.fit_error is None, (target.error, target.fit_error)
    written = json.loads((demo["out"] / "report" / target.directory / "results.json").read_text())
    assert demo["result"].exponents["perceptron/perceptron_lambda"]["gamma2"] == written["gamma2"]
    assert written["gamma2"] > 0  # lambda* grows with alpha


def test_demo_is_deterministic_given_its_seed(demo: dict, tmp_path: Path) -> None:
    plan = tiny_plan()
    plan = replace(plan, P=plan.P[:1], seeds=plan.seeds[:1])  # the perceptron's pool depends on its alphas: keep them
    again = tmp_path / "again"
    run_demo(again, plan=plan, jobs=1)
    for store, measure in (("mnist1d", "spectral_complexity"), ("perceptron", "perceptron_lambda")):
        first = {r.run_id: r for r in list_runs(demo["out"] / "stores" / store)}
        for run in list_runs(again / "stores" / store):
            ref = first[run.run_id]
            assert np.array_equal(run.checkpoints()["test_error"], ref.checkpoints()["test_error"])
            assert np.array_equal(run.read_measure(measure).values, ref.read_measure(measure).values)
            final, ref_final = run.load_state_dict(-1), ref.load_state_dict(-1)
            assert all(np.array_equal(final[k].numpy(), ref_final[k].numpy()) for k in ref_final)


def test_demo_refuses_a_non_empty_out(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--quick"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: --out {tmp_path}: not empty; the demo writes into a new directory (delete it or choose another)\n"
    )
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_perceptron_schedule_is_log_without_step_zero() -> None:
    assert parse_schedule(perceptron_schedule(12, 200), 200) == parse_schedule("log:12", 200)[1:]
