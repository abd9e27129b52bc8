"""The Recorder: normdyn runs written from a plain PyTorch loop, crash-safe and analysable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from normdyn.analyzers.analyze import analyze_store
from normdyn.core.errors import ConfigError
from normdyn.core.fsck import fsck_store
from normdyn.core.schedule import parse_schedule
from normdyn.core.store import Run
from normdyn.trainer import Recorder

USER_MODEL = """
import torch
from torch import nn


def make(width=8, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 36, classes))
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "my_models.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models:make"
    sys.modules.pop("my_models", None)  # the next test's tmp_path holds another file of that name


def _loop(rec: Recorder, model: nn.Module, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 6, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    for step in range(steps + 1):
        if rec.due(step):
            with torch.no_grad():
                err = float((model(x).argmax(1) != y).float().mean())
            rec.save(model, step=step, metrics={"train_error": err, "test_error": max(err, 1e-3)})
        if step < steps:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


def test_a_plain_loop_records_a_run_that_fsck_and_analyze_accept(tmp_path: Path, user_module: str) -> None:
    import my_models  # type: ignore[import-not-found]

    model = my_models.make()
    store = tmp_path / "runs"
    with Recorder(
        store, run_id="r0", schedule="log:8", total_steps=40, model_factory=user_module, input_shape=(1, 6, 6), P=32
    ) as rec:
        _loop(rec, model, 40)
    run = Run(store / "r0")
    assert run.status == "complete"
    assert run.checkpoints()["step"].tolist() == parse_schedule("log:8", 40)
    assert [r.ok for r in fsck_store(store)] == [True]
    summary = analyze_store([store], ["spectral_complexity", "path_norm", "conv_operator_norm"])
    assert summary.ok and summary.failed == 0
    for name in ("spectral_complexity", "path_norm", "conv_operator_norm.0"):  # one value per conv layer
        values = run.read_measure(name).values
        assert values.shape == (9,) and bool((values > 0).all()), name


def test_a_killed_recording_continues_without_losing_a_saved_point(tmp_path: Path, user_module: str) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys
            import torch
            sys.path.insert(0, {str(tmp_path)!r})
            import my_models
            from normdyn.trainer import Recorder
            kill_after = int(sys.argv[1])
            rec = Recorder({str(tmp_path / "runs")!r}, run_id="r", schedule="log:10", total_steps=100,
                           model_factory="my_models:make", input_shape=(1, 6, 6), P=32, seed=0)
            model = my_models.make()
            saved = 0
            for step in range(101):
                if rec.due(step):
                    with torch.no_grad():
                        for p in model.parameters():
                            p.mul_(1.01)
                    rec.save(model, step=step, metrics={{"test_error": 0.5}})
                    saved += 1
                    if saved == kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
            rec.close()
            """
        )
    )
    first = subprocess.run([sys.executable, str(script), "4"], capture_output=True, text=True)
    assert first.returncode == -9, first.stderr
    run = Run(tmp_path / "runs" / "r")
    points = parse_schedule("log:10", 100)
    assert run.checkpoints()["step"].tolist() == points[:4] and run.status == "running"
    second = subprocess.run([sys.executable, str(script), "0"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert run.checkpoints()["step"].tolist() == points and run.status == "complete"
    assert [r.ok for r in fsck_store(tmp_path / "runs")] == [True]


def test_the_recorder_refuses_what_it_cannot_record(tmp_path: Path, user_module: str) -> None:
    kw = dict(run_id="r", schedule="log:5", total_steps=10, input_shape=(1, 6, 6), P=32)
    with pytest.raises(ConfigError, match="give exactly one of model="):
        Recorder(tmp_path, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="P = -5; the training-set size must be a positive integer"):
        Recorder(tmp_path, model_factory=user_module, **{**kw, "P": -5})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"a forward pass on input shape 1,5,5 failed"):
        Recorder(tmp_path, model_factory=user_module, **{**kw, "input_shape": (1, 5, 5)})  # type: ignore[arg-type]
    rec = Recorder(tmp_path, model_factory=user_module, **kw)  # type: ignore[arg-type]
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3))
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match=r"step 0: tensor\(s\) 0.weight hold NaN or inf; not saved"):
        rec.save(model, step=0)
    with pytest.raises(ConfigError, match="exists with another config"):
        Recorder(tmp_path, model_factory=user_module, **{**kw, "config": {"lr": 1}})  # type: ignore[arg-type]


def test_a_recorded_module_without_factory_keeps_its_layers(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    rec = Recorder(tmp_path, run_id="m", schedule="log:2", total_steps=4, model=model, input_shape=(4,), P=10)
    rec.save(model, step=0)
    rec.close()
    spec = Run(tmp_path / "m").model_spec
    assert [layer["name"] for layer in spec["layers"]] == ["0", "2"]
    assert spec["factory"] is None and json.dumps(spec)
