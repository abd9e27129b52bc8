"""normdyn.analyzers: consume stores (measures over checkpoints, aggregation, fits, reports)."""

from __future__ import annotations

from typing import Any

__all__ = ["measure_model"]


def __getattr__(name: str) -> Any:
    # lazy, so that importing normdyn.analyzers does not import torch
    if name == "measure_model":
        from normdyn.analyzers.api import measure_model

        return measure_model
    raise AttributeError(f"module 'normdyn.analyzers' has no attribute {name!r}")
