"""`normdyn import` on bad input: every case a clear error naming the file, key or value.

Per-file problems are reported per file, the other files are imported and
the exit status is 1; problems of the whole command stop it before anything
is stored.
"""

from __future__ import annotations

import json
from pathlib import Path

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
