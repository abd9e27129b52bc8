"""Everything a run holds in memory: device, data tensors, model, optimizer.

Built the same way for a fresh run and for a resumed one, so a resumed run
continues with exactly the objects an uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normdyn.core import plugins
from normdyn.core.contracts import DatasetTensors
from normdyn.core.datasets import load_dataset
from normdyn.core.errors import ConfigError, NormdynError
from normdyn.core.sampling import subset_indices
from normdyn.core.schedule import parse_schedule
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.objective import Objective, objective_for

__all__ = [
    "Setting",
    "Training",
    "setting",
    "prepare",
    "load_data",
    "dataset_spec",
    "resolve_device",
    "scale_weight_matrices",
    "make_optimizer",
    "new_model_spec",
    "build_model",
    "step_plan",
    "eval_batch_size",
    "ORDER_SEED_OFFSET",
    "EVAL_BATCH_CPU",
    "EVAL_BATCH_OTHER",
]

# The data-order generator is seeded with seed + this offset, so the order of
# the P samples is not the permutation that chose them (core/sampling.py).
ORDER_SEED_OFFSET = 1_000_003


@dataclass
class Setting:
    """What every seed of one configuration shares: device, objective, test data, schedule in steps, specs."""

    device: torch.device
    objective: Objective
    x_test: torch.Tensor
    y_test: torch.Tensor
    exact_test_error: Callable[[nn.Module], float | None] | None
    batch_size: int
    batches_per_epoch: int
    total_steps: int
    points: list[int]
    model_spec: dict[str, Any]
    dataset_spec: dict[str, Any]

    def shared(self) -> dict[str, Any]:
        """The :class:`Setting` fields by name (the objects themselves, not copies), to build a subclass."""
        return {f.name: getattr(self, f.name) for f in fields(Setting)}


@dataclass
class Training(Setting):
    """A run ready to train: the shared setting, plus its config, model, optimizer and P training samples."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    x_train: torch.Tensor
    y_train: torch.Tensor


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


def make_optimizer(
    config: TrainConfig, params: Iterable[torch.Tensor], *, fused: bool | None = None
) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``params`` (a model's, or an ensemble's stacked ones).

    ``fused`` is torch's option (None: torch's default implementation, which a separate run uses).
    """
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=fused
    )


def _described(value: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in value.items())


def load_data(config: TrainConfig) -> DatasetTensors:
    """The whole dataset of ``config`` (through the dataset plugin).

    An exception that is not a NormdynError (a plugin that did not check a
    parameter) becomes a ConfigError naming the dataset and its parameters.
    """
    try:
        return load_dataset(
            config.dataset, root=config.data_root, download=config.download, params=config.dataset_params
        )
    except NormdynError:
        raise
    except Exception as exc:
        given = f" with dataset_params {_described(config.dataset_params)}" if config.dataset_params else ""
        raise ConfigError(
            f"dataset {config.dataset!r} cannot be loaded{given}: {exc} ({type(exc).__name__}); "
            "check these values against the dataset's documentation"
        ) from exc


def dataset_spec(config: TrainConfig) -> dict[str, Any]:
    """What the run stores to reload its data: name, load parameters and the absolute data root."""
    root = None if config.data_root is None else str(Path(config.data_root).expanduser().resolve())
    return {"name": config.dataset, **config.dataset_params, "root": root}


def new_model_spec(config: TrainConfig, data: DatasetTensors) -> dict[str, Any]:
    """The model_spec the family makes for ``config``'s model parameters and the data's shape.

    A family that fails with an exception other than a NormdynError (torch's
    "negative dimension" for ``widths=[-4]``) gets a ConfigError naming the
    parameter whose value it could not build: the one given parameter that,
    left at its default, lets the family build the model (else all given ones).
    """
    family = plugins.get("models", config.model)

    def spec(params: Mapping[str, Any]) -> dict[str, Any]:
        return family.spec(input_shape=tuple(data.input_shape), num_classes=int(data.num_classes), **params)

    try:
        return spec(config.model_params)
    except NormdynError:
        raise
    except Exception as exc:
        raise ConfigError(_model_problem(config, exc, _culprits(config.model_params, spec))) from exc


def _culprits(params: Mapping[str, Any], spec: Callable[[Mapping[str, Any]], Any]) -> dict[str, Any]:
    """The given parameters that alone make ``spec`` fail (all given ones when none does alone)."""
    culprits = {}
    for key in params:
        if key == "preset":
            continue
        try:
            spec({k: v for k, v in params.items() if k != key})
        except Exception:
            continue
        culprits[key] = params[key]
    return culprits or dict(params)


def _model_problem(config: TrainConfig, exc: Exception, params: Mapping[str, Any]) -> str:
    if not params:
        return f"model {config.model!r} cannot be built for dataset {config.dataset!r}: {exc} ({type(exc).__name__})"
    keys = ", ".join(params)
    return (
        f"model {config.model!r} cannot be built with model_params {_described(params)}: {exc} "
        f"({type(exc).__name__}); change {keys} (see the model family's documentation)"
    )


def build_model(config: TrainConfig, spec: Mapping[str, Any]) -> nn.Module:
    """The freshly initialised module of ``spec`` for ``config``'s seed, init factor applied (on the CPU).

    Seeds the global torch RNG with the run seed first, so the weights (and
    the RNG state left behind, which dropout then draws from) depend on the
    seed alone.
    """
    torch.manual_seed(config.seed)
    try:
        model = plugins.get("models", config.model).build(spec)
    except NormdynError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"model {config.model!r} cannot be rebuilt from its model_spec: {exc} ({type(exc).__name__}); "
            "the stored spec does not fit this model family"
        ) from exc
    scale_weight_matrices(model, spec["layers"], float(config.init_factor))
    return model


#: Evaluation chunk when the config leaves it open: on the CPU the paper's MNIST CNN evaluated 3000 samples
#: in 3.7 s in chunks of 128 against 4.9 s in chunks of 2048 (activations that stay in cache); a GPU wants
#: large chunks.
EVAL_BATCH_CPU, EVAL_BATCH_OTHER = 128, 2048


def eval_batch_size(config: TrainConfig, device: torch.device) -> int:
    """``config.eval_batch_size``, or the device's default when it is None."""
    if config.eval_batch_size is not None:
        return int(config.eval_batch_size)
    return EVAL_BATCH_CPU if device.type == "cpu" else EVAL_BATCH_OTHER


def step_plan(config: TrainConfig) -> tuple[int, int, int, list[int]]:
    """(batch size, batches per epoch, total steps, schedule points in steps) of ``config``."""
    batch = config.P if config.batch_size == "full" else min(int(config.batch_size), config.P)
    per_epoch = math.ceil(config.P / batch)
    if config.epochs is not None:
        points = [e * per_epoch for e in parse_schedule(config.schedule, config.epochs)]
        return batch, per_epoch, config.epochs * per_epoch, points
    total = int(config.steps)  # type: ignore[arg-type]
    return batch, per_epoch, total, parse_schedule(config.schedule, total)


def setting(
    config: TrainConfig, device: torch.device, data: DatasetTensors, spec: Mapping[str, Any], model: nn.Module
) -> Setting:
    """The :class:`Setting` of ``config`` on ``device``, for ``data`` and a model built from ``spec``."""
    batch, per_epoch, total, points = step_plan(config)
    return Setting(
        device=device,
        objective=objective_for(model, data.x_train[:1].to(device)),
        x_test=data.x_test.to(device),
        y_test=data.y_test.to(device),
        exact_test_error=data.exact_test_error,
        batch_size=batch,
        batches_per_epoch=per_epoch,
        total_steps=total,
        points=points,
        model_spec=dict(spec),
        dataset_spec=dataset_spec(config),
    )


def prepare(config: TrainConfig, model_spec: Mapping[str, Any] | None = None) -> Training:
    """Validate ``config``, load the data, build the model and optimizer on the device.

    ``model_spec`` (a resumed run's) rebuilds that architecture; otherwise the
    family makes a new spec from the data's shape. Every check happens here,
    before a run directory is created or a step is taken.
    """
    config.validate()  # unknown names and bad values fail before loading anything
    device = resolve_device(config.device)
    data = load_data(config)
    idx = subset_indices(len(data.x_train), config.P, config.seed)
    spec = dict(model_spec) if model_spec is not None else new_model_spec(config, data)
    model = build_model(config, spec).to(device)
    return Training(
        **setting(config, device, data, spec, model).shared(),
        config=config,
        model=model,
        # CUDA: the fused optimizer, one kernel per step instead of one per tensor group (bitwise resume is a
        # CPU promise; on the CPU torch's default implementation keeps separate runs as they were)
        optimizer=make_optimizer(config, model.parameters(), fused=True if device.type == "cuda" else None),
        x_train=data.x_train[idx].to(device),
        y_train=data.y_train[idx].to(device),
    )
