"""`normdyn import --link`: checkpoints read in place, verified on every read, checked by fsck, relinked.

Each layout is written in its real format by the test (a folder of `.pt` state dicts, Lightning `.ckpt`
files with `hyper_parameters`, Hugging Face step folders with a sorted-key `model.safetensors`, sharded
step folders) and imported twice, as a copy and linked; every measure must be the same on both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import OrderedDict
from pathlib import Path, PosixPath

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from normdyn.analyzers.analyze import analyze_store
from normdyn.analyzers.api import load_curves, measure_model
from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.errors import StoreError
from normdyn.core.fsck import fsck_run
from normdyn.core.store import LINK_COLUMN, Run

USER_MODULE = """
import torch
from torch import nn


class LinkNet(nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Linear(width * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))
"""
TARGET = "link_test_models:LinkNet"
FACTORY = ["--model-factory", TARGET, "--input-shape", "1,4,4"]
STEPS = (0, 10, 100)
NO_DATA = sorted(n for n, m in plugins.registry("measures").items.items() if set(m.needs) <= {"weights", "model"})
SAFE_MEASURES = ["frobenius", "spectral_complexity"]


@pytest.fixture(autouse=True)
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "link_test_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(code))
    request.addfinalizer(lambda: sys.modules.pop("link_test_models", None))  # no leak to later tests


def _states() -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(len(STEPS)):
        torch.manual_seed(seed)
        out.append(dict(plugins.get("models", "factory").make(TARGET, {}).state_dict()))
    return out


def _import(src: Path, store: Path, run_id: str, *extra: str) -> tuple[int, list[str]]:
    args = ["import", str(src), "--store", str(store), "--run-id", run_id, *FACTORY, *extra]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output.splitlines()


def _write_pt(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / f"ckpt_{step}.pt" for step in STEPS]
    for path, sd in zip(paths, _states()):
        torch.save(sd, path)
    return paths


def _write_lightning(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, (step, sd) in enumerate(zip(STEPS, _states())):
        hparams = argparse.Namespace(lr=0.1, data_dir=PosixPath("/data/mnist"), sizes=OrderedDict(a=1))
        ckpt = {
            "state_dict": {f"model.{k}": v for k, v in sd.items()},
            "hyper_parameters": hparams,
            "global_step": step,
            "epoch": i,
            "pytorch-lightning_version": "2.4.0",
        }
        torch.save(ckpt, folder / f"epoch={i}-step={step}.ckpt")


def _write_hf(folder: Path) -> None:
    for step, sd in zip(STEPS, _states()):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / f"checkpoint-{step}" / "model.safetensors"))


def _write_sharded(folder: Path) -> None:
    for step, sd in zip(STEPS, _states()):
        d = folder / f"step{step}"
        d.mkdir(parents=True)
        names = list(sd)
        shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
        for shard, keys in shards.items():
            save_file({k: sd[k].contiguous() for k in keys}, str(d / shard))
        weight_map = {k: shard for shard, keys in shards.items() for k in keys}
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


LAYOUTS = {
    "pt": (lambda d: _write_pt(d), ()),
    "lightning": (_write_lightning, ("--strip-prefix", "model.")),
    "hf": (_write_hf, ()),
    "sharded": (_write_sharded, ()),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_linked_import_measures_exactly_like_the_copy(tmp_path: Path, layout: str) -> None:
    write, extra = LAYOUTS[layout]
    src, store = tmp_path / layout, tmp_path / "store"
    write(src)
    assert _import(src, store, "copy", *extra)[0] == 0
    code, lines = _import(src, store, "linked", "--link", *extra)
    assert code == 0, lines
    assert lines[-1] == f"{store / 'linked'}: 3 imported, 0 already present, 0 failed"
    linked = Run(store / "linked")
    assert not list((store / "linked" / "ckpt").glob("*.safetensors"))  # nothing of the weights was copied
    assert [p.name for p in sorted((store / "linked" / "ckpt").iterdir())] == [
        f"step-{s:010d}.link.json" for s in STEPS
    ]
    link = linked.links()[0]
    assert link is not None and all(Path(f.path).is_absolute() and Path(f.path).is_file() for f in link.files)
    assert len(link.files) == (2 if layout == "sharded" else 1)  # a sharded checkpoint links every shard
    assert [f.size for f in link.files] == [os.path.getsize(f.path) for f in link.files]
    analyze_store(store, NO_DATA)
    a, b = load_curves(Run(store / "copy")), load_curves(linked)
    assert list(b["step"]) == list(STEPS)
    measured = sorted(set(a) - {"step", "epoch", "train_error", "train_loss", "test_error", "test_loss"})
    assert sorted(set(b) - set(a) | set(measured)) == measured  # a measure returning a dict is stored per key
    assert "spectral_complexity_dn" in measured  # order-dependent: the link kept the module's order
    assert all(np.isfinite(b[name]).all() for name in measured), {
        n: (a[n], b[n]) for n in measured if not np.isfinite(b[n]).all()
    }
    for name in measured:
        # the same tensors in the same order through the same code: equal, not merely close
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert fsck_run(store / "linked").ok
    sd = linked.load_state_dict(2)
    assert list(sd) == list(_states()[2])
    stored = linked.read_measure("frobenius")
    assert stored is not None
    value = measure_model(sd, "frobenius", model_spec=linked.model_spec)
    assert value == stored.values[2]  # measure_model on a linked row's weights: what analyze stored


def test_a_copied_run_has_no_link_column_and_reads_as_before(tmp_path: Path) -> None:
    src = tmp_path / "pt"
    _write_pt(src)
    assert _import(src, tmp_path / "store", "copy")[0] == 0
    run = Run(tmp_path / "store" / "copy")
    assert LINK_COLUMN not in run.checkpoints()  # the format of stores written before --link existed
    assert run.links() == [None] * 3


def test_extending_a_copied_run_with_linked_rows_keeps_the_copies(tmp_path: Path) -> None:
    first, later = tmp_path / "first", tmp_path / "later"
    paths = _write_pt(tmp_path / "all")
    first.mkdir()
    later.mkdir()
    shutil.copy(paths[0], first)
    for p in paths[1:]:
        shutil.copy(p, later)
    store = tmp_path / "store"
    assert _import(first, store, "r")[0] == 0
    assert _import(later, store, "r", "--link")[0] == 0
    run = Run(store / "r")
    assert [link is None for link in run.links()] == [True, False, False]
    assert list(run.checkpoints()[LINK_COLUMN])[0] == ""
    for i, sd in enumerate(_states()):
        assert all(torch.equal(run.load_state_dict(i)[k], v) for k, v in sd.items())
    assert fsck_run(store / "r").ok


def _linked_pt_run(tmp_path: Path) -> tuple[Path, list[Path], Run]:
    src = tmp_path / "mine"
    paths = _write_pt(src)
    store = tmp_path / "store"
    assert _import(src, store, "r", "--link")[0] == 0
    return store, paths, Run(store / "r")


def test_fsck_reports_moved_truncated_and_modified_files_and_repair_keeps_everything(tmp_path: Path) -> None:
    store, paths, run = _linked_pt_run(tmp_path)
    analyze_store(store, SAFE_MEASURES)
    before = load_curves(run)
    sizes = [p.stat().st_size for p in paths]
    (tmp_path / "elsewhere").mkdir()
    moved = paths[0].rename(tmp_path / "elsewhere" / "renamed.pt")
    with open(paths[1], "r+b") as fh:
        fh.truncate(100)
    data = bytearray(paths[2].read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    paths[2].write_bytes(bytes(data))
    expected = [
        f"problem: {paths[0]}: linked checkpoint file does not exist; {run.link_hint(0)}",
        f"problem: {paths[1]}: linked checkpoint file changed: 100 bytes, {sizes[1]} when it was linked; "
        f"{run.link_hint(10)}",
    ]
    for repair in ([], ["--repair"]):
        result = CliRunner().invoke(cli, ["store", "fsck", str(store), *repair])
        assert result.exit_code == 1
        lines = result.output.splitlines()
        assert lines[:2] == expected
        assert lines[2].startswith(f"problem: {paths[2]}: linked checkpoint file changed: sha256 ")
        assert lines[2].endswith(f"... when it was linked; {run.link_hint(100)}")
        assert lines[3:] == ["1 run(s) checked, 0 ok, 1 with problems"]
    # repair touched neither the user's files nor the rows nor the measures
    assert moved.is_file() and paths[1].stat().st_size == 100 and paths[2].read_bytes() == bytes(data)
    assert len(run) == 3
    after = load_curves(run)
    for name in SAFE_MEASURES:
        np.testing.assert_array_equal(after[name], before[name])


def test_reading_a_changed_linked_file_is_refused(tmp_path: Path) -> None:
    store, paths, run = _linked_pt_run(tmp_path)
    data = bytearray(paths[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    paths[1].write_bytes(bytes(data))
    paths[2].unlink()
    with pytest.raises(StoreError) as changed:
        run.checkpoint(1, verify=True)
    message = str(changed.value)
    assert message.startswith(f"{paths[1]}: linked checkpoint file changed: sha256 ")
    assert message.endswith(f"; {run.link_hint(10)}")
    assert "normdyn store relink" in message
    with pytest.raises(StoreError, match="linked checkpoint file does not exist"):
        run.load_state_dict(2)
    result = CliRunner().invoke(cli, ["analyze", str(store), "-m", "frobenius", "-q"])
    assert result.exit_code == 1  # the batch goes on past the bad rows and says so
    rec = run.read_measure("frobenius")
    assert rec is not None
    assert np.isfinite(rec.values[0]) and np.isnan(rec.values[1:]).all()
    assert rec.errors[1].startswith(f"{paths[1]}: linked checkpoint file changed")
    assert rec.errors[2].startswith(f"{paths[2]}: linked checkpoint file does not exist")


def test_relink_finds_moved_files_by_content_and_measures_stay_valid(tmp_path: Path) -> None:
    store, paths, run = _linked_pt_run(tmp_path)
    analyze_store(store, SAFE_MEASURES)
    new = tmp_path / "new place" / "deeper"
    new.mkdir(parents=True)
    (new / "a_decoy.pt").write_bytes(b"x" * paths[0].stat().st_size)  # the right size, not the content
    for i, p in enumerate(paths):
        p.rename(new / f"renamed_{i}.pt")
    result = CliRunner().invoke(cli, ["store", "relink", str(run.path), str(tmp_path / "new place")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        *(f"relinked: {p}: relinked to {new / f'renamed_{i}.pt'}" for i, p in enumerate(paths)),
        f"{run.path}: 3 file(s) relinked, 0 not found",
    ]
    assert fsck_run(run.path).ok
    summary = analyze_store(store, SAFE_MEASURES)
    assert (summary.computed, summary.skipped) == (0, 6)  # same content: every stored value is still current
    sidecar = json.loads((run.path / "ckpt" / "step-0000000000.link.json").read_text())
    assert json.loads(sidecar[LINK_COLUMN])["files"][0]["path"] == str(new / "renamed_0.pt")


def test_relink_says_which_files_it_cannot_find(tmp_path: Path) -> None:
    store, paths, run = _linked_pt_run(tmp_path)
    paths[0].unlink()
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["store", "relink", str(run.path), str(tmp_path / "empty")])
    assert result.exit_code == 1
    size = run.links()[0].files[0].size  # type: ignore[union-attr]
    assert result.output.splitlines()[0].startswith(
        f"problem: {paths[0]}: linked file not found under {tmp_path / 'empty'} (no file of {size} bytes with sha256 "
    )
    assert result.output.splitlines()[-1] == f"{run.path}: 0 file(s) relinked, 1 not found"


def test_fsck_repair_rebuilds_a_lost_index_of_a_linked_run(tmp_path: Path) -> None:
    store, paths, run = _linked_pt_run(tmp_path)
    rows = run.table_rows()
    (run.path / "run.h5").unlink()
    result = CliRunner().invoke(cli, ["store", "fsck", str(store), "--repair"])
    assert result.exit_code == 0, result.output
    rebuilt = Run(run.path)
    for old, new in zip(rows, rebuilt.table_rows()):
        assert {k: new[k] for k in ("step", "file", "sha256", "bytes", LINK_COLUMN)} == {
            k: old[k] for k in ("step", "file", "sha256", "bytes", LINK_COLUMN)
        }
    assert all(torch.equal(rebuilt.load_state_dict(2)[k], v) for k, v in _states()[2].items())


def test_a_linked_run_whose_file_went_missing_is_not_extended(tmp_path: Path) -> None:
    store, paths, run = _linked_pt_run(tmp_path)
    paths[1].unlink()
    more = tmp_path / "more"
    more.mkdir()
    torch.save(_states()[0], more / "ckpt_500.pt")
    code, lines = _import(more, store, "r", "--link")
    assert code == 1
    assert lines[0].startswith(f"Error: {store / 'r'}: not extended, its stored checkpoints do not verify ")
    assert f"{paths[1]}: linked checkpoint file does not exist" in lines[0]
    assert len(run) == 3


def test_linking_goes_on_past_a_bad_file(tmp_path: Path) -> None:
    src = tmp_path / "mine"
    paths = _write_pt(src)
    (src / "ckpt_5.pt").write_bytes(b"not a torch file")
    code, lines = _import(src, tmp_path / "store", "r", "--link")
    assert code == 1
    assert lines[0].startswith(f"error: {src / 'ckpt_5.pt'}: refused: the file is not a torch file")
    assert lines[1] == f"{tmp_path / 'store' / 'r'}: 3 imported, 0 already present, 1 failed"
    run = Run(tmp_path / "store" / "r")
    assert [link.source for link in run.links() if link is not None] == [str(p) for p in paths]


def test_fsck_repair_indexes_an_orphan_link_file(tmp_path: Path) -> None:
    # what a crash between writing a linked row's metadata file and its index row leaves behind
    paths = _write_pt(tmp_path / "mine")
    full, partial = tmp_path / "full", tmp_path / "partial"
    assert _import(tmp_path / "mine", full, "r", "--link")[0] == 0
    (tmp_path / "two").mkdir()
    for p in paths[:2]:
        shutil.copy(p, tmp_path / "two" / p.name)
    assert _import(tmp_path / "two", partial, "r", "--link")[0] == 0
    orphan = "ckpt/step-0000000100.link.json"
    shutil.copy(full / "r" / orphan, partial / "r" / orphan)
    result = CliRunner().invoke(cli, ["store", "fsck", str(partial)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == f"problem: {partial / 'r'}: 1 checkpoint file(s) not in the index: {orphan}"
    result = CliRunner().invoke(cli, ["store", "fsck", str(partial), "--repair"])
    assert (
        result.output.splitlines()[0]
        == f"repaired: {partial / 'r' / 'run.h5'}: indexed 1 orphan checkpoint(s): {orphan}"
    )
    run = Run(partial / "r")
    assert list(run.checkpoints()["step"]) == list(STEPS)
    assert run.links()[2] == Run(full / "r").links()[2]  # it reads the original file, where the orphan's record says
    assert all(torch.equal(run.load_state_dict(2)[k], v) for k, v in _states()[2].items())


def test_a_malformed_link_record_is_named_by_reads_and_fsck(tmp_path: Path) -> None:
    store, paths, run = _linked_pt_run(tmp_path)
    with h5py.File(run.index, "r+") as f:
        f[f"checkpoints/{LINK_COLUMN}"][1] = "{not json"
    with pytest.raises(StoreError, match=rf"^{run.index} row 1: unusable link record \(JSONDecodeError: "):
        run.checkpoint(1)
    result = CliRunner().invoke(cli, ["store", "fsck", str(store)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith(f"problem: {run.index} row 1: unusable link record")
