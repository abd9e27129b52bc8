"""Data-dependent measures: the Fisher-Rao norm and normalised margins.

Both evaluate the rebuilt model (eval mode) on up to ``n_samples`` samples
of the run's training subset (the same P samples the run was trained on,
see :func:`normdyn.core.sampling.subset_indices`), or of the test set with
``split="test"``.
"""

from __future__ import annotations

from typing import Any

import torch

from normdyn.core.errors import ConfigError, MeasureError
from normdyn.core.hookspecs import hookimpl
from normdyn.plugins.measures.spectral import bartlett, layer_norms

__all__ = ["FisherRao", "Margin"]

_SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ConfigError(f"split {split!r}: use one of {', '.join(_SPLITS)}")


def _logits(view: Any, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, f): inputs, integer labels and float64 logits of shape (n, K); K = 1 for a binary classifier.

    A one-logit model is the binary classifier of ``normdyn.trainer.objective``
    (labels 0/1, BCE on the logit); other labels are refused.
    """
    x, y = view.data(split, n)
    model = view.module()
    with torch.no_grad():
        f = model(x).double().reshape(len(x), -1)
    y = y.long()
    if f.shape[1] == 1 and not bool(((y == 0) | (y == 1)).all()):
        found = sorted({int(v) for v in y.unique()})
        raise MeasureError(f"a one-logit (binary) model needs labels 0/1, found labels {found[:10]}")
    return x, y, f


class FisherRao:
    """Fisher-Rao norm of Liang, Poggio, Rakhlin and Stokes (2019):

    ||theta||_fr = (L+1) * sqrt( E_x[ <dl/df(x), f(x)>^2 ] ),

    with f(x) the logits, l the cross-entropy, dl/df = softmax(f) - onehot(y),
    and L+1 the number of weight layers. ``label="true"`` takes y the
    sample's label (empirical Fisher, default); ``label="model"`` averages
    over y ~ softmax(f(x)): E_y <dl/df, f>^2 = sum_y p_y (f_y - <p, f>)^2.

    A one-logit model z(x) with labels y in {0, 1} has the binary
    cross-entropy l = log(1 + exp(-s z)), s = 2y - 1, so dl/dz = sigmoid(z) - y
    and <dl/df, f> = (sigmoid(z) - y) z (``label="true"``); with y ~
    Bernoulli(sigmoid(z)), E_y <dl/df, f>^2 = sigmoid(z) (1 - sigmoid(z)) z^2
    (``label="model"``). Both equal the K = 2 forms for the logits (0, z).
    The identity <theta, grad_theta l> = (L+1) <dl/df, f> behind it holds for
    bias-free ReLU networks; with biases this is the formula, not the norm.
    Params: split ("train"), n_samples (1024), label ("true").
    """

    name = "fisher_rao"
    version = "2"
    needs = frozenset({"model", "data"})

    def __init__(self, split: str = "train", n_samples: int = 1024, label: str = "true"):
        _check_split(split)
        if label not in ("true", "model"):
            raise ConfigError(f"label {label!r}: use 'true' or 'model'")
        self.params: dict[str, Any] = {"split": split, "n_samples": n_samples, "label": label}

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        _, y, f = _logits(view, self.params["split"], self.params["n_samples"])
        if f.shape[1] == 1:
            z, p1 = f[:, 0], torch.sigmoid(f[:, 0])
            sq = ((p1 - y) * z) ** 2 if self.params["label"] == "true" else p1 * (1 - p1) * z**2
            return len(view.layers) * float(sq.mean()) ** 0.5
        p = torch.softmax(f, dim=1)
        mean_f = (p * f).sum(dim=1)
        if self.params["label"] == "true":
            sq = (mean_f - f.gather(1, y[:, None])[:, 0]) ** 2
        else:
            sq = (p * (f - mean_f[:, None]) ** 2).sum(dim=1)
        return len(view.layers) * float(sq.mean()) ** 0.5


class Margin:
    """Quantiles of Bartlett's normalised margins on the training samples:

    m(x, y) = (f(x)_y - max_{j != y} f(x)_j) / (R * ||X||_F / n),

    R the spectral complexity (spectral_complexity, default params), X the n
    inputs flattened. A one-logit model z(x) with labels y in {0, 1} has the
    raw margin s z(x), s = 2y - 1 in {-1, +1} (the K = 2 margin of the logits
    (0, z)), normalised by the same R ||X||_F / n. Returns one value per quantile q, stored as
    ``margin.qNN`` (NN = 100 q). Params: split ("train"), n_samples (1024),
    quantiles ([0.1, 0.25, 0.5, 0.75, 0.9]).
    """

    name = "margin"
    version = "2"
    needs = frozenset({"weights", "model", "data"})

    def __init__(
        self, split: str = "train", n_samples: int = 1024, quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    ):
        _check_split(split)
        if not all(0.0 <= q <= 1.0 for q in quantiles):
            raise ConfigError(f"quantiles {list(quantiles)}: each must lie in [0, 1]")
        self.params: dict[str, Any] = {"split": split, "n_samples": n_samples, "quantiles": list(quantiles)}

    def compute(self, view: Any, state: dict[str, Any]) -> dict[str, float]:
        x, y, f = _logits(view, self.params["split"], self.params["n_samples"])
        if f.shape[1] == 1:
            raw = (2 * y - 1) * f[:, 0]
        else:
            true = f.gather(1, y[:, None])[:, 0]
            raw = true - f.scatter(1, y[:, None], float("-inf")).max(dim=1).values
        norms = layer_norms(view, state, fold_bn=True, include_bias=False)
        scale = bartlett(norms.sigma, norms.rows21) * float(torch.linalg.vector_norm(x.double())) / len(x)
        normalised = raw / scale
        qs = torch.tensor(self.params["quantiles"], dtype=torch.float64)
        values = torch.quantile(normalised, qs)
        return {f"q{round(100 * q):02d}": float(v) for q, v in zip(self.params["quantiles"], values)}


@hookimpl
def register_measures(register: Any) -> None:
    register(FisherRao())
    register(Margin())
