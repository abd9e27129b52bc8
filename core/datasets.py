"""Loading a dataset by name, with the parameters every dataset accepts.

Both the trainer and the analyzer (data-dependent measures) load data through
:func:`load_dataset`, so a run's samples are the same on both sides.

Generic parameters, taken out before the dataset plugin sees the rest:

- ``label_noise`` (fraction f in [0, 1), default 0): exactly ``round(f n)`` of
  the n training labels are replaced by a different class drawn uniformly
  from the other ``num_classes - 1`` (symmetric label noise, as in Zhang et
  al. 2017, "Understanding deep learning requires rethinking
  generalization", but never keeping the true class, so f is the exact
  fraction of wrong labels). The test labels stay clean. Which samples are
  corrupted and their new classes depend on ``label_noise_seed`` (default 0)
  alone, not on the run seed: the noise belongs to the pool, so the nested
  P-subsets of :mod:`normdyn.core.sampling` carry the same noisy labels for
  every P and seed.
- ``label_noise_seed`` (int >= 0, default 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from normdyn.core import plugins
from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import DataError

__all__ = ["load_dataset", "noisy_labels"]

_LABEL_NOISE_STREAM = 0x6C6E  # tags the seed sequence of the label noise ("ln")


def noisy_labels(y: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """``y`` with exactly ``round(fraction * len(y))`` labels moved to another class (module docstring)."""
    if not 0 <= fraction < 1:
        raise DataError(f"label_noise={fraction!r}: must be a fraction in [0, 1)")
    if num_classes < 2:
        raise DataError(f"label_noise needs at least 2 classes, the dataset has {num_classes}")
    n_noisy = int(round(fraction * len(y)))
    # numpy's PCG64 on a seed sequence tagged for label noise: a torch.Generator seeded with the same integer
    # would draw the very permutation subset_indices draws for that run seed, and corrupt exactly its P samples
    rng = np.random.default_rng([_LABEL_NOISE_STREAM, int(seed)])
    which = torch.from_numpy(rng.permutation(len(y))[:n_noisy])
    shift = torch.from_numpy(rng.integers(1, num_classes, n_noisy))  # 1..C-1: never the true class
    out = y.clone()
    out[which] = (y[which] + shift.to(y.dtype)) % num_classes
    return out


def load_dataset(
    name: str, *, root: str | None = None, download: bool = False, params: Mapping[str, Any] | None = None
) -> DatasetTensors:
    """Dataset ``name`` through its plugin, with the generic parameters applied (module docstring)."""
    params = dict(params or {})
    fraction = params.pop("label_noise", 0.0)
    seed = params.pop("label_noise_seed", 0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise DataError(f"dataset {name!r}: label_noise={fraction!r} must be a number in [0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"dataset {name!r}: label_noise_seed={seed!r} must be a non-negative integer")
    data = plugins.get("datasets", name).load(root=root, download=download, **params)
    if not fraction:
        return data
    y = noisy_labels(data.y_train, float(fraction), int(data.num_classes), seed)
    return replace(data, y_train=y, spec={**data.spec, "label_noise": float(fraction), "label_noise_seed": seed})
