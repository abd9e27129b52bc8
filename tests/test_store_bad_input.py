"""A corpus of bad inputs for the store layer: each one a clear StoreError (or fsck
problem line) naming the file, attribute or value, and nothing stored is lost."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from normdyn.core.checkpoint import CheckpointFile, sha256_file, write_checkpoint
from normdyn.core.cli import cli
from normdyn.core.errors import StoreError
from normdyn.core.store import MeasureRecord, Run

REPAIR = "run `normdyn store fsck --repair` on its store"
CHANGED = "the checkpoint changed after it was written; run `normdyn store fsck`"


def make_run(store: Path, run_id: str = "r0", n_ckpt: int = 3) -> Run:
    run = Run.create(
        store,
        run_id,
        config={"lr": 0.1},
        model_spec={"name": "mlp"},
        dataset={"name": "toy"},
        P=100,
        seed=0,
    )
    for s in range(n_ckpt):
        run.append_checkpoint(
            {"w": torch.full((4, 4), float(s)), "b": torch.zeros(4)}, step=10 * s, epoch=float(s), metrics={}
        )
    return run


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ckpt_path(run: Run, i: int) -> Path:
    return run.path / run.checkpoints()["file"][i]


def split(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: Any, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def set_attr(run: Run, key: str, value: Any) -> None:
    with h5py.File(run.index, "r+") as f:
        if value is None:
            del f.attrs[key]
        else:
            f.attrs[key] = value


def reindex_file(run: Run, i: int) -> None:
    """Make the index agree with checkpoint ``i`` as it is now (an edit that fools the hash check)."""
    path = ckpt_path(run, i)
    with h5py.File(run.index, "r+") as f:
        f["checkpoints/sha256"][i] = sha256_file(path)
        f["checkpoints/bytes"][i] = path.stat().st_size


# ------------------------------------------------------------------ run attributes
def test_config_holding_a_json_list_is_a_clear_error(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    set_attr(run, "config", "[1, 2]")
    msg = f"{run.index}: attribute 'config' is a JSON array, not an object; {REPAIR}"
    with pytest.raises(StoreError, match=re.escape(msg)):
        dict(run.config)
    result = invoke("store", "fsck", str(tmp_path))
    assert result.exit_code == 1
    assert f"problem: {msg}" in result.output.splitlines()
    result = invoke("store", "fsck", "--repair", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert f"repaired: {run.index}: attribute(s) config restored from ckpt/step-0000000020.safetensors" in result.output
    assert run.config == {"lr": 0.1} and len(run) == 3


def test_missing_P_then_store_show(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    set_attr(run, "P", None)
    result = invoke("store", "show", str(run.path))
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"Error: {run.index}: attribute 'P' is missing; {REPAIR}"


def test_status_with_a_wrong_value(tmp_path: Path) -> None:
    bad = make_run(tmp_path, "r0", n_ckpt=1)
    make_run(tmp_path, "r1", n_ckpt=1)
    set_attr(bad, "status", "done")
    msg = f"{bad.index}: attribute 'status' is 'done', not one of running, complete, failed; {REPAIR}"
    with pytest.raises(StoreError, match=re.escape(msg)):
        _ = bad.status
    result = invoke("store", "ls", str(tmp_path))
    assert result.exit_code == 1
    assert f"error: {msg}" in result.output.splitlines()
    assert any(line.split()[:1] == ["r1"] for line in result.output.splitlines())  # the other run is listed


def test_seed_that_is_not_an_integer(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_ckpt=1)
    set_attr(run, "seed", "zero")
    with pytest.raises(StoreError, match=re.escape(f"{run.index}: attribute 'seed' is 'zero', not an integer")):
        _ = run.seed


def test_run_index_that_is_not_hdf5(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_ckpt=1)
    run.index.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(StoreError, match=re.escape(f"{run.index}: damaged index (")) as info:
        Run(run.path)
    assert str(info.value).endswith("run `normdyn store fsck --repair`")


# ------------------------------------------------------------------- the table
def test_missing_checkpoints_group(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_ckpt=1)
    with h5py.File(run.index, "r+") as f:
        del f["checkpoints"]
    msg = f"{run.index}: no /checkpoints group; the index is damaged: {REPAIR}"
    with pytest.raises(StoreError, match=re.escape(msg)):
        run.checkpoints()


def test_missing_checkpoint_column(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_ckpt=1)
    with h5py.File(run.index, "r+") as f:
        del f["checkpoints/sha256"]
    with pytest.raises(StoreError, match=re.escape(f"{run.index}: /checkpoints lacks column(s) sha256;")):
        run.checkpoints()


def test_columns_of_unequal_length(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with h5py.File(run.index, "r+") as f:
        f["checkpoints/test_error"].resize((2,))
    with pytest.raises(StoreError, match=r"/checkpoints columns have unequal lengths \(.*test_error 2.*\)") as info:
        run.checkpoints()
    assert "step 3" in str(info.value) and str(info.value).endswith(f"the index is damaged: {REPAIR}")
    with pytest.raises(StoreError, match="unequal lengths"):
        run.checkpoint(0)  # every reader refuses the table, none sees a partial row
    result = invoke("store", "fsck", str(tmp_path))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"problem: {run.index}: /checkpoints columns have unequal lengths" in result.output
    result = invoke("store", "fsck", "--repair", str(tmp_path))
    assert result.exit_code == 0 and "rebuilt from 3 checkpoint files" in result.output
    assert len(run.checkpoints()["test_error"]) == 3


def test_measure_of_the_wrong_length(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.write_measure("frob", MeasureRecord.empty(3, plugin="p", version="1"))
    with h5py.File(run.index, "r+") as f:
        f["measures/frob"].resize((5,))
    msg = f"{run.index}: measure 'frob' has 5 values for 3 checkpoints; {REPAIR} (it sets the measure aside"
    with pytest.raises(StoreError, match=re.escape(msg)):
        run.read_measure("frob")
    result = invoke("store", "show", str(run.path))
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith(f"Error: {msg}")
    result = invoke("store", "fsck", str(tmp_path))
    assert result.exit_code == 1 and f"problem: {msg}" in result.output
    result = invoke("store", "fsck", "--repair", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert f"repaired: {run.index}: removed measure(s) frob that do not fit the table" in result.output
    assert run.measures() == []
    aside = sorted(run.path.glob("run.h5.damaged-*"))
    assert len(aside) == 1
    with h5py.File(aside[0], "r") as f:  # the old record is kept, not lost
        assert f["measures/frob"].shape == (5,)


# -------------------------------------------------------------- verified reads
def test_changed_bytes_fail_the_hash_check(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = ckpt_path(run, 1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # a flipped bit in the tensor data: still a valid safetensors file
    path.write_bytes(bytes(data))
    expected = run.checkpoints()["sha256"][1]
    msg = f"{path}: sha256 mismatch (index {expected[:12]}..., file {sha256_file(path)[:12]}...); {CHANGED}"
    with pytest.raises(StoreError, match=re.escape(msg)):
        run.checkpoint(1)
    with pytest.raises(StoreError, match=re.escape(msg)):
        run.load_state_dict(1)
    assert run.load_state_dict(1, verify=False)["w"].shape == (4, 4)  # unchecked reads stay possible


def test_changed_size_fails_before_hashing(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = ckpt_path(run, 2)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\0\0")
    msg = f"{path}: size {size + 2} bytes differs from the index ({size}); {CHANGED}"
    with pytest.raises(StoreError, match=re.escape(msg)):
        run.checkpoint(2)


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [("dtype", "I32", "I32 [4, 4], but F32 [4, 4]"), ("shape", [2, 8], "F32 [2, 8], but F32 [4, 4]")],
)
def test_rewritten_header_with_a_matching_index(tmp_path: Path, field: str, value: Any, shown: str) -> None:
    run = make_run(tmp_path)
    path = ckpt_path(run, 1)
    header, body = split(path)
    header["w"][field] = value
    path.write_bytes(join(header, body))
    reindex_file(run, 1)
    first = ckpt_path(run, 0)
    msg = f"{path}: tensor 'w' is {shown} in the run's first checkpoint {first}; {CHANGED}"
    with pytest.raises(StoreError, match=re.escape(msg)):
        run.checkpoint(1)
    result = invoke("store", "fsck", str(tmp_path))
    assert result.exit_code == 1
    assert f"problem: {path}: tensor 'w' is {shown} in the run's first checkpoint {first}" in result.output


def test_tensor_missing_from_a_later_checkpoint(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = ckpt_path(run, 2)
    header, _ = split(path)
    write_checkpoint(path, {"w": torch.ones(4, 4)}, header["__metadata__"])
    reindex_file(run, 2)
    first = ckpt_path(run, 0)
    msg = f"{path}: its tensors differ from the run's first checkpoint {first} (not in the first: -; missing: b)"
    with pytest.raises(StoreError, match=re.escape(msg)):
        run.checkpoint(2)


# ------------------------------------------------------------- damaged files
def test_negative_shape_names_the_file(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = ckpt_path(run, 1)
    header, body = split(path)
    header["w"]["shape"] = [-16, -1]
    path.write_bytes(join(header, body))
    msg = (
        f"{path}: corrupted safetensors header "
        "(a negative shape or offset: invalid JSON in header: invalid value: integer `-16`"
    )
    with pytest.raises(StoreError, match=re.escape(msg)):
        CheckpointFile(path)
    reindex_file(run, 1)
    with pytest.raises(StoreError, match=re.escape(msg)) as info:
        run.checkpoint(1)
    assert str(info.value).endswith("; run `normdyn store fsck` on its store to check the others")


def test_header_that_is_not_a_json_object(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_ckpt=1)
    path = ckpt_path(run, 0)
    _, body = split(path)
    path.write_bytes(join([1, 2, 3], body))
    with pytest.raises(
        StoreError,
        match=re.escape(f"{path}: corrupted safetensors header (invalid JSON in header: invalid type: sequence"),
    ):
        CheckpointFile(path)


def test_header_length_larger_than_the_file(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_ckpt=1)
    path = ckpt_path(run, 0)
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10_000) + data[8:])
    msg = f"{path}: corrupted or truncated safetensors header (header claims 10000 bytes, file has {len(data)})"
    with pytest.raises(StoreError, match=re.escape(msg)):
        CheckpointFile(path)


@pytest.mark.parametrize(("cut", "what"), [(4, "(4 bytes, no header)"), (0, "(0 bytes, no header)")])
def test_file_shorter_than_the_header_length(tmp_path: Path, cut: int, what: str) -> None:
    path = tmp_path / "x.safetensors"
    write_checkpoint(path, {"w": torch.ones(3)}, {})
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(StoreError, match=re.escape(f"{path}: truncated safetensors file {what}")):
        CheckpointFile(path)


def test_truncated_data_and_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    write_checkpoint(path, {"w": torch.ones(30)}, {})
    data = path.read_bytes()
    for damaged in (data[:-7], data + b"junk"):
        path.write_bytes(damaged)
        msg = (
            f"{path}: truncated safetensors file, or bytes after its data (the tensors in its header "
            f"do not cover its {len(damaged)} bytes exactly)"
        )
        with pytest.raises(StoreError, match=re.escape(msg)):
            CheckpointFile(path)
        with pytest.raises(StoreError, match=re.escape(msg)):
            CheckpointFile.from_bytes(path, damaged)


def test_unknown_dtype(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    write_checkpoint(path, {"w": torch.ones(2)}, {})
    header, body = split(path)
    header["w"]["dtype"] = "F128"
    path.write_bytes(join(header, body))
    with pytest.raises(
        StoreError,
        match=re.escape(f"{path}: corrupted safetensors header (invalid JSON in header: unknown variant `F128`"),
    ):
        CheckpointFile(path)


def test_unreadable_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path, n_ckpt=1)
    path = ckpt_path(run, 0)
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads everything: make this one file look unreadable
        real_access, real_read = os.access, Path.read_bytes

        def deny(p: Any, *args: Any, **kwargs: Any) -> bool:
            return False if Path(p) == path else real_access(p, *args, **kwargs)

        def deny_read(self: Path) -> bytes:
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_read(self)

        def deny_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return open(file, *args, **kwargs)

        monkeypatch.setattr(os, "access", deny)
        monkeypatch.setattr(Path, "read_bytes", deny_read)
        # the verified read opens the file itself (it reads into a buffer that tensors can view)
        monkeypatch.setattr("normdyn.core.checkpoint.open", deny_open, raising=False)
    with pytest.raises(
        StoreError,
        match=re.escape(f"{path}: cannot read the checkpoint file (permission denied); check its permissions"),
    ):
        CheckpointFile(path)
    with pytest.raises(
        StoreError,
        match=re.escape(f"{path}: cannot read the checkpoint file (Permission denied); check its permissions"),
    ):
        run.checkpoint(0)


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_ckpt=1)
    path = ckpt_path(run, 0)
    path.unlink()
    with pytest.raises(StoreError, match=re.escape(f"{path}: checkpoint file does not exist")):
        run.checkpoint(0)
    with pytest.raises(StoreError, match=re.escape(f"{run.path}: no checkpoint row 1 (run has 1)")):
        run.checkpoint(1)


# ------------------------------------------------------------------ every dtype
DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_lazily_and_verified(tmp_path: Path, dtype: torch.dtype) -> None:
    run = Run.create(tmp_path, "r0", config={}, model_spec={}, dataset={}, P=1, seed=0)
    values = torch.arange(-6, 6, dtype=torch.float32).reshape(3, 4).to(dtype)
    state = {"z": values, "a": values.flip(0).contiguous(), "empty": torch.zeros(0, 4).to(dtype)}
    run.append_checkpoint(state, step=0, epoch=0.0)
    for ck in (run.checkpoint(0), run.checkpoint(0, verify=False)):
        assert ck.keys() == ["z", "a", "empty"]  # the state-dict order, not safetensors' sorted layout
        back = ck.load_all()
        for k, v in state.items():
            assert back[k].dtype == dtype and back[k].shape == v.shape
            assert torch.equal(back[k].view(torch.uint8), v.view(torch.uint8))
            assert torch.equal(ck.get(k).view(torch.uint8), v.view(torch.uint8))
    assert np.prod(run.checkpoint(0, verify=False).shape("z")) == 12
