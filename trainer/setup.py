"""Everything a run holds in memory: device, data tensors, model, optimizer.

Built the same way for a fresh run and for a resumed one, so a resumed run
continues with exactly the objects an uninterrupted run would have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from normdyn.core import plugins
from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import ConfigError
from normdyn.core.sampling import subset_indices
from normdyn.core.schedule import parse_schedule
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.objective import Objective, objective_for

__all__ = ["Training", "prepare", "load_data", "dataset_spec", "resolve_device", "scale_weight_matrices",
           "ORDER_SEED_OFFSET"]

# The data-order generator is seeded with seed + this offset, so the order of
# the P samples is not the permutation that chose them (core/sampling.py).
ORDER_SEED_OFFSET = 1_000_003


@dataclass
class Training:
    """A run ready to train: tensors on the device, the model, its optimizer, the schedule in steps."""

    config: TrainConfig
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    objective: Objective
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    exact_test_error: Callable[[nn.Module], float] | None
    batch_size: int
    batches_per_epoch: int
    total_steps: int
    points: list[int]
    model_spec: dict[str, Any]
    dataset_spec: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available on this machine; use --device cpu")
    return device


def scale_weight_matrices(model: nn.Module, layers: list[Mapping[str, Any]], factor: float) -> None:
    """Multiply every weight matrix of the layer list by ``factor`` (biases untouched).

    The layer list names each weight once per block; a fused attention
    in_proj appears as three row blocks and is scaled once, as a whole.
    """
    if factor == 1.0:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in dict.fromkeys(layer["weight"] for layer in layers):
            params[key].mul_(factor)


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def load_data(config: TrainConfig) -> DatasetTensors:
    """The whole dataset of ``config`` (through the dataset plugin)."""
    source = plugins.get("datasets", config.dataset)
    return source.load(root=config.data_root, download=config.download, **config.dataset_params)


def dataset_spec(config: TrainConfig) -> dict[str, Any]:
    """What the run stores to reload its data: name, load parameters and the absolute data root."""
    root = None if config.data_root is None else str(Path(config.data_root).expanduser().resolve())
    return {"name": config.dataset, **config.dataset_params, "root": root}


def prepare(config: TrainConfig, model_spec: Mapping[str, Any] | None = None) -> Training:
    """Validate ``config``, load the data, build the model and optimizer on the device.

    ``model_spec`` (a resumed run's) rebuilds that architecture; otherwise the
    family makes a new spec from the data's shape. Every check happens here,
    before a run directory is created or a step is taken.
    """
    config.validate()
    family = plugins.get("models", config.model)
    plugins.get("datasets", config.dataset)  # unknown names fail before loading anything
    device = resolve_device(config.device)
    data = load_data(config)
    idx = subset_indices(len(data.x_train), config.P, config.seed)
    spec = dict(model_spec) if model_spec is not None else family.spec(
        input_shape=tuple(data.input_shape), num_classes=int(data.num_classes), **config.model_params)
    torch.manual_seed(config.seed)
    model = family.build(spec)
    scale_weight_matrices(model, spec["layers"], float(config.init_factor))
    model.to(device)
    x_train = data.x_train[idx].to(device)
    batch = config.P if config.batch_size == "full" else min(int(config.batch_size), config.P)
    per_epoch = math.ceil(config.P / batch)
    if config.epochs is not None:
        total = config.epochs * per_epoch
        points = [e * per_epoch for e in parse_schedule(config.schedule, config.epochs)]
    else:
        total = int(config.steps)  # type: ignore[arg-type]
        points = parse_schedule(config.schedule, total)
    return Training(
        config=config, device=device, model=model, optimizer=_optimizer(config, model),
        objective=objective_for(model, x_train), x_train=x_train, y_train=data.y_train[idx].to(device),
        x_test=data.x_test.to(device), y_test=data.y_test.to(device), exact_test_error=data.exact_test_error,
        batch_size=batch, batches_per_epoch=per_epoch, total_steps=total, points=points,
        model_spec=spec, dataset_spec=dataset_spec(config),
    )
