"""`normdyn analyze`: stored results, incremental skips (counted), per-item failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normdyn.analyzers.api import analyze_store, load_curves, measure_table
from normdyn.core.cli import cli
from normdyn.core.layers import LayerSpec
from normdyn.core.store import Run

LAYERS = [
    LayerSpec(name="l0", kind="linear", weight="l0.weight", bias="l0.bias", in_channels=5).to_dict(),
    LayerSpec(name="l1", kind="linear", weight="l1.weight", in_channels=4).to_dict(),
]


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "l0.weight": torch.randn(4, 5, generator=g),
        "l0.bias": torch.randn(4, generator=g),
        "l1.weight": torch.randn(3, 4, generator=g),
    }


def _make_run(store: Path, run_id: str, steps: list[int], seed: int = 0) -> Run:
    run = Run.create(store, run_id, config={}, model_spec={"layers": LAYERS}, dataset={}, P=10, seed=seed)
    for i, step in enumerate(steps):
        run.append_checkpoint(_state(100 * seed + i), step=step, epoch=float(i))
    return run


def _bartlett(sd: dict[str, torch.Tensor]) -> float:
    mats = [sd["l0.weight"].double().numpy(), sd["l1.weight"].double().numpy()]
    s = [np.linalg.svd(m, compute_uv=False)[0] for m in mats]
    t = [np.linalg.norm(m, axis=1).sum() for m in mats]
    return float(np.prod(s) * sum((a / b) ** (2 / 3) for a, b in zip(t, s)) ** 1.5)


def test_analyze_stores_values_then_skips_everything(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "a", [0, 1, 5])
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "-m", "spectral_complexity", "-m", "frobenius", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output == "1 run(s): 6 computed, 0 skipped, 0 failed\n"
    rec = run.read_measure("spectral_complexity")
    assert rec.values == pytest.approx([_bartlett(run.load_state_dict(i)) for i in range(3)], rel=1e-6)
    assert rec.sha256 == list(run.checkpoints()["sha256"])
    assert rec.plugin == "measures.spectral" and rec.version == "1"  # the entry point that registered it
    assert rec.params == {"fold_bn": True, "include_bias": False, "tol": 1e-7}
    again = CliRunner().invoke(cli, ["analyze", str(tmp_path), "-m", "spectral_complexity", "-m", "frobenius", "-q"])
    assert again.output == "1 run(s): 0 computed, 6 skipped, 0 failed\n"
    run.append_checkpoint(_state(99), step=9, epoch=3.0)
    third = analyze_store(tmp_path, ["spectral_complexity"])
    assert (third.computed, third.skipped, third.failed) == (1, 3, 0)
    forced = analyze_store(tmp_path, ["spectral_complexity"], force=True)
    assert (forced.computed, forced.skipped) == (4, 0)


def test_new_params_or_version_recompute(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "a", [0, 1])
    analyze_store(tmp_path, ["frobenius"])
    rec = run.read_measure("frobenius")
    rec.version = "0"
    run.write_measure("frobenius", rec)
    assert analyze_store(tmp_path, ["frobenius"]).computed == 2


def test_dict_measure_stores_one_record_per_key_and_is_incremental(tmp_path: Path) -> None:
    conv = LayerSpec(
        name="c",
        kind="conv2d",
        weight="c.weight",
        in_channels=1,
        in_shape=(4, 4),
        stride=(1, 1),
        padding=(1, 1),
        dilation=(1, 1),
    ).to_dict()
    run = Run.create(tmp_path, "conv", config={}, model_spec={"layers": [conv]}, dataset={}, P=1, seed=0)
    for step in (0, 1):
        run.append_checkpoint({"c.weight": torch.randn(2, 1, 3, 3)}, step=step, epoch=0.0)
    assert analyze_store(tmp_path, ["conv_operator_norm"]).computed == 2
    assert run.measures() == ["conv_operator_norm.c"]
    assert analyze_store(tmp_path, ["conv_operator_norm"]).skipped == 2


def test_failures_are_recorded_per_item_and_the_batch_goes_on(tmp_path: Path) -> None:
    good = _make_run(tmp_path, "good", [0, 1])
    bad = _make_run(tmp_path, "bad", [0, 1, 2, 3])
    nan_state = _state(7)
    nan_state["l1.weight"][0, 0] = float("nan")
    bad.append_checkpoint(nan_state, step=4, epoch=4.0)
    wrong = _state(8)
    wrong["l1.weight"] = torch.randn(3, 4, 2)
    bad.append_checkpoint(wrong, step=5, epoch=5.0)
    (bad.path / bad.checkpoints()["file"][1]).unlink()
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "-m", "spectral_complexity", "-q"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-1] == "2 run(s): 5 computed, 0 skipped, 3 failed"
    errors = [lay for lay in lines if lay.startswith("error: ")]
    assert errors[0] == (
        f"error: bad step 1 spectral_complexity: {bad.path / 'ckpt/step-0000000001.safetensors'}: "
        f"checkpoint file does not exist"
    )
    assert "bad step 4 spectral_complexity:" in errors[1] and "tensor(s) l1.weight hold NaN or inf values" in errors[1]
    # the store's verified read refuses a layout unlike the run's first checkpoint before the view sees it
    assert errors[2].startswith(
        f"error: bad step 5 spectral_complexity: {bad.path / 'ckpt/step-0000000005.safetensors'}: tensor 'l1.weight' "
    )
    assert "in the run's first checkpoint" in errors[2]
    rec = bad.read_measure("spectral_complexity")
    assert sorted(rec.errors) == [1, 4, 5] and np.isnan(rec.values[[1, 4, 5]]).all()
    assert np.isfinite(rec.values[[0, 2, 3]]).all()
    assert np.isfinite(good.read_measure("spectral_complexity").values).all()
    retry = analyze_store(tmp_path, ["spectral_complexity"])  # failed rows are retried, good ones skipped
    assert (retry.computed, retry.skipped, retry.failed) == (0, 5, 3)


def test_a_checkpoint_unlike_its_spec_fails_with_the_layer_named(tmp_path: Path) -> None:
    run = Run.create(tmp_path, "misfit", config={}, model_spec={"layers": LAYERS}, dataset={}, P=10, seed=0)
    wrong = _state(8)
    wrong["l1.weight"] = torch.randn(3, 4, 2)
    run.append_checkpoint(wrong, step=0, epoch=0.0)
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "-m", "spectral_complexity", "-q"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: misfit step 0 spectral_complexity: {run.path / 'ckpt/step-0000000000.safetensors'}: layer 'l1' "
        "(linear) expects a 2-D weight 'l1.weight', found shape [3, 4, 2]; the checkpoint does not match its "
        "model spec",
        "1 run(s): 0 computed, 0 skipped, 1 failed",
    ]


def test_unknown_measure_lists_the_available_ones(tmp_path: Path) -> None:
    _make_run(tmp_path, "a", [0])
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "-m", "spectral_complexty"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown measure 'spectral_complexty'; available: conv_operator_norm, ")
    assert "spectral_complexity, spectral_complexity_dn" in result.output


def test_runs_glob_and_parallel_jobs(tmp_path: Path) -> None:
    for i in range(3):
        _make_run(tmp_path, f"r{i}", [0, 1], seed=i)
    _make_run(tmp_path, "other", [0])
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "--runs", "r*", "-m", "l1", "-j", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output == "3 run(s): 6 computed, 0 skipped, 0 failed\n"
    assert Run(tmp_path / "other").measures() == []
    table = measure_table(tmp_path, ["l1"], runs="r*")
    assert len(table) == 6 and set(table["run_id"]) == {"r0", "r1", "r2"}
    curves = load_curves(tmp_path / "r1", ["l1"])
    expected = [sum(float(t.abs().sum()) for t in Run(tmp_path / "r1").load_state_dict(i).values()) for i in range(2)]
    assert curves["l1"] == pytest.approx(expected, rel=1e-6) and list(curves["step"]) == [0, 1]
