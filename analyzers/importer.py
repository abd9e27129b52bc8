"""Importing existing checkpoints into a store, so they can be analysed.

Sources (detected by :func:`normdyn.analyzers.checkpoint_layouts.discover`):
a folder of ``*.safetensors``, ``*.pt`` / ``*.pth`` / ``*.bin`` state dicts or
Lightning ``*.ckpt`` files, or a folder of per-step folders (Hugging Face
Trainer ``checkpoint-500/``, Pythia ``step1000/``; one file or shards each).
Torch files are loaded only with ``torch.load(weights_only=True)``: a file
holding arbitrary pickled objects is refused, never executed.

Each checkpoint's step comes from, in this order: a steps file (lines
``NAME STEP``), the checkpoint's own ``global_step`` or ``step``, its file or
folder name (the last integer in it, e.g. ``epoch_0040.pt`` -> 40), its
``epoch``. A checkpoint that cannot be imported is reported and the others
are imported: an unreadable file, one holding NaN or inf, one whose tensors
(names, shapes, dtypes) differ from the run's others or do not fit the model
spec or the module, a negative or duplicated step.

With a module (``normdyn import --model-factory``), every checkpoint must hold
exactly the module's ``state_dict()`` keys and shapes (after stripping the
given prefixes, e.g. Lightning's ``model.`` or DDP's ``module.``) and is
stored in the module's own order, so a sorted-key safetensors file keeps the
forward order.

With ``link`` (``normdyn import --link``) nothing is copied: each row records
the files it was read from (path, size, sha256), the torch dict entry and the
prefixes stripped, and the tensor order (:class:`normdyn.core.linked.Link`);
every read redoes that extraction from the hash-verified files. Each file is
then read once.

Layer order without a module or a spec's layer list: the layers are inferred
from the order of the tensors, which is forward order only for a
``state_dict()`` (a torch file, or a safetensors file written by normdyn); a
foreign ``.safetensors`` file lists its tensors sorted by name. The run
records which in ``model_spec["layer_order"]`` ("state_dict" or "file"), and
every file of a run is stored in one order, so order-dependent measures are
refused where the order is a guess.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from normdyn.analyzers.checkpoint_layouts import Loaded, Source, discover, read_source
from normdyn.core import plugins
from normdyn.core.errors import ConfigError, NormdynError, StoreError
from normdyn.core.linked import Link, LinkedFile, strip_prefixes
from normdyn.core.store import INDEX, Run
from normdyn.core.view import LAYER_ORDER_KEY, ORDER_FILE, ORDER_STATE_DICT, CheckpointView, RunContext, spec_layers

__all__ = [
    "ImportResult",
    "import_checkpoints",
    "load_foreign_state_dict",
    "read_steps_file",
    "step_from_name",
    "read_model_spec",
    "read_json_object",
    "strip_prefixes",
]

_RUN_ID_RE = re.compile(r"[^A-Za-z0-9_.\-]+")
_MAX_STEP = 2**63 - 1  # the index stores steps as int64

#: name -> (shape, dtype): what the files of one run must share
Signature = dict[str, tuple[tuple[int, ...], torch.dtype]]


@dataclass
class ImportResult:
    """The imported run, what was imported or already there, per-file errors, and where steps came from."""

    run_path: Path
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    step_origins: Counter[str] = field(default_factory=Counter)


@dataclass
class _Candidate:
    """A checkpoint that passed every check, waiting to be stored (its tensors are read again then)."""

    step: int
    origin: str
    source: Source
    keys: list[str]
    state_dict_order: bool
    epoch: float
    files: tuple[LinkedFile, ...]  # how it was read, for a linked row: the files, ...
    reader: str  # ... the reader ...
    entry: str | None  # ... and the torch dict entry holding the state dict

    def link(self, keys: Sequence[str], prefixes: Sequence[str]) -> Link:
        """The record of this checkpoint linked in place, its tensors stored as ``keys``."""
        source = str(self.source.path.resolve())
        return Link(self.files, self.reader, tuple(keys), self.entry, tuple(prefixes), source)


def step_from_name(path: Path) -> int:
    """The last integer in the file's stem (``ckpt-000100.pt`` -> 100, ``step--5.pt`` -> -5).

    A '-' right before the digits is a minus sign when it follows the start of
    the stem or another non-alphanumeric character (``--5``, ``_-5``), and a
    separator after a letter or digit (``ckpt-5``).
    """
    matches = list(re.finditer(r"\d+", path.stem))
    if not matches:
        raise ConfigError(f"{path}: no step number in the file name; pass --steps FILE with a line '{path.name} STEP'")
    last, stem = matches[-1], path.stem
    i = last.start()
    negative = i >= 1 and stem[i - 1] == "-" and (i == 1 or not stem[i - 2].isalnum())
    return -int(last.group()) if negative else int(last.group())


def read_steps_file(path: str | Path) -> dict[str, int]:
    """``FILENAME STEP`` per line (whitespace or comma separated; '#' starts a comment).

    A line that is not two fields with an integer step, or a file name listed
    twice, is a ConfigError naming the line. Negative steps are returned (and
    refused per file by :func:`import_checkpoints`).
    """
    out: dict[str, int] = {}
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the steps file ({exc})") from None
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p for p in re.split(r"[\s,]+", line) if p]
        if len(parts) != 2:
            raise ConfigError(f"{path}:{i}: expected 'FILENAME STEP', got {line!r}")
        name, step = parts
        if not re.fullmatch(r"[+-]?\d+", step):
            raise ConfigError(f"{path}:{i}: step {step!r} of {name} is not an integer")
        if name in out:
            raise ConfigError(f"{path}:{i}: {name} is listed twice (steps {out[name]} and {int(step)})")
        out[name] = int(step)
    return out


def load_foreign_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch file (no pickle code is ever run).

    A torch file may hold a state dict, or a dict with the state dict under
    ``state_dict``, ``model_state_dict`` or ``model``.
    """
    return read_source(Source(path, path, "file")).tensors


def _signature(tensors: Mapping[str, torch.Tensor]) -> Signature:
    return {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}


def _differences(sig: Signature, ref: Signature) -> list[str]:
    """What differs between two signatures, in words (at most five items of each kind)."""

    def names(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    out = []
    missing, extra = [k for k in ref if k not in sig], [k for k in sig if k not in ref]
    if missing:
        out.append(f"missing {names(missing)}")
    if extra:
        out.append(f"unexpected {names(extra)}")
    for k in [k for k in sig if k in ref and sig[k] != ref[k]][:5]:
        (shape, dtype), (ref_shape, ref_dtype) = sig[k], ref[k]
        out.append(f"{k} is {list(shape)} {str(dtype)[6:]}, not {list(ref_shape)} {str(ref_dtype)[6:]}")
    return out


def _check_file(
    path: Path, tensors: Mapping[str, torch.Tensor], reference: tuple[str, Signature] | None, spec: Mapping[str, Any]
) -> None:
    """Refuse (StoreError) non-finite tensors, tensors unlike the run's others, or not fitting the spec."""
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise StoreError(f"{path}: refused: tensor(s) {', '.join(bad[:5])} hold NaN or inf values")
    if reference is not None:
        diff = _differences(_signature(tensors), reference[1])
        if diff:
            raise StoreError(
                f"{path}: refused: its tensors differ from the run's others ({reference[0]}): " + "; ".join(diff)
            )
    if spec.get("layers"):
        CheckpointView(tensors, RunContext(model_spec=spec), label=f"{path}: refused")


def _check_arguments(run_id: str | None, P: int | None, seed: int | None) -> None:
    if run_id is not None and (not re.fullmatch(r"[A-Za-z0-9_.\-]+", run_id) or set(run_id) == {"."}):
        raise ConfigError(
            f"--run-id {run_id!r}: a run id is one directory name inside the store "
            "(letters, digits, '_', '-', '.'; not '.' or '..')"
        )
    if P is not None and P < 1:
        raise ConfigError(f"--P {P}: P (the training-set size) must be a positive integer")
    if seed is not None and seed < 0:
        raise ConfigError(f"--seed {seed}: a seed is an integer >= 0")


def _check_existing(run: Run, model_spec: Mapping[str, Any] | None, P: int | None, seed: int | None) -> None:
    """Refuse to extend ``run`` with attributes other than its own (they would be ignored silently)."""

    def comparable(spec: Mapping[str, Any]) -> str:  # the import adds a layer order to a spec without layers
        return json.dumps({k: v for k, v in spec.items() if k != LAYER_ORDER_KEY}, sort_keys=True)

    if model_spec is not None and comparable(model_spec) != comparable(run.model_spec):
        raise ConfigError(f"{run.path}: the run exists with another model spec; import into another --run-id")
    for name, given, have in (("P", P, run.P), ("seed", seed, run.seed)):
        if given is not None and given != have:
            raise ConfigError(
                f"{run.path}: the run exists with {name}={have}, not {given}; import into another --run-id"
            )


def _verified_reference(run: Run) -> tuple[str, Signature] | None:
    """Verify the stored checkpoints of ``run``; return the first one's path and signature.

    Copies and the first row are verified in full (sha256, size, layout); the
    other linked rows by the size of their files only, so that extending a
    large linked set does not read all of it (``normdyn store fsck`` hashes
    them). A damaged run is not extended: StoreError naming each damaged file.
    """
    steps, links = run.checkpoints()["step"], run.links()
    damaged = []
    first = None
    for i, link in enumerate(links):
        try:
            if link is None or i == 0:
                ck = run.checkpoint(i, verify=True)
                first = first or (str(ck.path), _signature(ck.load_all()))
            elif problems := link.problems(content=False):
                damaged.append("; ".join(problems) + "; " + run.link_hint(int(steps[i])))
        except StoreError as exc:
            damaged.append(str(exc))
    if damaged:
        raise StoreError(f"{run.path}: not extended, its stored checkpoints do not verify ({'; '.join(damaged)})")
    return first


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more, {len(keys)} in all)" if len(keys) > 5 else "")


def _match_module(
    tensors: Mapping[str, torch.Tensor], module_state: Mapping[str, torch.Tensor], label: str, prefixes: Sequence[str]
) -> dict[str, torch.Tensor]:
    """``tensors`` in the module's ``state_dict()`` order; StoreError listing missing, unexpected, misshapen keys."""
    missing = [k for k in module_state if k not in tensors]
    extra = [k for k in tensors if k not in module_state]
    shapes = [
        f"{k} is {list(tensors[k].shape)}, the model's is {list(module_state[k].shape)}"
        for k in module_state
        if k in tensors and tuple(tensors[k].shape) != tuple(module_state[k].shape)
    ]
    if missing or extra or shapes:
        parts = [f"missing {_names(missing)}"] if missing else []
        parts += [f"unexpected {_names(extra)}"] if extra else []
        parts += shapes[:5]
        hint = "" if prefixes or not extra else "; a wrapper's prefix (model., module.) goes with --strip-prefix"
        raise StoreError(f"refused: its keys do not match the state_dict of {label}: " + "; ".join(parts) + hint)
    return {k: tensors[k] for k in module_state}


def _step_of(
    source: Source, meta: Mapping[str, float], steps: Mapping[str, int] | None, steps_file: str | Path | None
) -> tuple[int, str]:
    """(step, where it came from): steps file, then global_step/step, then the name, then epoch."""
    if steps is not None:
        if source.name not in steps:
            raise ConfigError(f"{source.path}: not listed in the steps file {steps_file}")
        return steps[source.name], f"the steps file {steps_file}"
    for key in ("global_step", "step"):
        if key in meta and float(meta[key]).is_integer():
            return int(meta[key]), f"its {key}"
    kind = "folder" if source.path.is_dir() else "file"
    try:
        return step_from_name(source.path), f"the {kind} name"
    except ConfigError:
        if "epoch" in meta and float(meta["epoch"]).is_integer():
            return int(meta["epoch"]), "its epoch"
        raise ConfigError(
            f"{source.path}: no step in the {kind} name nor in the checkpoint (global_step, step, epoch); "
            f"pass --steps FILE with a line '{source.name} STEP'"
        ) from None


def _prepared(
    loaded: Loaded,
    module_state: Mapping[str, torch.Tensor] | None,
    label: str,
    prefixes: Sequence[str],
) -> dict[str, torch.Tensor]:
    tensors = strip_prefixes(loaded.tensors, prefixes) if prefixes else loaded.tensors
    return tensors if module_state is None else _match_module(tensors, module_state, label, prefixes)


def _dedup(found: list[_Candidate], src: Path, result: ImportResult) -> list[_Candidate]:
    """The candidates whose step no other one shares, in step order (an error per shared step)."""
    by_step: dict[int, list[_Candidate]] = {}
    for c in sorted(found, key=lambda c: c.step):
        by_step.setdefault(c.step, []).append(c)
    for step, group in by_step.items():
        if len(group) > 1:
            names = ", ".join(c.source.name for c in group)
            result.errors.append(f"{src}: step {step} is shared by {names} (none imported); use --steps FILE")
    return [group[0] for group in by_step.values() if len(group) == 1]


def import_checkpoints(
    src: str | Path,
    store: str | Path,
    *,
    model_spec: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    steps_file: str | Path | None = None,
    run_id: str | None = None,
    P: int | None = None,
    seed: int | None = None,
    module_state: Mapping[str, torch.Tensor] | None = None,
    module_label: str = "the model",
    prefixes: Sequence[str] = (),
    link: bool = False,
) -> ImportResult:
    """Import the checkpoints of folder ``src`` (any layout of the module docstring) as run ``run_id`` of ``store``.

    An existing run of that id is extended: its stored checkpoints are first
    verified against their sha256, steps it already holds are skipped, new
    steps must come after its last one, and its P, seed and model spec must
    be the given ones. ``module_state`` (a module's ``state_dict()``, named
    ``module_label`` in errors) makes loading strict and fixes the stored
    order; ``prefixes`` are stripped from every key first. Checkpoints are
    imported in step order; one bad checkpoint is reported in ``errors`` and
    the rest go on. Each is read twice: once to check it, once to store it
    (so nothing is stored before the run's layer order is known); with
    ``link`` once, and the row records where the files are instead of a copy.
    ``P`` (default: unknown, stored as 0) must be positive.
    """
    _check_arguments(run_id, P, seed)
    src = Path(src)
    sources = discover(src)
    if model_spec is not None and model_spec.get("layers"):
        try:
            spec_layers(model_spec["layers"])
        except StoreError as exc:
            raise ConfigError(f"--model: {exc}") from None
    steps = read_steps_file(steps_file) if steps_file else None
    result = ImportResult(run_path=Path(store) / (run_id or _RUN_ID_RE.sub("_", src.resolve().name)))
    existing = Run(result.run_path) if (result.run_path / INDEX).exists() or result.run_path.exists() else None
    reference = None
    if existing is not None:
        _check_existing(existing, model_spec, P, seed)
        reference = _verified_reference(existing)
    spec = dict(existing.model_spec if existing is not None else model_spec or {})
    have = {int(s) for s in existing.checkpoints()["step"]} if existing is not None else set()
    found: list[_Candidate] = []
    for source in sources:
        try:
            loaded = read_source(source)
            step, origin = _step_of(source, loaded.meta, steps, steps_file)
            if step < 0:
                raise ConfigError(f"{source.path}: step {step} (from {origin}) is negative; steps are integers >= 0")
            if step > _MAX_STEP:
                raise ConfigError(f"{source.path}: step {step} (from {origin}) is larger than {_MAX_STEP}")
            if step in have:
                result.skipped.append(source.name)
                continue
            tensors = _prepared(loaded, module_state, module_label, prefixes)
            _check_file(source.path, tensors, reference, spec)
        except StoreError as exc:
            text = str(exc)
            result.errors.append(text if text.startswith(str(source.path)) else f"{source.weights}: {text}")
            continue
        except ConfigError as exc:
            result.errors.append(str(exc))
            continue
        reference = reference or (str(source.path), _signature(tensors))
        in_order = loaded.in_order or module_state is not None
        epoch = loaded.meta.get("epoch", float("nan"))
        how = (tuple(loaded.files), loaded.reader, loaded.entry)
        found.append(_Candidate(step, origin, source, list(tensors), in_order, epoch, *how))
    candidates = _dedup(found, src, result)
    if not candidates:
        return result
    if existing is None:
        if not spec.get("layers"):
            ordered = any(c.state_dict_order for c in candidates)
            spec[LAYER_ORDER_KEY] = ORDER_STATE_DICT if ordered else ORDER_FILE
        Path(store).mkdir(parents=True, exist_ok=True)
        run = Run.create(
            store,
            result.run_path.name,
            config={"imported_from": str(src.resolve())},
            model_spec=spec,
            dataset=dict(dataset or {}),
            P=P or 0,
            seed=seed or 0,
        )
    else:
        run = existing
    keys = _stored_order(run, candidates)
    for c in candidates:
        try:
            if link:
                run.append_linked(c.link(keys or c.keys, prefixes), step=c.step, epoch=c.epoch)
            else:
                tensors = _prepared(read_source(c.source), module_state, module_label, prefixes)
                run.append_checkpoint({k: tensors[k] for k in keys or c.keys}, step=c.step, epoch=c.epoch)
        except (StoreError, ConfigError, KeyError) as exc:
            result.errors.append(f"{c.source.path}: {exc}" if isinstance(exc, KeyError) else str(exc))
            continue
        result.imported.append(c.source.name)
        result.step_origins[c.origin] += 1
    if run.status == "running":
        run.set_status("complete")
    return result


def _stored_order(run: Run, candidates: list[_Candidate]) -> list[str] | None:
    """The one tensor order every file of ``run`` is stored in (None: each file's own).

    An existing run's stored order; else the ``state_dict()`` order of any
    candidate that has it, so that foreign safetensors files of the batch
    (sorted by name) are stored in forward order as well.
    """
    if len(run):
        return run.checkpoint(0).keys()
    return next((c.keys for c in candidates if c.state_dict_order), None)


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
        try:
            family = plugins.get("models", str(params.pop("name")))
        except NormdynError as exc:
            raise ConfigError(f"--model {value!r}: {exc}") from None
        try:
            input_shape, num_classes = params.pop("input_shape"), params.pop("num_classes")
        except KeyError as exc:
            raise ConfigError(f"--model {value!r}: a spec without 'layers' needs {exc.args[0]!r}") from None
        try:
            spec = family.spec(input_shape=tuple(input_shape), num_classes=int(num_classes), **params)
        except (TypeError, ValueError, NormdynError) as exc:  # torch's own errors on impossible shapes included
            raise ConfigError(f"--model {value!r}: {exc}") from None
    return spec
