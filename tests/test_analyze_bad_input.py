"""`normdyn analyze` on bad input: one bad checkpoint fails its row, one bad run fails itself,
the batch goes on, every message names the file, key or value, and the exit status is 1."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normdyn.core.checkpoint import sha256_file
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


def _make_run(store: Path, run_id: str, n: int, layers: Any = LAYERS) -> Run:
    run = Run.create(store, run_id, config={}, model_spec={"layers": layers}, dataset={}, P=10, seed=0)
    for i in range(n):
        run.append_checkpoint(_state(i), step=i, epoch=float(i))
    return run


def _analyze(store: Path, *measures: str) -> tuple[int, list[str]]:
    args = ["analyze", str(store), "-q"]
    for m in measures or ("spectral_complexity",):
        args += ["-m", m]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output.splitlines()


def _set_index_hash(run: Run, row: int, path: Path) -> None:
    """Make the index agree with a rewritten file, so the file's own defect is what is found."""
    with h5py.File(run.index, "r+") as f:
        f["checkpoints/sha256"][row] = sha256_file(path)
        f["checkpoints/bytes"][row] = path.stat().st_size


def test_a_negative_shape_in_one_header_fails_only_that_row(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "r", 3)
    path = run.path / "ckpt/step-0000000001.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["l0.weight"]["shape"] = [-4, -5]  # 20 elements, like [4, 5]: the offsets still agree
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    _set_index_hash(run, 1, path)
    code, lines = _analyze(tmp_path)
    assert code == 1
    assert lines[-1] == "1 run(s): 2 computed, 0 skipped, 1 failed"
    assert lines[0].startswith(f"error: r step 1 spectral_complexity: {path}: ")
    assert "-4" in lines[0], lines[0]
    rec = run.read_measure("spectral_complexity")
    assert np.isfinite(rec.values[[0, 2]]).all() and sorted(rec.errors) == [1]


def test_an_unreadable_checkpoint_fails_only_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _make_run(tmp_path, "r", 3)
    locked = run.path / "ckpt/step-0000000002.safetensors"
    real_read_bytes = Path.read_bytes

    def guarded_read_bytes(self: Path) -> bytes:
        # chmod 000 does not stop root; refuse the one file the way the OS would
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", guarded_read_bytes)
    # the verified read opens the file itself (it reads into a buffer that tensors can view)
    monkeypatch.setattr("normdyn.core.checkpoint.open", guarded_open, raising=False)
    code, lines = _analyze(tmp_path)
    assert code == 1
    assert lines[0].startswith(f"error: r step 2 spectral_complexity: {locked}: cannot read the checkpoint")
    assert "Permission denied" in lines[0]
    assert lines[1:] == ["1 run(s): 2 computed, 0 skipped, 1 failed"]


def test_a_broken_layer_spec_fails_its_rows_and_the_other_runs_go_on(tmp_path: Path) -> None:
    broken = [LAYERS[0], {"name": "l1", "kind": "linear"}]
    _make_run(tmp_path, "bad", 2, layers=broken)
    _make_run(tmp_path, "good", 2)
    code, lines = _analyze(tmp_path)
    assert code == 1
    assert lines == [
        f"error: bad step {step} spectral_complexity: model_spec['layers'][1]: layer spec 'l1': missing keys ['weight']"
        for step in (0, 1)
    ] + ["2 run(s): 2 computed, 0 skipped, 2 failed"]
    bad_geometry = [{**LAYERS[0], "stride": [0]}, LAYERS[1]]
    _make_run(tmp_path / "s2", "geo", 1, layers=bad_geometry)
    code, lines = _analyze(tmp_path / "s2")
    assert lines[0] == (
        "error: geo step 0 spectral_complexity: model_spec['layers'][0]: layer spec 'l0': "
        "stride [0] is not a list of integers >= 1"
    )


def test_bad_runs_and_stores_are_named(tmp_path: Path) -> None:
    _make_run(tmp_path, "good", 1)
    Run.create(tmp_path, "empty", config={}, model_spec={}, dataset={}, P=1, seed=0)
    (tmp_path / "orphan" / "ckpt").mkdir(parents=True)
    listed = _make_run(tmp_path, "listed", 1)
    with h5py.File(listed.index, "r+") as f:
        f.attrs["model_spec"] = json.dumps([1, 2])
    code, lines = _analyze(tmp_path)
    assert code == 1
    assert lines == [
        f"error: {tmp_path / 'orphan'}: not a normdyn run (no run.h5); "
        "run `normdyn store fsck --repair` on its store if checkpoints exist",
        f"error: empty: {tmp_path / 'empty'}: no checkpoints to analyse (its index lists none)",
        f"error: listed: {listed.index}: attribute 'model_spec' is a JSON list, not an object",
        "1 run(s): 1 computed, 0 skipped, 3 failed",
    ]


def test_unequal_index_columns_are_an_error_not_a_partial_result(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "r", 3)
    with h5py.File(run.index, "r+") as f:
        f["checkpoints/step"].resize((2,))
    code, lines = _analyze(tmp_path)
    assert code == 1
    assert lines[0].startswith(f"error: r: {run.index}: /checkpoints columns have unequal lengths (")
    assert "sha256 3" in lines[0] and "step 2" in lines[0]
    assert run.measures() == []


def test_bad_arguments(tmp_path: Path) -> None:
    _make_run(tmp_path, "r", 1)
    code, lines = _analyze(tmp_path, "nosuch")
    assert code == 1 and lines[0].startswith("Error: unknown measure 'nosuch'; available: conv_operator_norm, ")
    code, lines = _analyze(tmp_path / "absent")
    assert (code, lines) == (1, [f"Error: {tmp_path / 'absent'}: no such store directory"])
    code, lines = _analyze(tmp_path / "r")
    assert (code, lines) == (1, [f"Error: {tmp_path / 'r'}: this is a run directory, not a store; pass its parent"])
    code, lines = _analyze(tmp_path, "spectral_complexity", "frobenius")
    assert code == 0 and lines == ["1 run(s): 2 computed, 0 skipped, 0 failed"]
