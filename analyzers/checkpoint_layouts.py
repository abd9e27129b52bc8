"""The checkpoint layouts researchers have, detected and read without running pickles.

- a folder of files, the step in each name: ``*.safetensors``, ``*.pt``,
  ``*.pth``, ``*.bin``, PyTorch Lightning's ``*.ckpt``;
- one folder per step (Hugging Face Trainer's ``checkpoint-500/``, Pythia's
  ``step1000/``) holding ``model.safetensors``, ``pytorch_model.bin``, or shards
  ``model-00001-of-00002.safetensors`` listed by ``model.safetensors.index.json``
  (its ``weight_map``: tensor name -> shard file), read as one checkpoint.

Torch files are read only with ``torch.load(weights_only=True)`` (plus the
plain-data types of Lightning's ``hyper_parameters``:
:func:`normdyn.core.safe_pickle.load_torch`): a file holding other pickled
objects is refused and nothing in it runs. Each file is read once; its size
and sha256 come with its tensors, for ``normdyn import --link``. A torch
file's dict may carry the state dict under ``state_dict`` (Lightning),
``model_state_dict`` or ``model``, and the checkpoint's own step under
``global_step`` or ``step`` and its ``epoch``; a Trainer folder's
``trainer_state.json`` gives ``global_step`` and ``epoch``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from normdyn.core.checkpoint import ORDER_KEY, CheckpointFile
from normdyn.core.errors import ConfigError, NormdynError, StoreError
from normdyn.core.linked import LinkedFile, read_linked_bytes, state_dict_of
from normdyn.core.safe_pickle import load_torch

__all__ = ["FILE_SUFFIXES", "Loaded", "Source", "discover", "read_source", "read_torch_file"]

FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS, TORCH_BIN, SHARD_INDEX = "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"
TRAINER_STATE = "trainer_state.json"
_FOLDER_FILES = (SHARD_INDEX, SAFETENSORS, TORCH_BIN)  # the first one a folder holds is its checkpoint
_META_KEYS = ("global_step", "step", "epoch")
_SHARD_RE = re.compile(r"^model-\d+-of-\d+\.safetensors$")


@dataclass(frozen=True)
class Source:
    """One checkpoint of a source: a file, or a per-step folder (``weights`` is the file or index read)."""

    path: Path
    weights: Path
    layout: str

    @property
    def name(self) -> str:
        """The name a steps file lists and the step is parsed from (file or folder name)."""
        return self.path.name


@dataclass
class Loaded:
    """A checkpoint's tensors, whether they are in ``state_dict()`` order, and its own step metadata;
    how they were read (``reader``, the torch dict ``entry`` holding them) and the ``files`` read, each
    with its size and sha256: what a linked row records."""

    tensors: dict[str, torch.Tensor]
    in_order: bool
    meta: dict[str, float] = field(default_factory=dict)
    files: list[LinkedFile] = field(default_factory=list)
    reader: str = "safetensors"
    entry: str | None = None


def _folder_weights(folder: Path) -> Path | None:
    return next((folder / n for n in _FOLDER_FILES if (folder / n).is_file()), None)


def discover(src: Path) -> list[Source]:
    """The checkpoints of folder ``src``: its per-step folders if it has any, else its checkpoint files.

    Top-level files next to per-step folders (a Trainer's final model) are not
    part of the series and are left out.
    """
    if not src.is_dir():
        raise ConfigError(f"{src}: not a folder of checkpoints (files {', '.join(FILE_SUFFIXES)} or step folders)")
    folders = []
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        weights = _folder_weights(d)
        if weights is not None:
            layout = "sharded" if weights.name == SHARD_INDEX else "step-folder"
            folders.append(Source(d, weights, layout))
    if folders:
        return folders
    files = [p for p in sorted(src.iterdir()) if p.suffix in FILE_SUFFIXES and p.is_file()]
    if not files:
        raise ConfigError(
            f"{src}: no checkpoint files ({', '.join('*' + s for s in FILE_SUFFIXES)}) and no step folders "
            f"holding {', '.join(_FOLDER_FILES)}"
        )
    return [Source(p, p, "lightning" if p.suffix == ".ckpt" else "file") for p in files]


def read_source(source: Source) -> Loaded:
    """The tensors and step metadata of one checkpoint (StoreError naming the file on any problem)."""
    if source.layout == "sharded":
        loaded = _read_sharded(source.weights)
    elif source.weights.suffix == ".safetensors":
        loaded = _read_safetensors(source.weights)
    else:
        loaded = read_torch_file(source.weights)
    if source.path.is_dir():
        loaded.meta = {**_trainer_state(source.path / TRAINER_STATE), **loaded.meta}
    return loaded


def _read_safetensors(path: Path) -> Loaded:
    data = read_linked_bytes(path)
    try:
        file = CheckpointFile.from_bytes(path, data)
        tensors = file.load_all()
    except NormdynError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise StoreError(f"{path}: not a readable safetensors file ({detail})") from None
    try:
        in_order = json.loads(file.metadata.get(ORDER_KEY, "null")) == file.keys()
    except json.JSONDecodeError:
        in_order = False
    return Loaded(tensors, in_order, files=[LinkedFile.of(path, data)])


def read_torch_file(path: Path) -> Loaded:
    """A ``torch.save``d state dict, or a dict holding one (under ``state_dict``, ``model_state_dict`` or
    ``model``), loaded with ``weights_only=True``.

    torch.load keeps the state dict's order, so ``in_order`` is True.
    """
    data = read_linked_bytes(path)
    obj = load_torch(path, data)
    tensors, entry = state_dict_of(obj, path)
    meta = _step_meta(obj) if isinstance(obj, Mapping) else {}
    return Loaded(tensors, True, meta, files=[LinkedFile.of(path, data)], reader="torch", entry=entry)


def _step_meta(obj: Mapping[str, Any]) -> dict[str, float]:
    """``global_step``, ``step`` and ``epoch`` of a checkpoint dict, where they are finite numbers."""
    out: dict[str, float] = {}
    for key in _META_KEYS:
        value = obj.get(key)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def _trainer_state(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: not a readable JSON file ({exc})") from None
    return _step_meta(state) if isinstance(state, dict) else {}


def _read_sharded(index: Path) -> Loaded:
    """One checkpoint from the shards ``index`` lists; every shard of the folder must be listed."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise StoreError(f"{index}: not a readable shard index ({exc})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise StoreError(f"{index}: no 'weight_map' object (tensor name -> shard file)")
    shards = list(dict.fromkeys(str(v) for v in weight_map.values()))
    unlisted = sorted(p.name for p in index.parent.iterdir() if _SHARD_RE.match(p.name) and p.name not in shards)
    if unlisted:
        raise StoreError(f"{index}: shard(s) {', '.join(unlisted)} in the folder are missing from the index")
    tensors: dict[str, torch.Tensor] = {}
    where: dict[str, str] = {}
    files: list[LinkedFile] = []
    for shard in shards:
        path = index.parent / shard
        if not path.is_file():
            raise StoreError(f"{index}: lists shard {shard}, which does not exist in {index.parent}")
        loaded = _read_safetensors(path)
        files += loaded.files
        for name, tensor in loaded.tensors.items():
            if name in where:
                raise StoreError(f"{path}: tensor {name!r} is also in shard {where[name]}; each belongs to one shard")
            if weight_map.get(name) != shard:
                listed = weight_map.get(name)
                raise StoreError(
                    f"{path}: tensor {name!r} is "
                    + (f"listed in {listed} by" if listed else "not listed in")
                    + f" {index}"
                )
            where[name] = shard
            tensors[name] = tensor
    absent = [k for k in weight_map if k not in tensors]
    if absent:
        raise StoreError(f"{index}: tensor(s) {', '.join(absent[:5])} are listed but in no shard")
    ordered = {k: tensors[k] for k in weight_map}  # the index's order, which transformers writes sorted
    return Loaded(ordered, False, files=files)
