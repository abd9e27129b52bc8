"""measure_model: a measure on an object in memory equals what normdyn analyze stores for the same weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from normdyn.analyzers import measure_model
from normdyn.analyzers.analyze import analyze_store
from normdyn.core.errors import MeasureError
from normdyn.core.store import Run
from normdyn.trainer import Recorder

MEASURES = ("spectral_complexity", "spectral_complexity_dn", "frobenius", "path_norm", "spectral_complexity_op")

USER_MODEL = """
import torch
from torch import nn


def make():
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)
    )
"""


def test_measure_model_equals_the_stored_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    (tmp_path / "mm_models.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(lambda: sys.modules.pop("mm_models", None))  # no leak to later tests
    import mm_models  # type: ignore[import-not-found]

    model = mm_models.make()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 1.5)
    rec = Recorder(
        tmp_path / "runs",
        run_id="r",
        schedule="log:1",
        total_steps=1,
        model_factory="mm_models:make",
        input_shape=(2, 8, 8),
        P=10,
    )
    rec.save(model, step=1)
    rec.close()
    assert analyze_store([tmp_path / "runs"], list(MEASURES)).failed == 0
    run = Run(tmp_path / "runs" / "r")
    for name in MEASURES:
        stored = float(run.read_measure(name).values[0])
        value = measure_model(model, name, input_shape=(2, 8, 8))
        # the same float32 weights through the same code path: equal up to summation-order rounding
        assert value == pytest.approx(stored, rel=1e-6), name
    assert model.training  # the caller's module was copied, not switched to eval mode


def test_a_state_dict_with_a_spec_and_the_refusals() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    spec_value = measure_model(model, "spectral_complexity_dn", input_shape=(4,))
    from normdyn.core import plugins

    spec = plugins.get("models", "factory").spec_of(model, input_shape=(4,))
    assert measure_model(model.state_dict(), "spectral_complexity_dn", model_spec=spec) == pytest.approx(
        spec_value,
        rel=1e-12,  # identical inputs, identical code: only the view differs
    )
    with pytest.raises(MeasureError, match="give input_shape="):
        measure_model(model, "frobenius")
    with pytest.raises(MeasureError, match="expected an nn.Module or a state dict, got list"):
        measure_model([1, 2], "frobenius")  # type: ignore[arg-type]
