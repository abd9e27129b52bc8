"""`normdyn import`: safetensors and weights-only .pt folders, steps, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from normdyn.analyzers.analyze import analyze_store
from normdyn.core.cli import cli
from normdyn.core.errors import StoreError
from normdyn.core.store import Run


def _sd(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(4, 6, generator=g),
        "fc1.bias": torch.randn(4, generator=g),
        "fc2.weight": torch.randn(2, 4, generator=g),
    }


class Payload:
    """Pickling this object would create a marker file if anything ever unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_import_safetensors_folder_infers_layers_and_analyses(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for step in (0, 10, 200):
        save_file(_sd(step), str(src / f"ckpt_{step:05d}.safetensors"))
    store = tmp_path / "store"
    result = CliRunner().invoke(cli, ["import", str(src), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{store / 'src'}: 3 imported, 0 already present, 0 failed\n"
    run = Run(store / "src")
    assert list(run.checkpoints()["step"]) == [0, 10, 200]
    assert torch.equal(run.load_state_dict(1)["fc2.weight"], _sd(10)["fc2.weight"])
    out = CliRunner().invoke(cli, ["analyze", str(store), "-m", "spectral_product", "-q"])
    assert out.exit_code == 0
    assert out.output.splitlines() == [
        f"warning: {run.path / 'ckpt/step-0000000000.safetensors'}: no model spec; layers inferred from parameter "
        "order in the file (2 layers: 2-D = linear, 4-D = conv2d without geometry)",
        "1 run(s): 3 computed, 0 skipped, 0 failed",
    ]
    again = CliRunner().invoke(cli, ["import", str(src), "--store", str(store)])
    assert again.output == f"{store / 'src'}: 0 imported, 3 already present, 0 failed\n"


def test_import_pt_with_steps_file_and_model_spec(tmp_path: Path) -> None:
    src = tmp_path / "pts"
    src.mkdir()
    torch.save(_sd(1), src / "early.pt")
    torch.save({"model_state_dict": _sd(2), "epoch": 3}, src / "late.pth")
    (src / "steps.txt").write_text("early.pt 5\nlate.pth, 50\n")
    layers = [
        {"name": "fc1", "kind": "linear", "weight": "fc1.weight", "bias": "fc1.bias"},
        {"name": "fc2", "kind": "linear", "weight": "fc2.weight"},
    ]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"layers": layers}))
    store = tmp_path / "store"
    result = CliRunner().invoke(
        cli,
        [
            "import",
            str(src),
            "--store",
            str(store),
            "--steps",
            str(src / "steps.txt"),
            "--model",
            str(spec),
            "--run-id",
            "mine",
            "--P",
            "64",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    run = Run(store / "mine")
    assert list(run.checkpoints()["step"]) == [5, 50] and (run.P, run.seed) == (64, 3)
    assert run.model_spec["layers"][0]["name"] == "fc1"
    assert analyze_store(store, ["frobenius"]).computed == 2


def test_pickled_objects_are_refused_never_executed(tmp_path: Path) -> None:
    src = tmp_path / "evil"
    src.mkdir()
    marker = tmp_path / "EXECUTED"
    torch.save({"w.weight": torch.zeros(2, 2), "payload": Payload(marker)}, src / "step_1.pt")
    torch.save(_sd(0), src / "step_2.pt")
    (src / "noise.pt").write_bytes(b"not a torch file")
    result = CliRunner().invoke(cli, ["import", str(src), "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert not marker.exists()
    lines = result.output.splitlines()
    assert lines[0].startswith(f"error: {src / 'noise.pt'}: refused: ")  # torch reads garbage as a bad pickle
    assert lines[1].startswith(
        f"error: {src / 'step_1.pt'}: refused: the file holds a pickled getattr, which is not a tensor"
    )
    assert lines[2] == f"{tmp_path / 'store' / 'evil'}: 1 imported, 0 already present, 2 failed"


def test_import_errors_name_the_problem(tmp_path: Path) -> None:
    src = tmp_path / "dups"
    src.mkdir()
    save_file(_sd(0), str(src / "a_1.safetensors"))
    save_file(_sd(1), str(src / "b_1.safetensors"))
    result = CliRunner().invoke(cli, ["import", str(src), "--store", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: {src}: step 1 is shared by a_1.safetensors, b_1.safetensors (none imported); use --steps FILE",
        f"{tmp_path / 's' / 'dups'}: 0 imported, 0 already present, 1 failed",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    out = CliRunner().invoke(cli, ["import", str(empty), "--store", str(tmp_path / "s")])
    assert out.output == (
        f"Error: {empty}: no checkpoint files (*.safetensors, *.pt, *.pth, *.bin, *.ckpt) and no step folders "
        "holding model.safetensors.index.json, model.safetensors, pytorch_model.bin\n"
    )
    with pytest.raises(StoreError, match="no such run directory"):
        Run(tmp_path / "s" / "empty")
