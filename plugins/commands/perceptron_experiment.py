"""The teacher-student perceptron experiment: a grid of loads alpha = P/N and seeds as ordinary configs.

:class:`PerceptronExperiment` is the grid; :meth:`PerceptronExperiment.configs`
turns it into one :class:`~normdyn.trainer.config.TrainConfig` per (alpha,
seed): model ``perceptron``, dataset ``teacher`` (one teacher and one pool
for the whole grid), optimizer ``gd-adaptive``, full batch. Their run ids are
the config hashes, the perceptron engine (normdyn.trainer.perceptron) trains
them as one group, and the same configs written as a sweep file
(:meth:`PerceptronExperiment.sweep_toml`) train the same runs with ``normdyn sweep``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from normdyn.core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - the trainer (torch) loads only when used
    from normdyn.trainer.config import TrainConfig

__all__ = ["PerceptronExperiment", "perceptron_experiment"]


@dataclass(frozen=True)
class PerceptronExperiment:
    """The grid and the optimiser of one perceptron experiment."""

    N: int = 1000  # input dimension
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # loads alpha = P/N
    seeds: tuple[int, ...] = (0, 1, 2)  # seeds: P-subset of the pool per run
    inputs: str = "rademacher"  # rademacher (the paper) | gaussian
    teacher_seed: int = 0  # one teacher and pool for the whole experiment
    pool_factor: float = 2.0  # pool size n_train = pool_factor * max P
    steps: int = 20000  # at most this many gradient steps per system
    schedule: str = "log:60"  # checkpoint steps (normdyn.core.schedule)
    lr0: float = 0.01  # first step size on v = w / sqrt(N) (small: the early norms are resolved)
    lr_safety: float = 0.5  # s in eta_k <= s |dv| / |dg|
    max_rel_step: float = 0.05  # rho in eta_k <= rho |v_k| / |g_k|
    lam_stop: float = 6.0  # stop a system once lambda >= lam_stop * alpha
    n_test: int = 1000  # test samples (the test loss; the test error is exact)
    device: str = "cpu"  # where the systems are trained (cpu | cuda | cuda:K)

    def P(self, alpha: float) -> int:
        """The number of samples at load alpha: round(alpha N)."""
        return int(round(alpha * self.N))

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value of the grid (each config is validated as well)."""
        if self.N < 2:
            raise ConfigError(f"N={self.N}: the input dimension must be >= 2")
        if not self.alphas or any(not (a > 0 and math.isfinite(a)) for a in self.alphas):
            raise ConfigError(f"alphas={list(self.alphas)}: give positive loads, e.g. 0.5,1,2,4")
        if len(set(self.alphas)) != len(self.alphas) or len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ConfigError(f"alphas {list(self.alphas)} and seeds {list(self.seeds)} must be non-empty and distinct")
        if len({self.P(a) for a in self.alphas}) != len(self.alphas) or min(self.P(a) for a in self.alphas) < 1:
            raise ConfigError(
                f"alphas {list(self.alphas)} give P = {[self.P(a) for a in self.alphas]} at N={self.N}: "
                f"each P must be >= 1 and distinct; use a larger N"
            )
        if self.pool_factor < 1:
            raise ConfigError(f"pool_factor={self.pool_factor}: the pool must hold at least the largest P")
        device = self.device.split(":", 1)
        if device[0] not in ("cpu", "cuda") or (len(device) == 2 and not device[1].isdigit()):
            raise ConfigError(f"device={self.device!r}: use cpu, cuda or cuda:K")
        self.configs("store")  # every config's own checks (schedule, step sizes, ...)

    def dataset_params(self) -> dict[str, Any]:
        """The ``teacher`` dataset shared by every run: one teacher, one pool of ``pool_factor`` x max P."""
        return {
            "N": self.N,
            "inputs": self.inputs,
            "n_train": int(math.ceil(self.pool_factor * max(self.P(a) for a in self.alphas))),
            "n_test": self.n_test,
            "teacher_seed": self.teacher_seed,
        }

    def base(self) -> dict[str, Any]:
        """The config values every run shares (a sweep file's [train] table)."""
        return {
            "model": "perceptron",
            "dataset": "teacher",
            "dataset_params": self.dataset_params(),
            "optimizer": "gd-adaptive",
            "lr": self.lr0,
            "optimizer_params": {
                "safety": self.lr_safety,
                "max_rel_step": self.max_rel_step,
                "lam_stop": self.lam_stop,
            },
            "batch_size": "full",
            "steps": self.steps,
            "schedule": self.schedule,
            "data_root": None,
            "device": self.device,
        }

    def configs(self, store: str | os.PathLike[str]) -> list[TrainConfig]:
        """One validated TrainConfig per (alpha, seed), alphas ascending, into ``store``."""
        from normdyn.trainer.config import TrainConfig

        base = {**self.base(), "store": str(store)}
        return [
            TrainConfig.from_mapping({**base, "P": self.P(a), "seed": s}, source="perceptron").validate(
                source="perceptron"
            )
            for a in sorted(self.alphas)
            for s in self.seeds
        ]

    def sweep_toml(self) -> str:
        """The same grid as a ``normdyn sweep`` file (the runs it trains have the same ids)."""
        base = {k: v for k, v in self.base().items() if v is not None}
        lines = ["[train]"]
        lines += [f"{k} = {_toml(v)}" for k, v in base.items() if not isinstance(v, dict)]
        lines += [f"{k} = {_toml(v)}" for k, v in base.items() if isinstance(v, dict)]
        lines += ["", "[sweep]", f"P = {_toml([self.P(a) for a in sorted(self.alphas)])}"]
        lines += [f"seed = {_toml(list(self.seeds))}", ""]
        return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def perceptron_experiment(quick: bool) -> PerceptronExperiment:
    """The quick experiment (well under 2 minutes on 2 cores) or the default one (about 4 minutes)."""
    if quick:
        return PerceptronExperiment(
            N=200,
            alphas=(1.0, 2.0, 4.0, 8.0, 16.0),
            seeds=(0, 1, 2),
            steps=4000,
            schedule="log:30",
        )
    return PerceptronExperiment()
