"""The resume state of a run as safetensors tensors plus JSON (no pickle).

It holds what the model checkpoint does not: the optimizer state, the global
torch RNG (dropout), the CUDA RNG when used, the data-order generator, the
current epoch's sample order and the position in it. Model weights are read
from the checkpoint of the same step.
"""

from __future__ import annotations

from typing import Any

import torch

from normdyn.core.errors import StoreError

__all__ = ["pack_optimizer", "unpack_optimizer"]


def pack_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``optim.<param>.<key>``) and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unpack_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`pack_optimizer`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value.clone()
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    if "param_groups" not in meta:
        raise StoreError("resume state has no optimizer param_groups")
    return {"state": state, "param_groups": meta["param_groups"]}
