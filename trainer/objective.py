"""The loss and the error of a model's outputs, and whole-set evaluation.

A model with one output (a single logit) is a binary classifier: its loss is
binary cross-entropy on the logit with labels y in {0, 1}, i.e.
log(1 + exp(-s z)) with s = 2y - 1 (the perceptron's logistic loss), and it
errs where (logit > 0) != y. Any other model is a K-class classifier with
cross-entropy loss and errs where argmax != y.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Objective", "objective_for", "evaluate"]


@dataclass(frozen=True)
class Objective:
    """``binary``: single-logit BCE-with-logits; otherwise cross-entropy."""

    binary: bool

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Mean (or summed) loss of outputs ``out`` against integer labels ``y``."""
        if self.binary:
            return F.binary_cross_entropy_with_logits(out.reshape(-1), y.to(out.dtype), reduction=reduction)
        return F.cross_entropy(out, y, reduction=reduction)

    def errors(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Number of misclassified samples (a 0-dim tensor)."""
        if self.binary:
            return ((out.reshape(-1) > 0).to(y.dtype) != y).sum()
        return (out.argmax(dim=1) != y).sum()


def objective_for(model: nn.Module, example: torch.Tensor) -> Objective:
    """The objective matching ``model``'s output width, probed on one example (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        width = model(example[:1]).reshape(1, -1).shape[1]
    model.train(was_training)
    return Objective(binary=width == 1)


def evaluate(
    model: nn.Module, objective: Objective, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """(error fraction, mean loss) of ``model`` on all of ``x``, ``y``; NaN, NaN if empty.

    Runs in eval mode (BatchNorm uses running statistics, no dropout) under
    inference_mode, in batches of ``batch_size``, and restores the mode after.
    """
    n = int(x.shape[0])
    if n == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        errors = torch.zeros((), dtype=torch.int64, device=x.device)
        loss = torch.zeros((), dtype=torch.float64, device=x.device)
        for start in range(0, n, batch_size):
            out = model(x[start : start + batch_size])
            yb = y[start : start + batch_size]
            loss += objective.loss(out, yb, reduction="sum").double()
            errors += objective.errors(out, yb)
    model.train(was_training)
    return int(errors) / n, float(loss) / n
