"""normdyn.trainer: models are trained here into stores (training loop, sweeps, the Recorder for users' loops)."""

from __future__ import annotations

from typing import Any

__all__ = ["Recorder"]


def __getattr__(name: str) -> Any:
    # lazy, so that importing normdyn.trainer (e.g. by the CLI) does not import torch
    if name == "Recorder":
        from normdyn.trainer.recorder import Recorder

        return Recorder
    raise AttributeError(f"module 'normdyn.trainer' has no attribute {name!r}")
