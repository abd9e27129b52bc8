"""Store round trips: tensors, metadata, metrics, measures, lazy reads."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from normdyn.core.checkpoint import CheckpointFile, sha256_file
from normdyn.core.errors import StoreError
from normdyn.core.store import FORMAT, MeasureRecord, Run, list_runs


def make_run(store: Path, run_id: str = "r0", P: int = 100, seed: int = 3) -> Run:
    return Run.create(
        store,
        run_id,
        config={"lr": 0.001, "model": "mlp"},
        model_spec={"name": "mlp", "layers": []},
        dataset={"name": "toy", "n": 5},
        P=P,
        seed=seed,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensors_round_trip_bitwise(tmp_path: Path, dtype: torch.dtype) -> None:
    run = make_run(tmp_path)
    gen = torch.Generator().manual_seed(0)
    state = {
        "layer.weight": (torch.randn(17, 9, generator=gen) * 1e3).to(dtype),
        "layer.bias": torch.randn(17, generator=gen).to(dtype),
        "special": torch.tensor([float("inf"), float("-inf"), 0.0, -0.0, 1e-8], dtype=dtype),
    }
    run.append_checkpoint(state, step=0, epoch=0.0)
    back = run.load_state_dict(0)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == dtype
        assert torch.equal(
            back[k].view(torch.int16 if dtype != torch.float32 else torch.int32),
            v.view(torch.int16 if dtype != torch.float32 else torch.int32),
        )
        assert torch.equal(run.checkpoint(0).get(k).view(torch.uint8), v.contiguous().view(torch.uint8))


def test_metadata_and_metrics_preserved(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.append_checkpoint(
        {"w": torch.ones(2)}, step=0, epoch=0.0, samples_seen=0, metrics={"test_error": 0.5, "train_loss": 1.25}
    )
    run.append_checkpoint(
        {"w": torch.ones(2) * 2},
        step=117,
        epoch=3.0,
        samples_seen=468,
        metrics={"test_error": 0.25, "train_error": 0.125, "lam": 7.5},
    )
    table = run.checkpoints()
    assert table["step"].tolist() == [0, 117]
    assert table["epoch"].tolist() == [0.0, 3.0]
    assert table["samples_seen"].tolist() == [0, 468]
    assert table["test_error"].tolist() == [0.5, 0.25]
    assert np.isnan(table["train_error"][0]) and table["train_error"][1] == 0.125
    assert np.isnan(table["lam"][0]) and table["lam"][1] == 7.5  # extra column, created on first use
    assert table["file"].tolist() == ["ckpt/step-0000000000.safetensors", "ckpt/step-0000000117.safetensors"]
    for i in range(2):
        path = run.path / table["file"][i]
        assert table["sha256"][i] == sha256_file(path)
        assert table["bytes"][i] == path.stat().st_size
    meta = run.checkpoint(1).metadata
    assert meta["format"] == FORMAT and meta["run_id"] == "r0" and meta["step"] == "117"
    assert float(meta["epoch"]) == 3.0
    assert json.loads(meta["metrics"])["test_error"] == 0.25
    assert json.loads(meta["run"])["config"] == {"lr": 0.001, "model": "mlp"}
    attrs = run.attrs
    assert (attrs["P"], attrs["seed"], attrs["status"]) == (100, 3, "running")
    assert attrs["dataset"] == {"name": "toy", "n": 5}
    assert attrs["torch_version"] == str(torch.__version__)
    run.set_status("complete")
    assert Run(run.path).status == "complete"


def test_index_is_readable_with_h5py_alone(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.append_checkpoint({"w": torch.ones(2)}, step=0, epoch=0.0, metrics={"test_error": 0.5})
    with h5py.File(run.index, "r") as f:
        assert f.attrs["format"] == FORMAT
        assert f["checkpoints/step"][()].tolist() == [0]
        assert f["checkpoints/test_error"][()].tolist() == [0.5]
        assert json.loads(f.attrs["config"])["lr"] == 0.001


def test_steps_must_increase(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.append_checkpoint({"w": torch.ones(2)}, step=5, epoch=1.0)
    with pytest.raises(StoreError, match="step 5 is not after the last checkpoint"):
        run.append_checkpoint({"w": torch.ones(2)}, step=5, epoch=1.0)
    assert len(run) == 1


def test_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    make_run(tmp_path).append_checkpoint({"w": torch.ones(2)}, step=0, epoch=0.0)
    with pytest.raises(StoreError, match="already exists"):
        make_run(tmp_path)
    again = Run.create(tmp_path, "r0", config={}, model_spec={}, dataset={}, P=1, seed=0, exist_ok=True)
    assert len(again) == 1 and again.P == 100


def test_measures_aligned_with_provenance(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    for s in (0, 1, 2):
        run.append_checkpoint({"w": torch.full((2,), float(s))}, step=s, epoch=float(s))
    sha = run.checkpoints()["sha256"].tolist()
    rec = MeasureRecord(
        np.array([1.0, np.nan, 3.0]),
        plugin="normdyn.plugins.x",
        version="2",
        params={"bias": False},
        sha256=[sha[0], "", sha[2]],
        errors={1: "NaN weights"},
    )
    run.write_measure("frobenius", rec)
    back = run.read_measure("frobenius")
    assert back is not None
    np.testing.assert_array_equal(back.values, rec.values)
    assert (back.plugin, back.version, back.params) == ("normdyn.plugins.x", "2", {"bias": False})
    assert back.sha256 == rec.sha256 and back.errors == {1: "NaN weights"}
    run.append_checkpoint({"w": torch.ones(2)}, step=3, epoch=3.0)
    grown = run.read_measure("frobenius")
    assert grown is not None and len(grown.values) == 4 and np.isnan(grown.values[3]) and grown.sha256[3] == ""
    assert run.measures() == ["frobenius"] and run.read_measure("nope") is None
    with pytest.raises(StoreError, match="3 values and 3 hashes for 4 checkpoints"):
        run.write_measure("frobenius", rec)


def test_long_sha_lists_fit(tmp_path: Path) -> None:
    """Thousands of checkpoints: the sha256 provenance exceeds HDF5's 64 KiB compact attribute limit."""
    run = make_run(tmp_path)
    run.append_checkpoint({"w": torch.ones(1)}, step=0, epoch=0.0)
    with run._mutate() as f:  # grow the table cheaply instead of writing 3000 files
        for name in f["checkpoints"]:
            d = f["checkpoints"][name]
            d.resize((3000,))
    rec = MeasureRecord(np.arange(3000.0), sha256=["f" * 64] * 3000)
    run.write_measure("m", rec)
    back = run.read_measure("m")
    assert back is not None and back.sha256 == ["f" * 64] * 3000


def test_reading_one_tensor_reads_only_its_bytes(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    state = {"small": torch.arange(10, dtype=torch.float32), "big": torch.zeros(4_000_000)}
    run.append_checkpoint(state, step=0, epoch=0.0)
    ck = run.checkpoint(0)
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs Linux /proc/self/io to count bytes read")

    def rchar() -> int:
        return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar")).split()[1])

    before = rchar()
    small = ck.get("small")
    read = rchar() - before
    assert torch.equal(small, state["small"])
    assert ck.path.stat().st_size > 16_000_000
    assert read < 64_000, f"read {read} bytes to get a 40-byte tensor"


def test_list_runs(tmp_path: Path) -> None:
    make_run(tmp_path, "b")
    make_run(tmp_path, "a")
    (tmp_path / "not-a-run").mkdir()
    assert [r.run_id for r in list_runs(tmp_path)] == ["a", "b"]
    with pytest.raises(StoreError, match="no such store directory"):
        list_runs(tmp_path / "missing")
    with pytest.raises(StoreError, match="this is a run directory, not a store"):
        list_runs(tmp_path / "a")


def test_resume_state_round_trip(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert run.load_resume() is None
    run.save_resume({"opt.exp_avg": torch.ones(3)}, {"step": 12, "rng": [1, 2, 3]})
    tensors, meta = run.load_resume()  # type: ignore[misc]
    assert torch.equal(tensors["opt.exp_avg"], torch.ones(3)) and meta == {"step": 12, "rng": [1, 2, 3]}


def test_a_damaged_resume_state_is_refused(tmp_path: Path) -> None:
    """No index records the resume file, so it carries the sha256 of its own tensor data."""
    run = make_run(tmp_path)
    run.save_resume({"opt.exp_avg": torch.arange(64, dtype=torch.float32)}, {"step": 3})
    path = run.path / "resume" / "latest.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of one float: still a valid file, a different value
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"{path}: the resume state is damaged \(its tensors' sha256 differs"):
        run.load_resume()
    # a resume state written before the hash existed (no payload_sha256 key) is read as it is
    from safetensors.torch import save_file

    save_file({"opt.exp_avg": torch.ones(2)}, str(path), metadata={"format": "normdyn-run/1", "resume": "{}"})
    tensors, meta = run.load_resume()  # type: ignore[misc]
    assert torch.equal(tensors["opt.exp_avg"], torch.ones(2)) and meta == {}


def test_checkpoint_file_errors_name_the_file(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.append_checkpoint({"w": torch.ones(100)}, step=0, epoch=0.0)
    path = run.path / run.checkpoints()["file"][0]
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(StoreError, match=rf"{path}: truncated safetensors file"):
        CheckpointFile(path)
    path.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(StoreError, match=rf"{path}: corrupted safetensors header"):
        CheckpointFile(path)
    path.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(StoreError, match="header claims"):
        CheckpointFile(path)
    with pytest.raises(StoreError, match="does not exist"):
        CheckpointFile(tmp_path / "nope.safetensors")
