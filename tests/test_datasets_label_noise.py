"""Generic training-label noise (normdyn.core.datasets): the exact fraction of
wrong labels, uniform over the other classes, clean test labels, independent
of the run's P-subset, and the same labels on the trainer and analyzer side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from normdyn.core.datasets import load_dataset, noisy_labels
from normdyn.core.errors import DataError
from normdyn.core.sampling import subset_indices
from normdyn.core.store import Run
from normdyn.core.view import RunContext
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.loop import train
from normdyn.trainer.setup import load_data

TEACHER = {"N": 8, "n_train": 400, "n_test": 100}


def test_exact_fraction_changed_and_new_classes_uniform_over_the_others() -> None:
    C, n = 10, 20000
    y = torch.arange(n) % C
    noisy = noisy_labels(y, 0.3, C, seed=5)
    changed = noisy != y
    assert int(changed.sum()) == 6000
    # the shift (new - old) mod C is uniform on 1..C-1: chi-square against 9 equal cells
    shift = ((noisy[changed] - y[changed]) % C).numpy()
    counts = np.bincount(shift, minlength=C)
    assert counts[0] == 0
    assert stats.chisquare(counts[1:]).pvalue > 1e-3
    # which samples: uniform over the pool (every class hit about equally)
    per_class = np.bincount(y[changed].numpy(), minlength=C)
    assert stats.chisquare(per_class).pvalue > 1e-3


def test_deterministic_per_seed_and_zero_fraction_is_identity() -> None:
    y = torch.arange(1000) % 7
    assert torch.equal(noisy_labels(y, 0.2, 7, 3), noisy_labels(y, 0.2, 7, 3))
    assert not torch.equal(noisy_labels(y, 0.2, 7, 3), noisy_labels(y, 0.2, 7, 4))
    assert torch.equal(noisy_labels(y, 0.0, 7, 3), y)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_noise_is_independent_of_the_run_subsets(seed: int) -> None:
    """A run seed equal to the noise seed must not get a subset made only of the corrupted samples."""
    n, P = 4000, 400
    y = torch.zeros(n, dtype=torch.int64)
    noisy = noisy_labels(y, 0.1, 10, seed)
    frac = float((noisy[subset_indices(n, P, seed)] != 0).double().mean())
    assert 0.05 < frac < 0.15  # binomial(400, 0.1): sd 0.015


def test_load_dataset_corrupts_training_labels_only_and_records_it() -> None:
    clean = load_dataset("teacher", params=TEACHER)
    noisy = load_dataset("teacher", params={**TEACHER, "label_noise": 0.25, "label_noise_seed": 2})
    assert int((noisy.y_train != clean.y_train).sum()) == 100
    assert torch.equal(noisy.y_test, clean.y_test)
    assert torch.equal(noisy.x_train, clean.x_train)
    assert noisy.spec["label_noise"] == 0.25 and noisy.spec["label_noise_seed"] == 2


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"label_noise": 1.0}, "label_noise=1.0: must be a fraction in [0, 1)"),
        ({"label_noise": -0.1}, "label_noise=-0.1: must be a fraction in [0, 1)"),
        ({"label_noise": "lots"}, "dataset 'teacher': label_noise='lots' must be a number in [0, 1)"),
        ({"label_noise": 0.1, "label_noise_seed": -1}, "dataset 'teacher': label_noise_seed=-1 must be a non-negative"),
    ],
)
def test_bad_label_noise_values_are_named(params: dict, expected: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("teacher", params={**TEACHER, **params})
    assert expected in str(err.value)


def test_trainer_and_analyzer_see_the_same_noisy_labels(tmp_path: Path) -> None:
    config = TrainConfig(
        model="mlp",
        dataset="teacher",
        P=120,
        seed=1,
        steps=3,
        schedule="log:2",
        model_params={"widths": [4]},
        dataset_params={**TEACHER, "label_noise": 0.2},
        store=str(tmp_path),
        data_root=None,
        device="cpu",
    ).validate()
    run = train(config, progress=False)
    trained = load_data(config)
    idx = subset_indices(TEACHER["n_train"], 120, 1)
    stored = Run(run.path)
    assert stored.dataset["label_noise"] == 0.2
    _, y = RunContext.for_run(stored).data("train", n=120)
    assert torch.equal(y, trained.y_train[idx])
    clean = load_dataset("teacher", params=TEACHER)
    assert int((y != clean.y_train[idx]).sum()) > 0  # the analyzer did not fall back to the clean labels
