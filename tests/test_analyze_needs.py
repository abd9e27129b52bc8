"""A measure's `needs` is honoured: refused once per run, before any checkpoint is read, with the flag to give."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from normdyn.core.cli import cli
from normdyn.core.store import Run


def _spec_less_run(store: Path) -> Run:
    run = Run.create(store, "bare", config={}, model_spec={}, dataset={}, P=8, seed=0)
    gen = torch.Generator().manual_seed(0)
    for step in (0, 1, 2):
        run.append_checkpoint(
            {"fc1.weight": torch.randn(5, 4, generator=gen), "fc2.weight": torch.randn(3, 5, generator=gen)},
            step=step,
            epoch=float(step),
        )
    return run


def test_model_and_data_measures_are_refused_once_before_any_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _spec_less_run(tmp_path)
    reads: list[int] = []
    original = Run.checkpoint

    def counting(self: Run, i: int, *, verify: bool = True):  # type: ignore[no-untyped-def]
        reads.append(i)
        return original(self, i, verify=verify)

    monkeypatch.setattr(Run, "checkpoint", counting)
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "-m", "path_norm", "-m", "margin", "--quiet"])
    assert result.exit_code == 1
    assert reads == []  # refused before any checkpoint was read
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: bare path_norm (all 3 checkpoints): path_norm needs the model, but the run has no model spec "
        "naming a model family; import it with `normdyn import --model-factory MODULE:CALLABLE --input-shape "
        "C,H,W` (your own architecture) or `--model SPEC` (a built-in family)",
        "error: bare margin (all 3 checkpoints): margin needs the model and the data, but the run has no model "
        "spec naming a model family; import it with `normdyn import --model-factory MODULE:CALLABLE "
        "--input-shape C,H,W` (your own architecture) or `--model SPEC` (a built-in family); and the run has no "
        "dataset spec; import it with `normdyn import --dataset '{\"name\": ...}'` (and `normdyn analyze "
        "--data-root DIR` where the files are)",
    ]
    assert result.stdout.strip().endswith("1 run(s): 0 computed, 0 skipped, 6 failed")
    rec = run.read_measure("path_norm")
    assert rec is not None and bool(torch.isnan(torch.as_tensor(rec.values)).all())
    assert sorted(rec.errors) == [0, 1, 2]


def test_weight_measures_still_run_beside_a_refused_one(tmp_path: Path) -> None:
    run = _spec_less_run(tmp_path)
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "-m", "frobenius", "-m", "path_norm", "--quiet"])
    assert result.exit_code == 1
    assert result.stdout.strip().endswith("1 run(s): 3 computed, 0 skipped, 3 failed")
    values = run.read_measure("frobenius").values
    assert values.shape == (3,) and bool((values > 0).all())
