"""The training configuration: one dataclass with commented defaults, read
from keyword arguments, CLI options or a TOML file, validated before any data
is loaded, and hashed into a deterministic run id."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from normdyn.core.errors import ConfigError, ScheduleError
from normdyn.core.schedule import parse_schedule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["TrainConfig", "OPTIMIZERS", "read_toml", "RUN_ID_EXCLUDED"]

OPTIMIZERS = ("adam", "adamw", "sgd")
# Fields that say where or how fast a run executes, not what it computes:
# they do not enter the run id, so a run resumes on another device or data path,
# and a seed trained in an ensemble is the same run as one trained alone.
RUN_ID_EXCLUDED = ("store", "data_root", "download", "device", "eval_batch_size", "ensemble")


@dataclass
class TrainConfig:
    """Everything that defines one training run (defaults follow the paper's CNN-MNIST set-up)."""

    model: str = "cnn"  # model family name (normdyn plugins models)
    dataset: str = "mnist"  # dataset name
    P: int = 1000  # number of training samples, drawn with the seed (nested across P)
    seed: int = 0  # seeds the P-subset, the initial weights, data order and dropout
    epochs: int | None = None  # run length in epochs (set exactly one of epochs / steps)
    steps: int | None = None  # run length in optimizer steps; the schedule then counts steps
    schedule: str = "log:50"  # checkpoint points over epochs (or steps); 0 = initial weights
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3  # learning rate (constant: the reference uses no schedule)
    momentum: float = 0.9  # SGD momentum (sgd only; 0 = plain gradient descent)
    weight_decay: float = 0.0  # L2 (adam, sgd) or decoupled (adamw) weight decay
    batch_size: int | str = 128  # samples per step, or "full" for full-batch gradient descent
    init_factor: float = 1.0  # multiplies every weight matrix at init (biases untouched)
    model_params: dict[str, Any] = field(default_factory=dict)  # family parameters, e.g. preset, widths
    dataset_params: dict[str, Any] = field(default_factory=dict)  # dataset parameters, e.g. N for teacher
    store: str = "runs"  # store directory the run is written into
    data_root: str | None = "data"  # where datasets live (torchvision layout)
    download: bool = False  # let torchvision download an absent dataset
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    eval_batch_size: int | None = None  # samples per forward pass of the checkpoint evaluations; None: 128 on
    # the CPU (cache-sized chunks ran 25 % faster), 2048 elsewhere
    ensemble: bool = False  # sweeps: train the seeds of one config together (torch.func)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """A config from a dict; unknown keys are an error naming them and ``source``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**dict(values))

    def total(self) -> int:
        """The run length T in the schedule's unit (epochs or steps)."""
        return int(self.epochs if self.epochs is not None else self.steps)  # type: ignore[arg-type]

    def validate(self) -> TrainConfig:
        """Check every value that can be checked without data; return self."""
        if (self.epochs is None) == (self.steps is None):
            raise ConfigError("set exactly one of epochs and steps (--epochs INT or --steps INT)")
        for key in ("P", "epochs", "steps", "eval_batch_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{key}={value!r}: must be a positive integer")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r}: must be a non-negative integer")
        if not isinstance(self.ensemble, bool):
            raise ConfigError(f"ensemble={self.ensemble!r}: must be true or false")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        for key, low in (("lr", 0.0), ("init_factor", 0.0)):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= low:
                raise ConfigError(f"{key}={value!r}: must be a positive number")
        if not isinstance(self.weight_decay, (int, float)) or not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay={self.weight_decay!r}: must be >= 0")
        if not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum={self.momentum!r}: must be in [0, 1)")
        if self.batch_size != "full" and (
            not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1
        ):
            raise ConfigError(f"batch_size={self.batch_size!r}: must be a positive integer or 'full'")
        for key in ("model_params", "dataset_params"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"{key} must be a table/dict, got {getattr(self, key)!r}")
        try:
            parse_schedule(self.schedule, self.total())
        except ScheduleError as exc:
            raise ConfigError(f"schedule {self.schedule!r}: {exc}") from None
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that define what the run computes (all but :data:`RUN_ID_EXCLUDED`)."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_ID_EXCLUDED}

    def run_id(self) -> str:
        """Deterministic id: ``MODEL-DATASET-P{P}-s{seed}-HASH`` (same config, same run directory)."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.model}-{self.dataset}-P{self.P}-s{self.seed}-{digest}"


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file ``path``; a missing or invalid file is a ConfigError naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
