"""`normdyn import` on bad input: every case a clear error naming the file, key or value.

Per-file problems are reported per file, the other files are imported and
the exit status is 1; problems of the whole command stop it before anything
is stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from normdyn.core.cli import cli
from normdyn.core.store import Run


def _sd(seed: int, rows: int = 4, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(rows, 6, generator=g).to(dtype),
        "fc1.bias": torch.randn(rows, generator=g).to(dtype),
        "fc2.weight": torch.randn(2, rows, generator=g).to(dtype),
    }


def _folder(tmp_path: Path, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name, sd in files.items():
        if name.endswith(".safetensors"):
            save_file(sd, str(src / name))
        else:
            torch.save(sd, src / name)
    return src


def _import(src: Path, store: Path, *extra: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["import", str(src), "--store", str(store), *extra])
    return result.exit_code, result.output.splitlines()


def test_nonfinite_tensors_are_refused_per_file(tmp_path: Path) -> None:
    nan, inf = _sd(1), _sd(2)
    nan["fc1.weight"][0, 0] = float("nan")
    inf["fc2.weight"][1, 1] = float("inf")
    src = _folder(tmp_path, {"c_0.pt": _sd(0), "c_1.pt": nan, "c_2.safetensors": inf, "c_3.pt": _sd(3)})
    code, lines = _import(src, tmp_path / "s")
    assert code == 1
    assert lines == [
        f"error: {src / 'c_1.pt'}: refused: tensor(s) fc1.weight hold NaN or inf values",
        f"error: {src / 'c_2.safetensors'}: refused: tensor(s) fc2.weight hold NaN or inf values",
        f"{tmp_path / 's' / 'src'}: 2 imported, 0 already present, 2 failed",
    ]
    assert list(Run(tmp_path / "s" / "src").checkpoints()["step"]) == [0, 3]


def test_files_unlike_the_runs_others_are_refused(tmp_path: Path) -> None:
    missing = _sd(3)
    del missing["fc1.bias"]
    missing["extra.weight"] = torch.zeros(1)
    files = {"c_0.pt": _sd(0), "c_1.pt": _sd(1, rows=5), "c_2.pt": _sd(2, dtype=torch.float64), "c_3.pt": missing}
    src = _folder(tmp_path, files)
    code, lines = _import(src, tmp_path / "s")
    assert code == 1
    ref = src / "c_0.pt"
    assert lines == [
        f"error: {src / 'c_1.pt'}: refused: its tensors differ from the run's others ({ref}): "
        "fc1.weight is [5, 6] float32, not [4, 6] float32; fc1.bias is [5] float32, not [4] float32; "
        "fc2.weight is [2, 5] float32, not [2, 4] float32",
        f"error: {src / 'c_2.pt'}: refused: its tensors differ from the run's others ({ref}): "
        "fc1.weight is [4, 6] float64, not [4, 6] float32; fc1.bias is [4] float64, not [4] float32; "
        "fc2.weight is [2, 4] float64, not [2, 4] float32",
        f"error: {src / 'c_3.pt'}: refused: its tensors differ from the run's others ({ref}): "
        "missing fc1.bias; unexpected extra.weight",
        f"{tmp_path / 's' / 'src'}: 1 imported, 0 already present, 3 failed",
    ]
    # a later import into the same run compares with its stored checkpoints
    later = tmp_path / "later"
    later.mkdir()
    torch.save(_sd(9, rows=3), later / "c_9.pt")
    code, lines = _import(later, tmp_path / "s", "--run-id", "src")
    assert code == 1
    assert lines[0].startswith(
        f"error: {later / 'c_9.pt'}: refused: its tensors differ from the run's others "
        f"({tmp_path / 's' / 'src' / 'ckpt/step-0000000000.safetensors'}): fc1.weight is [3, 6] float32"
    )


def test_negative_steps_are_refused(tmp_path: Path) -> None:
    src = _folder(tmp_path, {"step--000000005.safetensors": _sd(0), "ckpt-000007.safetensors": _sd(1)})
    code, lines = _import(src, tmp_path / "s")
    assert code == 1
    assert lines == [
        f"error: {src / 'step--000000005.safetensors'}: step -5 (from the file name) is negative; "
        "steps are integers >= 0",
        f"{tmp_path / 's' / 'src'}: 1 imported, 0 already present, 1 failed",
    ]
    assert list(Run(tmp_path / "s" / "src").checkpoints()["step"]) == [7]  # 'ckpt-' is a separator
    steps = tmp_path / "steps.txt"
    steps.write_text("step--000000005.safetensors -5\nckpt-000007.safetensors 7\n")
    code, lines = _import(src, tmp_path / "t", "--steps", str(steps))
    assert code == 1
    assert lines[0] == (
        f"error: {src / 'step--000000005.safetensors'}: step -5 (from the steps file {steps}) is negative; "
        "steps are integers >= 0"
    )


def test_bad_steps_files(tmp_path: Path) -> None:
    src = _folder(tmp_path, {"a.pt": _sd(0), "b.pt": _sd(1), "c.pt": _sd(2)})
    steps = tmp_path / "steps.txt"
    cases = {
        "a.pt ten\n": f"Error: {steps}:1: step 'ten' of a.pt is not an integer",
        "a.pt 1.5\n": f"Error: {steps}:1: step '1.5' of a.pt is not an integer",
        "# header\na.pt 1 2\n": f"Error: {steps}:2: expected 'FILENAME STEP', got 'a.pt 1 2'",
        "a.pt 1\na.pt 2\n": f"Error: {steps}:2: a.pt is listed twice (steps 1 and 2)",
    }
    for text, message in cases.items():
        steps.write_text(text)
        code, lines = _import(src, tmp_path / "s", "--steps", str(steps))
        assert (code, lines) == (1, [message]), text
    assert not (tmp_path / "s").exists()  # refused before anything was created
    steps.write_text("a.pt 1\nb.pt 1\n")
    code, lines = _import(src, tmp_path / "s", "--steps", str(steps))
    assert code == 1
    assert lines == [
        f"error: {src / 'c.pt'}: not listed in the steps file {steps}",
        f"error: {src}: step 1 is shared by a.pt, b.pt (none imported); use --steps FILE",
        f"{tmp_path / 's' / 'src'}: 0 imported, 0 already present, 2 failed",
    ]
    assert not (tmp_path / "s" / "src").exists()  # nothing imported, no empty run left behind


def test_bad_arguments_are_refused_before_anything_is_stored(tmp_path: Path) -> None:
    src = _folder(tmp_path, {"c_1.pt": _sd(0)})
    store = tmp_path / "s"
    bad_family = '{"name": "nosuch", "input_shape": [6], "num_classes": 2}'
    bad_param = '{"name": "mlp", "input_shape": [6], "num_classes": 2, "depth": 3}'
    cases = [
        (["--P", "-5"], "Error: --P -5: P (the training-set size) must be a positive integer"),
        (["--P", "0"], "Error: --P 0: P (the training-set size) must be a positive integer"),
        (["--seed", "-1"], "Error: --seed -1: a seed is an integer >= 0"),
        (
            ["--run-id", "../../evil"],
            "Error: --run-id '../../evil': a run id is one directory name inside the store "
            "(letters, digits, '_', '-', '.'; not '.' or '..')",
        ),
        (
            ["--run-id", ".."],
            "Error: --run-id '..': a run id is one directory name inside the store "
            "(letters, digits, '_', '-', '.'; not '.' or '..')",
        ),
        (
            ["--model", bad_family],
            f"Error: --model {bad_family!r}: unknown model 'nosuch'; available: cnn, cnn1d, ",
        ),
        (
            ["--model", '{"layers": [{"name": "fc1", "kind": "linear"}]}'],
            "Error: --model: model_spec['layers'][0]: layer spec 'fc1': missing keys ['weight']",
        ),
        (
            ["--model", '{"layers": [{"name": "fc1", "kind": "dense", "weight": "fc1.weight"}]}'],
            "Error: --model: model_spec['layers'][0]: layer 'fc1': unknown kind 'dense' (use one of linear, "
            "conv1d, conv2d, attn_q, attn_k, attn_v, attn_out)",
        ),
        (
            ["--model", '["not", "an", "object"]'],
            """Error: --model '["not", "an", "object"]': expected a JSON object""",
        ),
        (["--dataset", "{nope"], "Error: --dataset '{nope': neither a JSON file nor a JSON object"),
    ]
    for extra, message in cases:
        code, lines = _import(src, store, *extra)
        assert code == 1 and len(lines) == 1, (extra, lines)
        assert lines[0].startswith(message), (extra, lines)
    code, lines = _import(src, store, "--model", bad_param)
    assert code == 1 and lines[0].startswith(f"Error: --model {bad_param!r}: model 'mlp': unknown parameter(s) depth")
    code, lines = _import(src, store, "--model", "{not json")
    assert lines == [
        "Error: --model '{not json': neither a JSON file nor a JSON object (Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1))"
    ]
    assert not store.exists()


def test_files_that_do_not_fit_the_model_spec_are_refused(tmp_path: Path) -> None:
    wrong = _sd(1)
    wrong["fc2.weight"] = torch.zeros(2, 4, 1)
    src = _folder(tmp_path, {"c_0.pt": wrong, "c_1.pt": _sd(1)})
    spec = {
        "layers": [
            {"name": "fc1", "kind": "linear", "weight": "fc1.weight"},
            {"name": "fc2", "kind": "linear", "weight": "fc2.weight"},
        ]
    }
    code, lines = _import(src, tmp_path / "s", "--model", json.dumps(spec))
    assert code == 1
    assert lines[0] == (
        f"error: {src / 'c_0.pt'}: refused: layer 'fc2' (linear) expects a 2-D weight 'fc2.weight', "
        "found shape [2, 4, 1]; the checkpoint does not match its model spec"
    )


def test_an_existing_run_is_verified_and_keeps_its_attributes(tmp_path: Path) -> None:
    src = _folder(tmp_path, {"c_0.pt": _sd(0)})
    assert _import(src, tmp_path / "s", "--P", "8")[0] == 0
    run = Run(tmp_path / "s" / "src")
    later = tmp_path / "later"
    later.mkdir()
    torch.save(_sd(1), later / "c_5.pt")
    code, lines = _import(later, tmp_path / "s", "--run-id", "src", "--P", "16")
    assert (code, lines) == (1, [f"Error: {run.path}: the run exists with P=8, not 16; import into another --run-id"])
    stored = run.path / "ckpt/step-0000000000.safetensors"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    code, lines = _import(later, tmp_path / "s", "--run-id", "src")
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(
        f"Error: {run.path}: not extended, its stored checkpoints do not verify ({stored}: sha256 mismatch "
    )
    assert len(run) == 1


def test_a_folder_in_the_way_of_the_run_is_not_taken_over(tmp_path: Path) -> None:
    src = _folder(tmp_path, {"c_0.pt": _sd(0)})
    (tmp_path / "s" / "src").mkdir(parents=True)
    code, lines = _import(src, tmp_path / "s")
    assert (code, lines) == (
        1,
        [
            f"Error: {tmp_path / 's' / 'src'}: not a normdyn run (no run.h5); "
            "run `normdyn store fsck --repair` on its store if checkpoints exist"
        ],
    )


# ---------------------------------------------------------------- bring your own model, layouts, payloads
TINY = """
import pytest
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, rows: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(6, rows)
        self.fc2 = nn.Linear(rows, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def broken(**kwargs):
    raise ValueError("no GPU found")
"""


class SystemPayload:
    """A pickle that would run a shell command if anything ever unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, (f"touch {self.marker}",))


def _user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "import_bad_models.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(code))


def _factory(*extra: str, target: str = "import_bad_models:Tiny", shape: str = "6") -> list[str]:
    return ["--model-factory", target, "--input-shape", shape, *extra]


def test_factory_problems_are_named_before_anything_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _user_module(tmp_path, monkeypatch)
    src = _folder(tmp_path, {"c_0.pt": _sd(0)})
    store = tmp_path / "s"
    cases = {
        "no_such_pkg:Net": "Error: model factory 'no_such_pkg:Net': cannot import no_such_pkg "
        "(ModuleNotFoundError: No module named 'no_such_pkg')",
        "import_bad_models:Huge": "Error: model factory 'import_bad_models:Huge': import_bad_models has no 'Huge'",
        "import_bad_models:broken": "Error: model factory 'import_bad_models:broken' raised ValueError: no GPU found "
        "(called with {})",
    }
    for target, message in cases.items():
        assert _import(src, store, *_factory(target=target)) == (1, [message])
    code, lines = _import(src, store, *_factory("--model-kwargs", "{rows: 4"))
    assert code == 1
    assert lines[0].startswith("Error: --model-kwargs '{rows: 4': neither a JSON file nor a JSON object (")
    code, lines = _import(src, store, *_factory(shape="3,5"))
    assert code == 1
    assert lines[0].startswith(
        "Error: model import_bad_models:Tiny: a forward pass on input shape 3,5 failed (RuntimeError: "
    )
    assert lines[0].endswith("; check --input-shape")
    code, lines = _import(src, store, *_factory(shape="6,x"))
    assert (code, lines[-1]) == (
        2,
        "Error: Invalid value for '--input-shape': '6,x': give positive integers separated by commas, e.g. 3,32,32",
    )
    assert not store.exists()


def test_keys_that_do_not_match_the_module_are_listed_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _user_module(tmp_path, monkeypatch)
    wrapped = {f"module.{k}": v for k, v in _sd(1).items()}
    extra = {**_sd(3), **{f"head{i}.weight": torch.zeros(1) for i in range(6)}}
    files = {"c_0.pt": _sd(0), "c_1.pt": wrapped, "c_2.pt": _sd(2, rows=5), "c_3.pt": extra, "c_4.pt": _sd(4)}
    src = _folder(tmp_path, files)
    del files["c_0.pt"]
    code, lines = _import(src, tmp_path / "s", *_factory())
    label = "refused: its keys do not match the state_dict of import_bad_models:Tiny"
    assert code == 1
    assert lines == [
        f"error: {src / 'c_1.pt'}: {label}: missing fc1.weight, fc1.bias, fc2.weight; unexpected module.fc1.weight, "
        "module.fc1.bias, module.fc2.weight; a wrapper's prefix (model., module.) goes with --strip-prefix",
        f"error: {src / 'c_2.pt'}: {label}: fc1.weight is [5, 6], the model's is [4, 6]; fc1.bias is [5], "
        "the model's is [4]; fc2.weight is [2, 5], the model's is [2, 4]",
        f"error: {src / 'c_3.pt'}: {label}: unexpected head0.weight, head1.weight, head2.weight, head3.weight, "
        "head4.weight (+1 more, 6 in all); a wrapper's prefix (model., module.) goes with --strip-prefix",
        f"{tmp_path / 's' / 'src'}: 2 imported, 0 already present, 3 failed",
    ]


def test_broken_shards_are_named_and_the_other_steps_imported(tmp_path: Path) -> None:
    from safetensors.torch import save_file as save

    src = tmp_path / "pythia"
    sd = _sd(0)
    index = {
        "weight_map": {
            "fc1.weight": "model-00001-of-00002.safetensors",
            "fc1.bias": "model-00001-of-00002.safetensors",
            "fc2.weight": "model-00002-of-00002.safetensors",
        }
    }
    for step in (1, 2, 3, 4):
        folder = src / f"step{step}"
        folder.mkdir(parents=True)
        save({k: sd[k] for k in ("fc1.weight", "fc1.bias")}, str(folder / "model-00001-of-00002.safetensors"))
        save({"fc2.weight": sd["fc2.weight"]}, str(folder / "model-00002-of-00002.safetensors"))
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (src / "step2" / "model-00002-of-00002.safetensors").unlink()
    save(
        {"fc1.bias": sd["fc1.bias"], "fc2.weight": sd["fc2.weight"]},
        str(src / "step3" / "model-00002-of-00002.safetensors"),
    )
    save({"x": torch.zeros(1)}, str(src / "step4" / "model-00003-of-00002.safetensors"))
    code, lines = _import(src, tmp_path / "s")
    idx = "model.safetensors.index.json"
    assert code == 1
    assert lines == [
        f"error: {src / 'step2' / idx}: lists shard model-00002-of-00002.safetensors, which does not exist in "
        f"{src / 'step2'}",
        f"error: {src / 'step3' / 'model-00002-of-00002.safetensors'}: tensor 'fc1.bias' is also in shard "
        "model-00001-of-00002.safetensors; each belongs to one shard",
        f"error: {src / 'step4' / idx}: shard(s) model-00003-of-00002.safetensors in the folder are missing from "
        "the index",
        "steps from the folder name (1)",
        f"{tmp_path / 's' / 'pythia'}: 1 imported, 0 already present, 3 failed",
    ]


def test_pickled_payloads_in_bin_and_ckpt_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    src = tmp_path / "lightning"
    src.mkdir()
    torch.save({"state_dict": _sd(0), "global_step": 1}, src / "epoch=0-step=1.ckpt")
    torch.save(
        {"state_dict": _sd(1), "global_step": 2, "callbacks": SystemPayload(marker)}, src / "epoch=1-step=2.ckpt"
    )
    code, lines = _import(src, tmp_path / "s")
    assert not marker.exists()  # weights_only refused the payload: os.system never ran
    assert code == 1
    assert lines[0].startswith(
        f"error: {src / 'epoch=1-step=2.ckpt'}: refused: the file holds a pickled posix.system, which is not a "
        "tensor, a plain container or a known-harmless type"
    )
    assert lines[1:] == [
        "steps from its global_step (1)",
        f"{tmp_path / 's' / 'lightning'}: 1 imported, 0 already present, 1 failed",
    ]
    hf = tmp_path / "hf"
    for step in (10, 20):
        (hf / f"checkpoint-{step}").mkdir(parents=True)
    torch.save(_sd(0), hf / "checkpoint-10" / "pytorch_model.bin")
    torch.save({"w": SystemPayload(marker)}, hf / "checkpoint-20" / "pytorch_model.bin")
    code, lines = _import(hf, tmp_path / "s")
    assert not marker.exists()
    assert code == 1
    assert lines[0].startswith(
        f"error: {hf / 'checkpoint-20' / 'pytorch_model.bin'}: refused: the file holds a pickled posix.system"
    )
    assert lines[1:] == [
        "steps from the folder name (1)",
        f"{tmp_path / 's' / 'hf'}: 1 imported, 0 already present, 1 failed",
    ]
