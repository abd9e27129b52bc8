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

from normdyn.core import plugins
from normdyn.core.errors import ConfigError, ScheduleError, UnknownNameError
from normdyn.core.schedule import parse_schedule
from normdyn.core.store import LATER_KEYS, PLACEMENT_KEYS, config_identity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "TrainConfig",
    "OPTIMIZERS",
    "OPTIMIZER_PARAMS",
    "OPTIMIZER_DEFAULTS",
    "LATER_FIELDS",
    "read_toml",
    "RUN_ID_EXCLUDED",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "gd-adaptive")
#: The keys ``optimizer_params`` may hold, per optimizer (``gd-adaptive``: the perceptron engine,
#: normdyn.trainer.perceptron). The other optimizers take none.
OPTIMIZER_PARAMS: dict[str, tuple[str, ...]] = {"gd-adaptive": ("safety", "max_rel_step", "lam_stop")}
#: What ``optimizer_params`` holds when a config leaves a key out (made explicit in the config, so the
#: stored config shows every value the run used and equal computations get one run id).
OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {"gd-adaptive": {"safety": 0.5, "max_rel_step": 0.05}}
#: Fields added after the first store format (core.store.LATER_KEYS): at their neutral value they do
#: not enter the run id, so every run id made before they existed stays valid.
LATER_FIELDS = LATER_KEYS
# Fields that say where or how fast a run executes, not what it computes:
# they do not enter the run id, so a run resumes on another device or data path,
# and a seed trained in an ensemble is the same run as one trained alone.
RUN_ID_EXCLUDED = PLACEMENT_KEYS


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
    optimizer: str = "adam"  # adam | adamw | sgd | gd-adaptive (full-batch, perceptron engine)
    lr: float = 1e-3  # learning rate (constant: the reference uses no schedule); gd-adaptive: the first step
    # on v = w / sqrt(N)
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
    optimizer_params: dict[str, Any] = field(default_factory=dict)  # gd-adaptive: safety (1/2), max_rel_step
    # (0.05), lam_stop (stop once |w|/sqrt(N) >= lam_stop P/N; absent: run all steps)

    def __post_init__(self) -> None:
        # gd-adaptive: its defaults made explicit and its numbers floats (6 and 6.0 are one run);
        # values of the wrong type are left as given, for problems() to name
        defaults = OPTIMIZER_DEFAULTS.get(self.optimizer) if isinstance(self.optimizer, str) else None
        if defaults is not None and isinstance(self.optimizer_params, dict):
            params = {**defaults, **self.optimizer_params}
            self.optimizer_params = {k: float(v) if _is_number(v) else v for k, v in params.items()}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """A config from a dict (not yet validated).

        Unknown keys are an error naming them and ``source``; the message then
        also lists every problem of the known values, so one run of the command shows them all.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if not unknown:
            return cls(**dict(values))
        problem = f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        rest = cls(**{k: v for k, v in values.items() if k in known}).problems()
        raise ConfigError(_joined([problem, *rest], source))

    def total(self) -> int:
        """The run length T in the schedule's unit (epochs or steps)."""
        return int(self.epochs if self.epochs is not None else self.steps)  # type: ignore[arg-type]

    def problems(self) -> list[str]:
        """Every problem that can be found without data, names first (model, dataset, optimizer)."""
        return [*self._unknown_names(), *self._value_problems(), *self._schedule_problems()]

    def _unknown_names(self) -> list[str]:
        out = []
        for key, kind in (("model", "models"), ("dataset", "datasets")):
            name = getattr(self, key)
            if isinstance(name, str) and name:
                try:
                    plugins.get(kind, name)
                except UnknownNameError as exc:
                    out.append(str(exc))
        return out

    def _value_problems(self) -> list[str]:
        out = [
            f"{key}={getattr(self, key)!r}: must be a {key} name (a string, see `normdyn plugins`)"
            for key in ("model", "dataset")
            if not isinstance(getattr(self, key), str) or not getattr(self, key)
        ]
        if self.optimizer not in OPTIMIZERS:
            out.append(f"optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        out += self._optimizer_param_problems()
        if (self.epochs is None) == (self.steps is None):
            out.append("set exactly one of epochs and steps (--epochs INT or --steps INT)")
        for key in ("P", "epochs", "steps", "eval_batch_size"):
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or value < 1):
                out.append(f"{key}={value!r}: must be a positive integer")
        if not _is_int(self.seed) or self.seed < 0:
            out.append(f"seed={self.seed!r}: must be a non-negative integer")
        for key in ("ensemble", "download"):
            if not isinstance(getattr(self, key), bool):
                out.append(f"{key}={getattr(self, key)!r}: must be true or false")
        for key in ("lr", "init_factor"):
            value = getattr(self, key)
            if not _is_number(value) or value <= 0:
                out.append(f"{key}={value!r}: must be a positive number")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            out.append(f"weight_decay={self.weight_decay!r}: must be >= 0")
        if not _is_number(self.momentum) or not 0 <= self.momentum < 1:
            out.append(f"momentum={self.momentum!r}: must be in [0, 1)")
        if self.batch_size != "full" and (not _is_int(self.batch_size) or self.batch_size < 1):  # type: ignore[operator]
            out.append(f"batch_size={self.batch_size!r}: must be a positive integer or 'full'")
        for key in ("model_params", "dataset_params", "optimizer_params"):
            if not isinstance(getattr(self, key), dict):
                out.append(f"{key} must be a table/dict, got {getattr(self, key)!r}")
        for key in ("store", "device"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                out.append(f"{key}={getattr(self, key)!r}: must be a non-empty string")
        if self.data_root is not None and not isinstance(self.data_root, str):
            out.append(f"data_root={self.data_root!r}: must be a directory path (a string)")
        return out

    def _optimizer_param_problems(self) -> list[str]:
        params = self.optimizer_params
        if not isinstance(params, dict):
            return []  # reported with the other tables
        allowed = OPTIMIZER_PARAMS.get(self.optimizer, ())
        out = []
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            takes = f"takes {', '.join(allowed)}" if allowed else "takes none"
            out.append(f"optimizer_params {', '.join(unknown)}: optimizer {self.optimizer!r} {takes}")
        for key in ("safety", "max_rel_step", "lam_stop"):
            if key in params and key in allowed and (not _is_number(params[key]) or params[key] <= 0):
                out.append(f"optimizer_params.{key}={params[key]!r}: must be a positive number")
        if _is_number(params.get("safety")) and params["safety"] > 1:
            out.append(f"optimizer_params.safety={params['safety']!r}: must be in (0, 1]")
        if self.optimizer == "gd-adaptive":
            # the engine's systems: one linear logit trained on the whole training set, without weight decay
            if self.model != "perceptron":
                out.append(f"optimizer 'gd-adaptive' trains model 'perceptron' only (got model {self.model!r})")
            if self.batch_size != "full":
                out.append(f"optimizer 'gd-adaptive' is full-batch: set batch_size='full' (got {self.batch_size!r})")
            if self.weight_decay != 0:
                out.append(f"optimizer 'gd-adaptive' has no weight decay (got weight_decay={self.weight_decay!r})")
        return out

    def _schedule_problems(self) -> list[str]:
        if not isinstance(self.schedule, str):
            return [f"schedule={self.schedule!r}: must be a string such as 'log:50'"]
        total = self.epochs if self.steps is None else self.steps
        if (self.epochs is None) == (self.steps is None) or not _is_int(total) or total < 1:  # type: ignore[operator]
            return []  # the run length's problem is reported already; the schedule cannot be checked without it
        try:
            parse_schedule(self.schedule, self.total())
        except ScheduleError as exc:
            return [f"schedule {self.schedule!r}: {exc}"]
        return []

    def validate(self, *, source: str | None = None) -> TrainConfig:
        """Check every value that can be checked without data; return self.

        All problems are reported in one error, one line each (prefixed with
        ``source`` when given): an UnknownNameError when every problem is an
        unknown model or dataset name, else a ConfigError.
        """
        unknown = self._unknown_names()
        rest = [*self._value_problems(), *self._schedule_problems()]
        if rest:
            raise ConfigError(_joined([*unknown, *rest], source))
        if unknown:
            raise UnknownNameError(_joined(unknown, source))
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that define what the run computes (all but :data:`RUN_ID_EXCLUDED`).

        A field of :data:`LATER_FIELDS` at its neutral value is left out, so run ids made before it existed hold
        (:func:`normdyn.core.store.config_identity`, which fits group by, too).
        """
        return config_identity(asdict(self))

    def run_id(self) -> str:
        """Deterministic id: ``MODEL-DATASET-P{P}-s{seed}-HASH`` (same config, same run directory)."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.model}-{self.dataset}-P{self.P}-s{self.seed}-{digest}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _joined(problems: list[str], source: str | None) -> str:
    """One line per problem, each prefixed with ``source`` when given."""
    return "\n".join(p if source is None else f"{source}: {p}" for p in problems)


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
