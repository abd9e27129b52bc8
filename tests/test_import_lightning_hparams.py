"""Lightning `.ckpt` files with real `hyper_parameters` import without running a pickle.

The files are written in Lightning's own format: a dict with `state_dict`, `hyper_parameters` (here an
`AttributeDict` holding an `argparse.Namespace` with a `PosixPath`, an `OrderedDict` and a Windows
path), `global_step`, `epoch` and `pytorch-lightning_version`. Lightning is not installed: the test
gives its `AttributeDict` class the module path Lightning's has (registering stand-in modules only
while `torch.save` pickles it), so the bytes are those Lightning writes.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import types
from collections import OrderedDict
from pathlib import Path, PosixPath, PureWindowsPath

import pytest
import torch
from click.testing import CliRunner

from normdyn.core.cli import cli
from normdyn.core.errors import StoreError
from normdyn.core.safe_pickle import load_torch
from normdyn.core.store import Run

LIGHTNING_MODULE = "lightning.fabric.utilities.data"


class AttributeDict(dict):
    """Lightning's AttributeDict as it pickles: a dict subclass under Lightning's module path."""

    def __getattr__(self, key: str) -> object:
        return self[key]


AttributeDict.__module__ = LIGHTNING_MODULE


class SystemPayload:
    """Would run a shell command if anything ever unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


class Custom:
    """A harmless-looking class of the user's that is not on the allow-list."""


def _save_with_lightning_names(obj: object, path: Path) -> None:
    """torch.save(obj, path) with Lightning's module path importable while it pickles."""
    parts = LIGHTNING_MODULE.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    assert not any(n in sys.modules for n in names)
    try:
        for name in names:
            sys.modules[name] = types.ModuleType(name)
        sys.modules[LIGHTNING_MODULE].AttributeDict = AttributeDict  # type: ignore[attr-defined]
        torch.save(obj, path)
    finally:
        for name in names:
            sys.modules.pop(name, None)


def _ckpt(step: int, epoch: int, **hparams: object) -> dict[str, object]:
    torch.manual_seed(step)
    state = OrderedDict(
        [
            ("model.fc.weight", torch.randn(3, 4)),
            ("model.fc.bias", torch.randn(3)),
            ("model.out.weight", torch.randn(2, 3)),
        ]
    )
    args = argparse.Namespace(lr=0.1, data_dir=PosixPath("/data/mnist"), log_dir=PureWindowsPath("C:/logs"))
    return {
        "state_dict": state,
        "hyper_parameters": AttributeDict(args=args, sizes=OrderedDict(a=1), **hparams),
        "global_step": step,
        "epoch": epoch,
        "pytorch-lightning_version": "2.4.0",
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": epoch}}}},
    }


def test_hyper_parameters_of_real_types_are_read_without_lightning(tmp_path: Path) -> None:
    src = tmp_path / "checkpoints"
    src.mkdir()
    for epoch, step in enumerate((50, 100)):
        _save_with_lightning_names(_ckpt(step, epoch), src / f"epoch={epoch}-step={step}.ckpt")
    assert "lightning" not in sys.modules
    obj = load_torch(src / "epoch=0-step=50.ckpt", (src / "epoch=0-step=50.ckpt").read_bytes())
    hp = obj["hyper_parameters"]
    assert type(hp) is dict  # the stand-in builds a plain dict: nothing of Lightning is imported or needed
    assert hp["args"].lr == 0.1 and str(hp["args"].data_dir) == "/data/mnist"
    assert str(hp["args"].log_dir) == "C:\\logs"
    for link in ([], ["--link"]):
        run_id = "linked" if link else "copy"
        args = ["import", str(src), "--store", str(tmp_path / "s"), "--run-id", run_id, "--strip-prefix", "model."]
        result = CliRunner().invoke(cli, [*args, *link])
        assert result.output.splitlines() == [
            "steps from its global_step (2)",
            f"{tmp_path / 's' / run_id}: 2 imported, 0 already present, 0 failed",
        ]
        run = Run(tmp_path / "s" / run_id)
        assert list(run.checkpoints()["epoch"]) == [0.0, 1.0]
        assert list(run.load_state_dict(1)) == ["fc.weight", "fc.bias", "out.weight"]


def test_a_malicious_hyper_parameter_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    src = tmp_path / "checkpoints"
    src.mkdir()
    _save_with_lightning_names(_ckpt(1, 0), src / "epoch=0-step=1.ckpt")
    _save_with_lightning_names(_ckpt(2, 1, evil=SystemPayload(marker)), src / "epoch=1-step=2.ckpt")
    _save_with_lightning_names(_ckpt(3, 2, mine=Custom()), src / "epoch=2-step=3.ckpt")
    for link in ([], ["--link"]):
        args = ["import", str(src), "--store", str(tmp_path / f"s{len(link)}"), *link]
        lines = CliRunner().invoke(cli, args).output.splitlines()
        assert not marker.exists()  # os.system never ran
        refused = "which is not a tensor, a plain container or a known-harmless type"
        assert lines[0].startswith(
            f"error: {src / 'epoch=1-step=2.ckpt'}: refused: the file holds a pickled posix.system, {refused}"
        )
        assert lines[1].startswith(
            f"error: {src / 'epoch=2-step=3.ckpt'}: refused: the file holds a pickled {__name__}.Custom, {refused}"
        )
        assert lines[2:] == [
            "steps from its global_step (1)",
            f"{tmp_path / f's{len(link)}' / 'checkpoints'}: 1 imported, 0 already present, 2 failed",
        ]


def test_loads_on_several_threads_at_once_all_admit_the_allow_list(tmp_path: Path) -> None:
    # analyze reads the next checkpoint on a reader thread while the main thread may load another
    path = tmp_path / "epoch=0-step=1.ckpt"
    _save_with_lightning_names(_ckpt(1, 0), path)
    data = path.read_bytes()
    errors: list[StoreError] = []

    def load() -> None:
        for _ in range(20):
            try:
                load_torch(path, data)
            except StoreError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("content", [b"", b"not a torch file"])
def test_a_file_that_is_not_a_torch_file_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.ckpt"
    with pytest.raises(StoreError, match=f"^{path}: (not a readable torch file|refused: the file is not a torch file)"):
        load_torch(path, content)
