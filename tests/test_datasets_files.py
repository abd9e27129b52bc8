"""Datasets from files in their true on-disk formats: MNIST IDX files,
CIFAR python batches (only the md5 check is patched), MNIST-1D generated
and cached; absent or hostile files give clear errors."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.errors import DataError


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian int32 dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        fh.write(struct.pack(f">{array.ndim}I", *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def _mnist_files(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (64, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 64),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (16, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 16),
    }
    for name, array in arrays.items():
        _write_idx(root / "MNIST" / "raw" / name, array)
    return arrays


def test_mnist_loads_idx_files_with_the_reference_normalisation(tmp_path: Path) -> None:
    arrays = _mnist_files(tmp_path)
    data = plugins.get("datasets", "mnist").load(root=str(tmp_path))
    assert data.x_train.shape == (64, 1, 28, 28) and data.x_test.shape == (16, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    expected = (arrays["train-images-idx3-ubyte"][:, None] / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(data.x_train.numpy(), expected, rtol=0, atol=1e-6)
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)


def _cifar_files(base: Path, files: list[str], label_key: str, classes: int) -> dict[str, dict]:
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in files:
        batch = {
            "data": rng.integers(0, 256, (5, 3072)).astype(np.uint8),
            label_key: rng.integers(0, classes, 5).tolist(),
        }
        with open(base / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)  # the official files are protocol-2 pickles
        batches[name] = batch
    return batches


@pytest.mark.parametrize(
    ("name", "folder", "train", "test", "label_key", "classes"),
    [
        ("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
        ("cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels", 100),
    ],
)
def test_cifar_loads_python_batches(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    folder: str,
    train: list[str],
    test: list[str],
    label_key: str,
    classes: int,
) -> None:
    import torchvision.datasets.utils as tv_utils

    batches = _cifar_files(tmp_path / folder, train + test, label_key, classes)
    monkeypatch.setattr(tv_utils, "check_md5", lambda fpath, md5, **kw: True)
    data = plugins.get("datasets", name).load(root=str(tmp_path))
    assert data.x_train.shape == (5 * len(train), 3, 32, 32) and data.num_classes == classes
    first = batches[train[0]]["data"].reshape(5, 3, 32, 32) / 255.0
    mean = np.array([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1)
    std = np.array([0.2023, 0.1994, 0.2010]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(data.x_train[:5].numpy(), (first - mean) / std, rtol=0, atol=1e-5)
    assert data.y_test.tolist() == batches[test[0]][label_key]


def test_cifar_md5_mismatch_is_reported(tmp_path: Path) -> None:
    _cifar_files(
        tmp_path / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 10
    )
    with pytest.raises(DataError, match="data_batch_1 is corrupted \\(md5 mismatch\\).*--download"):
        plugins.get("datasets", "cifar10").load(root=str(tmp_path))


def test_cifar_batch_naming_other_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    base = tmp_path / "cifar-10-batches-py"
    _cifar_files(base, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 10)

    class Evil:
        def __reduce__(self):  # would run os.getcwd() on a plain pickle.load
            return (os.getcwd, ())

    (base / "data_batch_1").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    monkeypatch.setattr(tv_utils, "check_md5", lambda fpath, md5, **kw: True)
    with pytest.raises(DataError, match="refused to load posix.getcwd"):
        plugins.get("datasets", "cifar10").load(root=str(tmp_path))


@pytest.mark.parametrize(
    ("name", "expected"), [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_missing_dataset_names_the_path_and_download(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(DataError) as info:
        plugins.get("datasets", name).load(root=str(tmp_path))
    assert str(tmp_path / expected) in str(info.value)
    assert "--download" in str(info.value)


def test_cli_missing_dataset_fails_before_creating_a_run(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--model",
            "cnn",
            "--dataset",
            "mnist",
            "--P",
            "10",
            "--epochs",
            "2",
            "--schedule",
            "log:2",
            "--store",
            str(store),
            "--data-root",
            str(tmp_path / "data"),
            "--quiet",
        ],
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: dataset 'mnist' not found: expected the IDX files ")
    assert f"in {tmp_path / 'data' / 'MNIST' / 'raw'}; put them there or pass --download" in result.output
    assert not store.exists()


def test_mnist1d_is_generated_once_and_cached(tmp_path: Path) -> None:
    source = plugins.get("datasets", "mnist1d")
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    first = source.load(root=str(tmp_path), num_samples=100)
    assert (np.random.get_state()[1] == state).all()  # the global numpy RNG is left alone
    cache = tmp_path / "mnist1d" / "mnist1d-n100-split0.8-seed42.npz"
    assert cache.is_file()
    assert first.x_train.shape == (80, 1, 40) and first.x_test.shape == (20, 1, 40)
    assert first.input_shape == (1, 40) and first.num_classes == 10
    again = source.load(root=str(tmp_path), num_samples=100)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    with pytest.raises(DataError, match="unknown parameter\\(s\\) N; allowed: num_samples, train_split, data_seed"):
        source.load(root=str(tmp_path), N=3)
