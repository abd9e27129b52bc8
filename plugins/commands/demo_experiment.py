"""The embedded demo: train, analyse, fit and report both experiments of the paper in minutes on a laptop CPU.

:func:`run_demo` does the scientist's whole loop on built-in data:

1. a P x seed sweep of a small network on MNIST-1D (generated locally, cached
   under ``OUT/data``) into ``OUT/stores/mnist1d``;
2. the teacher-student perceptron grid (ordinary runs on the perceptron
   engine, :mod:`normdyn.trainer.perceptron`) into ``OUT/stores/perceptron``;
3. the default measures on every checkpoint (``normdyn analyze``);
4. both laws fitted and the report written to ``OUT/report/index.html``.

Everything is deterministic given ``seed`` (CPU, one thread per worker).
The settings, and what was tried to find them, are in docs/demo.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from normdyn.analyzers.analyze import analyze_store
from normdyn.analyzers.perceptron.analysis import fit_options
from normdyn.analyzers.report.build import ReportSummary, build_report
from normdyn.core.errors import ConfigError, NormdynError
from normdyn.core.schedule import log_points
from normdyn.plugins.commands.perceptron_experiment import PerceptronExperiment, perceptron_experiment
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.perceptron import train_perceptrons
from normdyn.trainer.sweep import run_sweep

__all__ = ["DemoPlan", "DemoResult", "demo_plan", "perceptron_schedule", "run_demo", "EXPONENT_KEYS"]

EXPONENT_KEYS = ("gamma1", "gamma2", "gamma_pred", "gamma_meas")


@dataclass(frozen=True)
class DemoPlan:
    """What the demo trains and measures.

    ``train`` holds the TrainConfig fields shared by every MNIST-1D run;
    the sweep is ``P`` x ``seeds``. ``perceptron`` is the perceptron
    experiment. ``measure`` plays lambda for the MNIST-1D network (more
    measures in ``extra_measures`` are computed and reported too).
    """

    P: tuple[int, ...]
    seeds: tuple[int, ...]
    train: dict[str, Any]
    perceptron: PerceptronExperiment
    measure: str = "spectral_complexity"
    extra_measures: tuple[str, ...] = ()
    perceptron_measure: str = "perceptron_lambda"
    fit: dict[str, Any] = field(default_factory=dict)


def perceptron_schedule(K: int, steps: int) -> str:
    """``log:K`` over ``steps`` without step 0: the perceptron starts from w = 0, where lambda = 0 has no logarithm."""
    return "at:" + ",".join(str(p) for p in log_points(K, steps))


def demo_plan(*, quick: bool = False, seed: int = 0) -> DemoPlan:
    """The demo's settings (``quick``: the smoke-test size); seeds are ``seed``, ``seed + 1``, ..."""
    seeds = tuple(seed + k for k in range(3))
    # The MNIST-1D paper's 1-D CNN at its learning rate, 20 % of the training labels wrong (the same noisy pool
    # for every P and seed): the noise makes the overfitting branch after each test-error minimum clear. Equal
    # step counts for every P keep the sweep cheap; 3000 steps pass the latest minimum (P = 4000, near step 500)
    # by a factor 6 (docs/demo.md: what was tried and why).
    train = dict(
        model="cnn1d",
        dataset="mnist1d",
        dataset_params={"label_noise": 0.2},
        optimizer="adam",
        lr=1e-2,
        batch_size=128,
        init_factor=1.0,
        steps=3000,
        schedule="log:30",
    )
    # The perceptron command's quick experiment, without the step-0 checkpoint.
    quick_exp = perceptron_experiment(quick=True)
    perceptron = replace(
        quick_exp,
        seeds=seeds,
        teacher_seed=seed,
        schedule=perceptron_schedule(30, quick_exp.steps),
    )
    fit: dict[str, Any] = {}  # the automatic law-1 window, every P
    if quick:
        # A smoke test: 1200 steps still pass every minimum, the rise after it is shorter.
        train.update(steps=1200, schedule="log:15")
        perceptron = replace(
            perceptron,
            seeds=seeds[:2],
            steps=1500,
            schedule=perceptron_schedule(20, 1500),
        )
        return DemoPlan(P=(250, 1000, 4000), seeds=seeds[:2], train=train, perceptron=perceptron, fit=fit)
    return DemoPlan(
        P=(250, 500, 1000, 2000, 4000),
        seeds=seeds,
        train=train,
        perceptron=perceptron,
        extra_measures=("path_norm",),
        fit=fit,
    )


@dataclass
class DemoResult:
    """Where the demo wrote its report, the fitted exponents per experiment, timings and failures."""

    out: Path
    report: ReportSummary
    exponents: dict[str, dict[str, float | None]]
    seconds: dict[str, float]
    failures: list[str]


def _train_mnist1d(plan: DemoPlan, store: Path, data_root: Path, jobs: int, say: Callable[[str], None]) -> list[str]:
    configs = [
        TrainConfig.from_mapping(
            {**plan.train, "P": P, "seed": s, "store": str(store), "data_root": str(data_root), "device": "cpu"},
            source="demo",
        ).validate()
        for P in plan.P
        for s in plan.seeds
    ]
    failures = []
    done = 0
    for task, outcome in run_sweep(configs, store=str(store), progress=False, device="cpu", jobs=jobs):
        done += 1
        if isinstance(outcome, BaseException):
            failures.append(f"training {task['config']['P']}/{task['config']['seed']}: {outcome}")
        say(
            f"  [{done}/{len(configs)}] P={task['config']['P']} seed={task['config']['seed']}: "
            f"{'failed' if isinstance(outcome, BaseException) else 'done'}"
        )
    return failures


def _analyze(store: Path, measures: tuple[str, ...], jobs: int) -> list[str]:
    summary = analyze_store(store, measures, jobs=jobs)
    return summary.run_errors + [f for o in summary.outcomes for f in o.failures]


def run_demo(
    out: str | os.PathLike[str],
    *,
    quick: bool = False,
    seed: int = 0,
    jobs: int = 2,
    plan: DemoPlan | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> DemoResult:
    """Run the demo into the new directory ``out``.

    ``plan`` overrides :func:`demo_plan`; ``say`` gets progress lines.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: not empty; the demo writes into a new directory (delete it or choose another)")
    plan = plan or demo_plan(quick=quick, seed=seed)
    stores = {"mnist1d": out / "stores" / "mnist1d", "perceptron": out / "stores" / "perceptron"}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    say(
        f"training {len(plan.P) * len(plan.seeds)} MNIST-1D runs (P = {', '.join(map(str, plan.P))}; "
        f"{len(plan.seeds)} seeds) ..."
    )
    failures = _train_mnist1d(plan, stores["mnist1d"], out / "data", jobs, say)
    seconds["train_mnist1d"] = time.perf_counter() - t0
    t = time.perf_counter()
    say("computing the measures on every checkpoint ...")
    failures += _analyze(stores["mnist1d"], (plan.measure, *plan.extra_measures), jobs)
    seconds["analyze_mnist1d"] = time.perf_counter() - t
    t = time.perf_counter()
    exp = plan.perceptron
    say(
        f"training {len(exp.alphas) * len(exp.seeds)} perceptrons (N = {exp.N}, alpha = "
        f"{', '.join(f'{a:g}' for a in exp.alphas)}) ..."
    )
    try:
        train_perceptrons(exp.configs(stores["perceptron"]), progress=False)
    except NormdynError as exc:
        failures.append(f"perceptron: {exc}")
    # In this process: forking workers after torch has run its thread pool here can deadlock them.
    failures += _analyze(stores["perceptron"], (plan.perceptron_measure,), 1)
    seconds["perceptron"] = time.perf_counter() - t
    t = time.perf_counter()
    say("fitting and writing the report ...")
    report = build_report(
        [str(stores["mnist1d"]), str(stores["perceptron"])],
        out / "report",
        fit_kwargs=plan.fit,
        store_fit_kwargs={str(stores["perceptron"]): {"options": fit_options(exp.alphas, exp.N)}},
        command_line=f"normdyn demo --out {out} --seed {seed}" + (" --quick" if quick else ""),
    )
    seconds["report"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    exponents = {
        Path(t.store).name + "/" + t.measure: {
            k: (t.fit_json or {}).get(k)
            for k in (*EXPONENT_KEYS, "gamma1_err", "gamma2_err", "sigma", "gamma_meas_err")
        }
        for t in report.targets
    }
    failures += [f"report {t.store} {t.measure}: {t.error or t.fit_error or t.section_errors}" for t in report.failed]
    return DemoResult(out, report, exponents, seconds, failures)
