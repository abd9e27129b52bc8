"""Which training samples a run of size P uses.

The P samples of seed s are the first P entries of one fixed permutation of
the training set drawn from ``torch.Generator().manual_seed(s)``. Hence the
subsets are nested across P for one seed (the P=1000 set contains the P=500
set), and the trainer and the analyzer (data-dependent measures) select the
same samples without talking to each other.
"""

from __future__ import annotations

import torch

from normdyn.core.errors import ConfigError

__all__ = ["subset_indices"]


def subset_indices(n_available: int, P: int, seed: int) -> torch.Tensor:
    """Indices (int64) of the P training samples of ``seed`` out of ``n_available``."""
    if P < 1:
        raise ConfigError(f"P={P}: the number of training samples must be >= 1")
    if P > n_available:
        raise ConfigError(f"P={P} is larger than the training set ({n_available} samples)")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_available, generator=gen)[:P]
