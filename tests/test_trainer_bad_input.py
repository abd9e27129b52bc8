"""The trainer on bad input: every problem of a config in one message, model parameters named,
sweep keys checked, stores that are files, and resumes refused from damaged or misfitting state
(nothing stored is changed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import ConfigError, StoreError, UnknownNameError
from normdyn.core.hookspecs import hookimpl
from normdyn.core.store import Run
from normdyn.trainer import loop
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.loop import resume, train
from normdyn.trainer.sweep import expand_grid, sweep_keys


class Points:
    """40 train / 8 test 4-d points, 2 classes."""

    name = "points"

    def load(self, *, root: Any = None, download: bool = False, **params: Any) -> DatasetTensors:
        g = torch.Generator().manual_seed(5)
        x = torch.randn(48, 4, generator=g)
        y = (x[:, 0] > 0).long()
        return DatasetTensors(x[:40], y[:40], x[40:], y[40:], num_classes=2, input_shape=(4,))


class _Plugin:
    @hookimpl
    def register_datasets(self, register: Any) -> None:
        register(Points())


@pytest.fixture(autouse=True)
def points_plugin():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plugins.register_plugin(_Plugin(), name="test-trainer-bad-input")
    try:
        yield
    finally:
        plugins.unregister_plugin(name="test-trainer-bad-input")
        torch.set_num_threads(threads)


def _config(tmp_path: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        model="mlp",
        dataset="points",
        P=20,
        seed=0,
        epochs=6,
        schedule="log:3",
        batch_size=8,
        model_params={"widths": [4]},
        store=str(tmp_path / "store"),
        data_root=None,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def _nothing_stored(tmp_path: Path) -> bool:
    store = tmp_path / "store"
    return not store.exists() or not any(store.iterdir())


# ------------------------------------------------------------------ configs


def test_unknown_model_is_reported_with_the_schedule_problem(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--model", "nosuch", "--epochs", "1", "--store", str(tmp_path / "s")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("Error: unknown model 'nosuch'; available: ")
    assert lines[1] == (
        "schedule 'log:50': log:50 asks for 50 distinct points but the run has only 1 steps/epochs; "
        "use K <= 1 or a longer run"
    )
    assert not (tmp_path / "s").exists()


def test_every_problem_of_a_config_file_is_listed_once(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'model = "mlp"\ndataset = "nosuch"\noptimizer = "rmsprop"\nP = "100"\nseed = -1\n'
        "steps = 0\nlr = 0\nbatch_size = 0\nschedule = 5\n"
    )
    result = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--store", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert result.output.splitlines()[1:] == [
        f"{cfg}: optimizer 'rmsprop': use one of adam, adamw, sgd, gd-adaptive",
        f"{cfg}: P='100': must be a positive integer",
        f"{cfg}: steps=0: must be a positive integer",
        f"{cfg}: seed=-1: must be a non-negative integer",
        f"{cfg}: lr=0: must be a positive number",
        f"{cfg}: batch_size=0: must be a positive integer or 'full'",
        f"{cfg}: schedule=5: must be a string such as 'log:50'",
    ]
    assert result.output.startswith(f"Error: {cfg}: unknown dataset 'nosuch'; available: ")


def test_unknown_keys_come_with_the_other_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_mapping({"model": "mlp", "epochs": 2, "lr": -1.0, "sede": 3}, source="c.toml")
    first, second, third = str(info.value).splitlines()
    assert first.startswith("c.toml: unknown config key(s) sede; known keys: P, batch_size, data_root, ")
    assert second == "c.toml: lr=-1.0: must be a positive number"
    assert third.startswith("c.toml: schedule 'log:50': log:50 asks for 50 distinct points")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"P": -5}, "P=-5: must be a positive integer"),
        ({"P": 0}, "P=0: must be a positive integer"),
        ({"seed": -2}, "seed=-2: must be a non-negative integer"),
        ({"epochs": None, "steps": -3}, "steps=-3: must be a positive integer"),
        ({"lr": 0.0}, "lr=0.0: must be a positive number"),
        ({"lr": float("nan")}, "lr=nan: must be a positive number"),
        ({"lr": True}, "lr=True: must be a positive number"),
        ({"batch_size": 0}, "batch_size=0: must be a positive integer or 'full'"),
        ({"batch_size": 2.5}, "batch_size=2.5: must be a positive integer or 'full'"),
        ({"momentum": 1.0}, "momentum=1.0: must be in [0, 1)"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1: must be >= 0"),
        ({"optimizer": "rmsprop"}, "optimizer 'rmsprop': use one of adam, adamw, sgd, gd-adaptive"),
        ({"schedule": "at:7"}, "schedule 'at:7': schedule term 'at:7': [7] outside [0, 6]"),
        ({"schedule": "log:9"}, "schedule 'log:9': log:9 asks for 9 distinct points but the run has only 6"),
        ({"model_params": [4]}, "model_params must be a table/dict, got [4]"),
        ({"store": 3}, "store=3: must be a non-empty string"),
        ({"download": "yes"}, "download='yes': must be true or false"),
        ({"eval_batch_size": 0}, "eval_batch_size=0: must be a positive integer"),
    ],
)
def test_bad_values_fail_before_anything_is_stored(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        train(_config(tmp_path, **changes), progress=False)
    assert str(info.value).startswith(message)
    assert _nothing_stored(tmp_path)


def test_unknown_names_alone_stay_an_unknown_name_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError) as info:
        _config(tmp_path, model="nosuch", dataset="nosuch").validate()
    model, dataset = str(info.value).splitlines()
    assert model.startswith("unknown model 'nosuch'; available: ")
    assert dataset.startswith("unknown dataset 'nosuch'; available: ")


def test_negative_P_on_the_command_line(tmp_path: Path) -> None:
    args = ["train", "--model", "mlp", "--dataset", "points", "--P", "-5", "--epochs", "2", "--schedule", "log:2"]
    result = CliRunner().invoke(cli, [*args, "--store", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert result.output == "Error: P=-5: must be a positive integer\n"


# ---------------------------------------------------------- model parameters


@pytest.mark.parametrize(
    ("model_params", "message"),
    [
        (
            {"widths": [-4]},
            "model 'mlp' cannot be built with model_params widths=[-4]: Trying to create tensor with negative "
            "dimension -4: [-4, 4] (RuntimeError); change widths (see the model family's documentation)",
        ),
        (
            {"widths": 5, "bias": True},
            "model 'mlp' cannot be built with model_params widths=5: 'int' object is not iterable (TypeError); "
            "change widths (see the model family's documentation)",
        ),
        (
            {"widths": ["wide"]},
            "model 'mlp' cannot be built with model_params widths=['wide']: invalid literal for int() with base "
            "10: 'wide' (ValueError); change widths (see the model family's documentation)",
        ),
    ],
)
def test_a_model_parameter_the_family_cannot_build_is_named(
    tmp_path: Path, model_params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        train(_config(tmp_path, model_params=model_params), progress=False)
    assert str(info.value) == message
    assert _nothing_stored(tmp_path)


def test_negative_widths_in_a_sweep_fail_that_run_only(tmp_path: Path) -> None:
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        '[train]\nmodel = "mlp"\ndataset = "points"\nepochs = 2\nschedule = "log:2"\nP = 20\ndevice = "cpu"\n'
        "[sweep]\n'model_params.widths' = [[-4], [3]]\n"
    )
    result = CliRunner().invoke(cli, ["sweep", str(cfg), "--store", str(tmp_path / "store"), "--quiet"])
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == "2 runs: 1 trained, 0 resumed, 0 skipped, 1 failed"
    assert "model 'mlp' cannot be built with model_params widths=[-4]: Trying to create tensor" in result.stderr
    (run_dir,) = (tmp_path / "store").iterdir()
    assert Run(run_dir).status == "complete" and Run(run_dir).model_spec["widths"] == [3]


# ------------------------------------------------------------------- sweeps


def _sweep_error(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        expand_grid(doc, source="s.toml")
    return str(info.value)


def test_a_store_key_in_a_sweep_file_is_refused() -> None:
    doc = {"train": {"epochs": 2, "store": "x"}, "sweep": {"store": ["a", "b"]}}
    assert _sweep_error(doc).splitlines() == [
        "s.toml: [train] key 'store': every run of a sweep is written into --store; remove the key",
        "s.toml: [sweep] key 'store': every run of a sweep is written into --store; remove the key",
    ]


def test_a_misspelt_sweep_key_lists_the_valid_keys() -> None:
    message = _sweep_error({"train": {"epochs": 2}, "sweep": {"sede": [0, 1], "model_param.widths": [[3]]}})
    valid = ", ".join(sweep_keys())
    assert message == f"s.toml: [sweep]: unknown config key(s) sede, model_param.widths; valid sweep keys: {valid}"
    assert "store" not in sweep_keys() and sweep_keys()[-3:] == [
        "model_params.NAME",
        "dataset_params.NAME",
        "optimizer_params.NAME",
    ]


def test_every_bad_grid_point_is_reported_once() -> None:
    doc = {
        "train": {"model": "mlp", "dataset": "points", "epochs": 3, "schedule": "log:2"},
        "sweep": {"P": [8, -5, 0], "seed": [0, 1], "lr": [0.1, -1.0]},
    }
    assert _sweep_error(doc).splitlines() == [
        "s.toml: lr=-1.0: must be a positive number",
        "s.toml: P=-5: must be a positive integer",
        "s.toml: P=0: must be a positive integer",
    ]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"train": [1], "sweep": {}}, "s.toml: [train] must be a table, got [1]"),
        ({"train": {"epochs": 2}, "sweep": 3}, "s.toml: [sweep] must be a table, got 3"),
        (
            {"train": {"epochs": 2, "schedule": "log:2", "model_params": 4}, "sweep": {"model_params.widths": [[3]]}},
            "s.toml: sweep axis 'model_params.widths': [train] model_params must be a table, got 4",
        ),
    ],
)
def test_malformed_sweep_tables(doc: dict[str, Any], message: str) -> None:
    assert _sweep_error(doc) == message


def test_a_sweep_file_that_is_not_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep]\nP = [1, 2\n")
    result = CliRunner().invoke(cli, ["sweep", str(bad), "--store", str(tmp_path / "s")])
    assert result.exit_code == 1 and result.output.startswith(f"Error: {bad}: invalid TOML (")
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------- stores


def test_a_store_that_is_a_file_is_named(tmp_path: Path) -> None:
    store = tmp_path / "file"
    store.write_text("not a store\n")
    args = ["train", "--model", "mlp", "--dataset", "points", "--P", "8", "--epochs", "2", "--schedule", "log:2"]
    result = CliRunner().invoke(cli, [*args, "--store", str(store)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {store}: cannot be a store, it is a file, not a directory; "
        "give --store a directory (new or existing)\n"
    )
    below = CliRunner().invoke(cli, [*args, "--store", str(store / "sub")])
    assert below.output == (
        f"Error: {store / 'sub'}: cannot be a store, {store} is a file, not a directory; "
        "give --store a directory (new or existing)\n"
    )
    assert store.read_text() == "not a store\n"


def test_a_sweep_into_a_file_is_refused_before_any_run(tmp_path: Path) -> None:
    store = tmp_path / "file"
    store.write_text("x")
    cfg = tmp_path / "s.toml"
    cfg.write_text('[train]\nmodel = "mlp"\ndataset = "points"\nepochs = 2\nschedule = "log:2"\n[sweep]\nP = [8]\n')
    result = CliRunner().invoke(cli, ["sweep", str(cfg), "--store", str(store)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {store}: cannot be a store, it is a file, not a directory")


def test_a_run_directory_given_as_store_is_refused(tmp_path: Path) -> None:
    run = train(_config(tmp_path), progress=False)
    with pytest.raises(StoreError, match="this is a run directory, not a store; pass its parent directory"):
        train(_config(tmp_path, store=str(run.path), seed=1), progress=False)


def test_train_prints_the_resolved_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "mlp", "--dataset", "points", "--P", "8", "--epochs", "2", "--schedule", "log:2"]
    result = CliRunner().invoke(cli, [*args, "--store", "a/../store", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "store").iterdir()
    assert result.stdout == f"{run_dir.resolve()}\n"


# ------------------------------------------------------------------ resumes


def _interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """A run killed at its third schedule point: checkpoints of steps 0 and 3, resume state at 3."""
    calls = {"n": 0}
    real = loop.measure_point

    def crash_on_third(t: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(t)

    with monkeypatch.context() as m:
        m.setattr(loop, "measure_point", crash_on_third)
        with pytest.raises(KeyboardInterrupt):
            train(_config(tmp_path), progress=False)
    (run_dir,) = (tmp_path / "store").iterdir()
    run = Run(run_dir)
    assert run.checkpoints()["step"].tolist() == [0, 3]
    return run


def _rewrite_resume(run: Run, change: dict[str, torch.Tensor]) -> None:
    """A resume state with ``change`` written as the trainer writes one (a diverged run's is a valid file,
    its payload hash intact: the checks below are about its values)."""
    path = run.path / "resume" / "latest.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["resume"])
    run.save_resume({**load_file(str(path)), **change}, meta)


def _assert_refused(run: Run, message: str) -> None:
    before = run.checkpoints()["sha256"].tolist()
    with pytest.raises(StoreError) as info:
        resume(run.path, progress=False)
    assert message in str(info.value)
    assert run.checkpoints()["sha256"].tolist() == before
    assert run.status == "failed"


def test_resume_refuses_a_checkpoint_whose_bytes_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _interrupted(tmp_path, monkeypatch)
    ckpt = run.path / "ckpt" / "step-0000000003.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight: the header still parses
    ckpt.write_bytes(bytes(data))
    _assert_refused(run, f"cannot resume {run.path} from step 3: {ckpt}: sha256 mismatch (index ")


def test_resume_refuses_nan_optimizer_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _interrupted(tmp_path, monkeypatch)
    shape = run.load_state_dict(-1)["net.1.weight"].shape
    _rewrite_resume(run, {"optim.0.exp_avg": torch.full(shape, float("nan"))})
    _assert_refused(
        run,
        f"{run.path / 'resume' / 'latest.safetensors'}: tensor 'optim.0.exp_avg' holds NaN or inf (the run "
        "diverged, or the file is damaged); the run cannot continue from it: check the store with "
        "`normdyn store fsck`, or train the config again into another store",
    )


def test_resume_refuses_optimizer_state_of_another_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _interrupted(tmp_path, monkeypatch)
    _rewrite_resume(run, {"optim.0.exp_avg": torch.zeros(2, 2)})
    shape = tuple(run.load_state_dict(-1)["net.1.weight"].shape)
    _assert_refused(
        run,
        f"cannot resume {run.path}: its state at step 3 does not fit the model built from its model_spec "
        f"(optimizer tensor optim.0.exp_avg has shape (2, 2), model: {shape})",
    )


def test_resume_refuses_damaged_resume_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _interrupted(tmp_path, monkeypatch)
    path = run.path / "resume" / "latest.safetensors"
    meta = json.loads(safe_open(str(path), "pt").metadata()["resume"])
    del meta["samples_seen"]
    save_file(load_file(str(path)), str(path), metadata={"format": "normdyn-run/1", "resume": json.dumps(meta)})
    _assert_refused(run, f"{path}: damaged resume state (missing or invalid 'samples_seen'); the run cannot continue")


def _set_attr(run: Run, key: str, value: str) -> None:
    with h5py.File(run.index, "r+") as f:
        f.attrs[key] = value


def test_resume_refuses_a_model_spec_that_does_not_fit_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _interrupted(tmp_path, monkeypatch)
    _set_attr(run, "model_spec", json.dumps({**run.model_spec, "widths": [6]}))
    _assert_refused(
        run,
        f"cannot resume {run.path}: its state at step 3 does not fit the model built from its model_spec "
        "(Error(s) in loading state_dict for MLP: size mismatch for net.1.weight: copying a param with shape "
        "torch.Size([4, 4]) from checkpoint, the shape in current model is torch.Size([6, 4]).)",
    )


def test_resume_of_a_config_attribute_that_is_a_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _interrupted(tmp_path, monkeypatch)
    _set_attr(run, "config", "[1, 2]")
    result = CliRunner().invoke(cli, ["train", "--resume", str(run.path), "--quiet"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {run.index}: attribute 'config' is a JSON array, not an object; ")
    assert "Traceback" not in result.output


def test_resume_of_a_stored_config_with_a_bad_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _interrupted(tmp_path, monkeypatch)
    _set_attr(run, "config", json.dumps({**run.config, "lr": -1.0, "seed": "x"}))
    with pytest.raises(ConfigError) as info:
        resume(run.path, progress=False)
    source = f"{run.index} (config attribute)"
    assert str(info.value).splitlines() == [
        f"{source}: seed='x': must be a non-negative integer",
        f"{source}: lr=-1.0: must be a positive number",
    ]


def test_resume_of_a_complete_run_says_so(tmp_path: Path) -> None:
    run = train(_config(tmp_path), progress=False)
    result = CliRunner().invoke(cli, ["train", "--resume", str(run.path), "--quiet"])
    assert result.exit_code == 0
    assert result.stderr == f"run {run.path.name} is already complete; nothing to resume\n"
    assert result.stdout == f"{run.path.resolve()}\n"


def test_resume_of_a_directory_that_is_no_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {tmp_path / 'empty'}: not a normdyn run (no run.h5)")
