"""The perceptron engine, its plugins, and the ``normdyn perceptron`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normdyn.analyzers.analyze import analyze_store
from normdyn.analyzers.fit.store_curves import store_curves
from normdyn.analyzers.perceptron import theory as th
from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.errors import ConfigError, DataError
from normdyn.core.sampling import subset_indices
from normdyn.core.schedule import parse_schedule
from normdyn.core.store import list_runs
from normdyn.plugins.commands.perceptron_experiment import PerceptronExperiment
from normdyn.trainer.perceptron import KERNELS, BatchedDescent, train_perceptrons


def run_experiment(exp: PerceptronExperiment, store: Path, kernel: str | None = None) -> dict[str, int]:
    """Train the grid of ``exp`` into ``store``; the last step of every run by run id."""
    results = train_perceptrons(exp.configs(store), progress=False, kernel=kernel)
    return {run.run_id: int(run.checkpoints()["step"][-1]) for run, _ in results}


def _data_of(run: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent rebuild of a run's training set (x, y = +-1) and teacher from the dataset spec."""
    spec = dict(run.dataset)  # type: ignore[attr-defined]
    spec.pop("name")
    gen = torch.Generator().manual_seed(spec["teacher_seed"])
    teacher = torch.randn(spec["N"], generator=gen, dtype=torch.float64).numpy()
    data = plugins.get("datasets", "teacher").load(**spec)
    idx = subset_indices(len(data.x_train), run.P, run.seed)  # type: ignore[attr-defined]
    x = data.x_train[idx].double().numpy()
    return x, np.sign(x @ teacher), teacher


def test_first_step_is_hebb_and_error_matches_theory(tmp_path: Path) -> None:
    exp = PerceptronExperiment(N=400, alphas=(1.0,), seeds=(0, 1, 2, 3), steps=3, schedule="log:3")
    run_experiment(exp, tmp_path)
    eps1 = []
    for run in list_runs(tmp_path):
        assert run.status == "complete" and run.P == 400
        table = run.checkpoints()
        assert table["step"].tolist() == [0, 1, 2, 3]
        assert table["test_error"][0] == 0.5  # w = 0 guesses
        x, y, teacher = _data_of(run)
        w1 = run.load_state_dict(1)["fc.weight"].numpy().ravel()
        hebb = (y[:, None] * x).sum(axis=0)
        assert w1 @ hebb / (np.linalg.norm(w1) * np.linalg.norm(hebb)) == pytest.approx(1.0, abs=1e-12)
        R = w1 @ teacher / (np.linalg.norm(w1) * np.linalg.norm(teacher))
        assert table["test_error"][1] == pytest.approx(math.acos(R) / math.pi, abs=1e-9)
        eps1.append(table["test_error"][1])
    # finite size: eps fluctuates by O(1/sqrt(N)) around the N -> infinity value
    assert np.mean(eps1) == pytest.approx(float(th.eps_hebb(1.0)), abs=0.03)


def _reference_descent(
    x: torch.Tensor, y: torch.Tensor, alpha: float, exp: PerceptronExperiment
) -> dict[int, torch.Tensor]:
    """One system alone, torch.mv per product: v at every checkpoint step (the rule of trainer/perceptron.py)."""
    P, N = x.shape
    points = set(parse_schedule(exp.schedule, exp.steps))
    v, eta, theta = torch.zeros(N, dtype=torch.float64), exp.lr0, math.inf
    v_prev = g_prev = None
    saved = {}
    for step in range(exp.steps + 1):
        lam = float(v.norm())
        done = step == exp.steps or (step > 0 and lam >= exp.lam_stop * alpha)
        if step in points or done:
            saved[step] = v
        if done:
            return saved
        g = torch.mv(x.T, -y * torch.special.expit(-y * torch.mv(x, v))) / P
        if v_prev is not None:
            dg = float((g - g_prev).norm())
            curvature = exp.lr_safety * float((v - v_prev).norm()) / dg if dg > 0 else math.inf
            relative = exp.max_rel_step * lam / float(g.norm())
            new_eta = min(math.sqrt(1 + theta) * eta, curvature, relative)
            theta, eta = new_eta / eta, new_eta
        v_prev, g_prev, v = v, g, v - eta * g
    raise AssertionError("unreachable: the last step always stops")


@pytest.mark.parametrize("kernel", KERNELS)
def test_batched_descent_matches_one_system_at_a_time(tmp_path: Path, kernel: str) -> None:
    # Stops at lambda = 2 alpha (steps 98..141) and at the step limit (alpha = 4). Not longer: once the
    # step exceeds the stability limit of the directions across the path, rounding grows ~10x per step
    # (two one-system loops that differ only in the gradient's summation order part by 1e-6 at step
    # 165 for alpha = 4, lam_stop = 3), so no two summation orders agree to 1e-10 there.
    exp = PerceptronExperiment(
        N=40, alphas=(4.0, 0.5, 2.0, 1.0), seeds=(0, 1), steps=150, schedule="log:8", lam_stop=2.0, n_test=100
    )
    last_step = run_experiment(exp, tmp_path, kernel=kernel)
    stops = set()
    for run in list_runs(tmp_path):
        x, y, _ = _data_of(run)
        alpha = run.P / exp.N
        expected = _reference_descent(torch.from_numpy(x), torch.from_numpy(y), alpha, exp)
        table = run.checkpoints()
        assert table["step"].tolist() == sorted(expected)
        assert last_step[run.run_id] == max(expected)
        for i, step in enumerate(table["step"]):
            v = run.load_state_dict(i)["fc.weight"].double().ravel() / math.sqrt(exp.N)
            assert torch.allclose(v, expected[int(step)], rtol=0, atol=1e-10), (run.run_id, int(step))
        stops.add(max(expected))
    assert len(stops) >= 5 and max(stops) == exp.steps  # by lambda at several steps, and by the step limit


def test_gradient_descent_approaches_max_margin(tmp_path: Path) -> None:
    exp = PerceptronExperiment(
        N=20, alphas=(2.0,), seeds=(0,), steps=3000, schedule="log:12", lam_stop=1e4, max_rel_step=0.2
    )
    run_experiment(exp, tmp_path)
    (run,) = list_runs(tmp_path)
    x, y, _ = _data_of(run)
    w_mm = th.max_margin_direction(x, y)
    cos = []
    for i in range(1, len(run)):
        w = run.load_state_dict(i)["fc.weight"].numpy().ravel()
        cos.append(float(w @ w_mm / np.linalg.norm(w)))
    assert cos[-1] > 0.995
    assert cos[-1] > cos[len(cos) // 2] > cos[0]


def test_store_format_measure_and_curves(tmp_path: Path) -> None:
    exp = PerceptronExperiment(N=50, alphas=(1.0, 2.0), seeds=(0, 1), steps=40, schedule="log:8")
    last_step = run_experiment(exp, tmp_path)
    runs = list_runs(tmp_path)
    assert sorted(r.run_id for r in runs) == sorted(last_step)
    # ordinary runs: the id is the config hash, the config a TrainConfig's
    assert {r.run_id for r in runs} == {c.run_id() for c in exp.configs(tmp_path)}
    configs = {json.dumps({k: v for k, v in r.config.items() if k not in ("P", "seed")}, sort_keys=True) for r in runs}
    assert len(configs) == 1  # one experiment: fits group the runs together
    assert {r.P for r in runs} == {50, 100}
    assert runs[0].model_spec["name"] == "perceptron" and runs[0].dataset["name"] == "teacher"
    summary = analyze_store(tmp_path, ["perceptron_lambda"])  # the ordinary analysis path
    assert summary.run_errors == [] and all(not o.failures for o in summary.outcomes)
    for run in runs:
        rec = run.read_measure("perceptron_lambda")
        expected = [
            np.linalg.norm(run.load_state_dict(i)["fc.weight"].numpy()) / math.sqrt(50) for i in range(len(run))
        ]
        assert rec.values == pytest.approx(expected, rel=1e-12)
        assert rec.values[0] == 0.0
    group, _ = store_curves(tmp_path, "perceptron_lambda")
    # the zero initial weights (lambda = 0) have no logarithm: one point fewer than checkpoints
    assert all(len(c.log10_lambda) == len(runs[0]) - 1 for c in group.curves)
    # a second call trains nothing: every run is complete
    again = train_perceptrons(exp.configs(tmp_path), progress=False)
    assert [a for _, a in again] == ["skipped"] * 4


def test_exact_test_error_matches_a_large_test_set() -> None:
    data = plugins.get("datasets", "teacher").load(N=30, n_train=10, n_test=40000, inputs="gaussian", teacher_seed=3)
    family = plugins.get("models", "perceptron")
    model = family.build(family.spec(input_shape=(30,), num_classes=2))
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(1, 30, generator=torch.Generator().manual_seed(1)))
        empirical = float(((model(data.x_test).ravel() > 0).long() != data.y_test).float().mean())
    exact = data.exact_test_error(model)
    assert empirical == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 40000))


def test_bad_inputs_name_the_value() -> None:
    teacher = plugins.get("datasets", "teacher")
    with pytest.raises(DataError, match="inputs='binary'"):
        teacher.load(inputs="binary")
    with pytest.raises(DataError, match="unknown parameter"):
        teacher.load(P=3)
    with pytest.raises(ConfigError, match="num_classes=10"):
        plugins.get("models", "perceptron").spec(input_shape=(5,), num_classes=10)
    with pytest.raises(ConfigError, match="alphas"):
        PerceptronExperiment(alphas=(0.0,)).validate()
    with pytest.raises(ConfigError, match="optimizer_params.max_rel_step=-1.0: must be a positive number"):
        PerceptronExperiment(max_rel_step=-1.0).validate()
    for device in ("tpu", "meta", "cuda:x"):
        with pytest.raises(ConfigError, match=f"device='{device}': use cpu, cuda or cuda:K"):
            PerceptronExperiment(device=device).validate()
    with pytest.raises(ConfigError, match="kernel='gemm': use one of chunked-mv, blocked-bmm"):
        BatchedDescent(torch.zeros(1, 4, 3, dtype=torch.float64), [2, 4], lr0=0.1, safety=0.5, rho=0.05, kernel="gemm")
    with pytest.raises(ConfigError, match=r"P=\[4, 2\]: need increasing sample counts ending at Z's 4 rows"):
        BatchedDescent(
            torch.zeros(1, 4, 3, dtype=torch.float64), [4, 2], lr0=0.1, safety=0.5, rho=0.05, kernel="chunked-mv"
        )


def test_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    args = [
        "perceptron",
        "--out",
        str(out),
        "--N",
        "60",
        "--alphas",
        "1,2,4",
        "--seeds",
        "2",
        "--steps",
        "400",
        "--schedule",
        "log:10",
        "--quiet",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("gamma1 = ") and lines[1].startswith("gamma2 = ")
    assert lines[-1] == f"report: {out / 'report' / 'index.html'}"
    section = out / "report" / "store" / "perceptron_lambda"
    for stem in ("perceptron-eps-lambda", "perceptron-collapse", "perceptron-lambda-star", "perceptron-eps-star"):
        assert (section / f"fig-{stem}.png").stat().st_size > 0 and (section / f"fig-{stem}.svg").stat().st_size > 0
    page = (out / "report" / "index.html").read_text()
    assert "Perceptron: simulation and theory" in page and "eps_gibbs" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["N"] == 60 and summary["alphas"] == [1.0, 2.0, 4.0]
    assert summary["gamma1"] == summary["fit"]["gamma1"]
    theory = json.loads((section / "theory.json").read_text())
    assert summary["gamma1_theory_same_fit"] == theory["same_fit"]["gamma1"] is not None
    assert len(theory["alpha"]) == 3 and theory["N"] == 60
    assert len(list_runs(out / "store")) == 6
    assert set(summary["runs"].values()) == {"trained"}
    again = CliRunner().invoke(cli, args)  # the grid is complete: nothing is trained again, the report is rewritten
    assert again.exit_code == 0, again.output
    assert "runs: 0 trained, 0 resumed, 6 already complete" in again.output
    assert json.loads((out / "summary.json").read_text())["gamma1"] == summary["gamma1"]
    other = CliRunner().invoke(cli, [*args[:-1], "--N", "80", "--quiet"])
    assert other.exit_code == 1
    assert other.output.startswith(f"Error: {out / 'store'} holds runs of another experiment (perceptron-teacher-P")
    assert other.output.rstrip().endswith("; choose a new --out (nothing is overwritten)")
    bad = CliRunner().invoke(cli, ["perceptron", "--out", str(tmp_path / "x"), "--alphas", "a,b"])
    assert bad.exit_code == 1
    assert bad.output.strip() == "Error: --alphas 'a,b': give comma-separated numbers, e.g. 0.5,1,2,4"
    tpu = CliRunner().invoke(cli, ["perceptron", "--out", str(tmp_path / "y"), "--quick", "--device", "tpu"])
    assert tpu.exit_code == 1
    assert tpu.output.startswith("Error: device='tpu': use cpu, cuda or cuda:K")
    assert not (tmp_path / "y").exists()  # refused before anything is written


def test_exact_test_error_covers_perceptrons_only() -> None:
    """Another model trained on teacher data gets None: its error comes from the test set."""
    from normdyn.core import plugins

    data = plugins.get("datasets", "teacher").load(N=20, n_train=50, n_test=50)
    mlp = plugins.get("models", "mlp")
    model = mlp.build(mlp.spec(input_shape=(20,), num_classes=2, widths=[8]))
    assert data.exact_test_error(model) is None
