"""Importing existing checkpoints into a store, so they can be analysed.

Sources: a folder of ``*.safetensors`` files, or of ``*.pt`` / ``*.pth``
state dicts. ``.pt`` files are loaded only with
``torch.load(weights_only=True)``: a file holding arbitrary pickled objects
is refused, never executed. Each file's training step comes from its name
(the last integer in it, e.g. ``epoch_0040.pt`` -> 40) or from a steps file
(lines ``FILENAME STEP``). A file that cannot be imported is reported and the
others are imported.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from normdyn.core import plugins
from normdyn.core.checkpoint import CheckpointFile
from normdyn.core.errors import ConfigError, StoreError
from normdyn.core.store import Run

__all__ = [
    "ImportResult",
    "import_checkpoints",
    "load_foreign_state_dict",
    "read_steps_file",
    "step_from_name",
    "read_model_spec",
    "read_json_object",
    "SUFFIXES",
]

SUFFIXES = (".safetensors", ".pt", ".pth")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_RUN_ID_RE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass
class ImportResult:
    """The imported run, how many files were imported or already there, and per-file errors."""

    run_path: Path
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def step_from_name(path: Path) -> int:
    """The last integer in the file's stem (``ckpt-000100.pt`` -> 100)."""
    numbers = re.findall(r"\d+", path.stem)
    if not numbers:
        raise ConfigError(f"{path}: no step number in the file name; pass --steps FILE with a line '{path.name} STEP'")
    return int(numbers[-1])


def read_steps_file(path: str | Path) -> dict[str, int]:
    """``FILENAME STEP`` per line (whitespace or comma separated; '#' starts a comment)."""
    out: dict[str, int] = {}
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p for p in re.split(r"[\s,]+", line) if p]
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ConfigError(f"{path}:{i}: expected 'FILENAME STEP', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


def load_foreign_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pt/.pth file (no pickle code is ever run).

    A .pt file may hold a state dict, or a dict with the state dict under
    ``state_dict``, ``model_state_dict`` or ``model``.
    """
    if path.suffix == ".safetensors":
        return CheckpointFile(path).load_all()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise StoreError(
            f"{path}: refused: the file holds pickled objects other than tensors "
            f"(torch.load weights_only=True: {first}); re-save it as a plain state dict "
            f"(torch.save(model.state_dict(), ...)) or as safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise StoreError(f"{path}: expected a state dict (a mapping of names to tensors), found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise StoreError(f"{path}: entries {', '.join(bad[:5])} are not tensors; save model.state_dict() only")
    return {str(k): v for k, v in obj.items()}


def import_checkpoints(
    src: str | Path,
    store: str | Path,
    *,
    model_spec: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    steps_file: str | Path | None = None,
    run_id: str | None = None,
    P: int = 0,
    seed: int = 0,
) -> ImportResult:
    """Import the checkpoint files of folder ``src`` as run ``run_id`` of ``store``.

    An existing run of that id is extended: steps it already holds are
    skipped, new steps must come after its last one. Files are imported in
    step order; one bad file is reported in ``errors`` and the rest go on.
    """
    src = Path(src)
    if not src.is_dir():
        raise ConfigError(f"{src}: not a folder of checkpoint files (*.safetensors, *.pt, *.pth)")
    files = sorted(p for p in src.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"{src}: no *.safetensors, *.pt or *.pth files")
    steps = read_steps_file(steps_file) if steps_file else None
    result = ImportResult(run_path=Path(store) / (run_id or _RUN_ID_RE.sub("_", src.resolve().name)))
    order: list[tuple[int, Path]] = []
    for path in files:
        try:
            if steps is not None:
                if path.name not in steps:
                    raise ConfigError(f"{path}: not listed in the steps file {steps_file}")
                order.append((steps[path.name], path))
            else:
                order.append((step_from_name(path), path))
        except ConfigError as exc:
            result.errors.append(str(exc))
    by_step: dict[int, list[Path]] = {}
    for step, path in sorted(order):
        by_step.setdefault(step, []).append(path)
    duplicated = {s for s, paths in by_step.items() if len(paths) > 1}
    for step in sorted(duplicated):
        names = ", ".join(p.name for p in by_step[step])
        result.errors.append(f"{src}: step {step} is shared by {names} (none imported); use --steps FILE")
    Path(store).mkdir(parents=True, exist_ok=True)
    run = Run.create(
        store,
        result.run_path.name,
        config={"imported_from": str(src.resolve())},
        model_spec=dict(model_spec or {}),
        dataset=dict(dataset or {}),
        P=P,
        seed=seed,
        exist_ok=True,
    )
    have = {int(s) for s in run.checkpoints()["step"]}
    for step, path in sorted(order):
        if step in duplicated:
            continue
        if step in have:
            result.skipped.append(path.name)
            continue
        try:
            tensors = load_foreign_state_dict(path)
            run.append_checkpoint(tensors, step=step, epoch=float("nan"))
        except (StoreError, ConfigError) as exc:
            result.errors.append(str(exc))
            continue
        result.imported.append(path.name)
    if run.status == "running":
        run.set_status("complete")
    return result


def read_json_object(value: str, option: str) -> dict[str, Any]:
    """A JSON object from a file path or given inline (``option`` names the flag in errors)."""
    path = Path(value)
    text = path.read_text() if path.is_file() else value
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option} {value!r}: neither a JSON file nor a JSON object ({exc})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{option} {value!r}: expected a JSON object")
    return obj


def read_model_spec(value: str) -> dict[str, Any]:
    """A model spec from a JSON file path or an inline JSON object.

    A spec with a model family ``name`` but no ``layers`` is completed by that
    family (``spec(input_shape=..., num_classes=..., **params)``), so
    ``{"name": "cnn", "input_shape": [3, 32, 32], "num_classes": 10}`` suffices.
    """
    spec = read_json_object(value, "--model")
    if "layers" not in spec and "name" in spec:
        params = dict(spec)
        family = plugins.get("models", str(params.pop("name")))
        try:
            input_shape, num_classes = params.pop("input_shape"), params.pop("num_classes")
        except KeyError as exc:
            raise ConfigError(f"--model {value!r}: a spec without 'layers' needs {exc.args[0]!r}") from None
        spec = family.spec(input_shape=tuple(input_shape), num_classes=int(num_classes), **params)
    return spec
