"""MNIST, CIFAR-10 and CIFAR-100 from a local data root, datasets ``mnist``,
``cifar10``, ``cifar100``.

The files are torchvision's on-disk layout (``ROOT/MNIST/raw/*-ubyte``,
``ROOT/cifar-10-batches-py/``, ``ROOT/cifar-100-python/``); ``download=True``
lets torchvision fetch them, otherwise nothing touches the network. MNIST is
parsed by torchvision (IDX files); the CIFAR python batches are checked
against torchvision's md5 list and read with an arrays-only unpickler (never
plain ``pickle.load``). Normalisation is the reference's: MNIST
(x - 0.5) / 0.5; CIFAR per channel with mean (0.4914, 0.4822, 0.4465) and
std (0.2023, 0.1994, 0.2010). Everything is returned as float32 tensors. torchvision is imported only when
a dataset is loaded (it takes seconds to import, and every CLI call loads
the plugins).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import DataError
from normdyn.core.hookspecs import hookimpl
from normdyn.core.safe_pickle import load_array_pickle

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _root(name: str, root: str | None) -> Path:
    if root is None:
        raise DataError(f"dataset {name!r} needs a data root: pass --data-root DIR (data_root in a config)")
    return Path(root).expanduser()


def _no_params(name: str, params: dict[str, Any]) -> None:
    if params:
        raise DataError(f"dataset {name!r} takes no parameters (got {', '.join(sorted(params))})")


class MNIST:
    """Dataset ``mnist``: 60000 train / 10000 test 28x28 digits, normalised to [-1, 1]."""

    name = "mnist"

    def load(self, *, root: str | None = None, download: bool = False, **params: Any) -> DatasetTensors:
        """All of MNIST as tensors ([N, 1, 28, 28] float32, labels int64)."""
        _no_params(self.name, params)
        base = _root(self.name, root)
        import torchvision

        try:
            train = torchvision.datasets.MNIST(str(base), train=True, download=download)
            test = torchvision.datasets.MNIST(str(base), train=False, download=download)
        except RuntimeError as exc:
            raise DataError(
                f"dataset 'mnist' not found: expected the IDX files train-images-idx3-ubyte, "
                f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte in {base / 'MNIST' / 'raw'}; "
                f"put them there or pass --download to fetch them ({exc})"
            ) from None

        def images(ds: Any) -> torch.Tensor:
            return ((ds.data.to(torch.float32) / 255.0 - 0.5) / 0.5).unsqueeze(1).contiguous()

        return DatasetTensors(
            images(train),
            train.targets.to(torch.int64),
            images(test),
            test.targets.to(torch.int64),
            num_classes=10,
            input_shape=(1, 28, 28),
            spec={"name": self.name},
        )


class CIFAR:
    """Datasets ``cifar10`` / ``cifar100``: 50000 train / 10000 test 32x32 RGB images."""

    def __init__(self, name: str, tv_class: str, num_classes: int, label_key: str):
        self.name = name
        self.tv_class_name = tv_class
        self.num_classes = num_classes
        self.label_key = label_key

    def _files(self, base: Path, files: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.datasets import utils as tv_utils

        xs, ys = [], []
        for fname, md5 in files:
            path = base / fname
            if not tv_utils.check_integrity(str(path), md5):
                raise DataError(
                    f"dataset {self.name!r}: {path} is corrupted (md5 mismatch); delete "
                    f"{base} and pass --download to fetch it again"
                )
            batch = load_array_pickle(path, what="a CIFAR batch")
            try:
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels = np.asarray(batch[self.label_key], dtype=np.int64)
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(
                    f"{path}: not a CIFAR batch (needs 'data' [N, 3072] uint8 and {self.label_key!r}; {exc})"
                ) from None
            if len(labels) != len(data):
                raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
            xs.append(torch.from_numpy(data))
            ys.append(torch.from_numpy(labels))
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        x = (torch.cat(xs).to(torch.float32) / 255.0 - mean) / std
        return x.contiguous(), torch.cat(ys)

    def load(self, *, root: str | None = None, download: bool = False, **params: Any) -> DatasetTensors:
        """All of the dataset as tensors ([N, 3, 32, 32] float32, labels int64)."""
        _no_params(self.name, params)
        top = _root(self.name, root)
        import torchvision

        tv_class = getattr(torchvision.datasets, self.tv_class_name)
        base = top / tv_class.base_folder
        if download:
            tv_class(str(top), train=True, download=True)
        names = [f for f, _ in tv_class.train_list + tv_class.test_list]
        missing = [f for f in names if not (base / f).is_file()]
        if missing:
            raise DataError(
                f"dataset {self.name!r} not found: expected {', '.join(missing)} in {base}; put the "
                f"python-version batches there or pass --download to fetch them"
            )
        x_train, y_train = self._files(base, tv_class.train_list)
        x_test, y_test = self._files(base, tv_class.test_list)
        return DatasetTensors(
            x_train,
            y_train,
            x_test,
            y_test,
            num_classes=self.num_classes,
            input_shape=(3, 32, 32),
            spec={"name": self.name},
        )


@hookimpl
def register_datasets(register: Any) -> None:
    register(MNIST())
    register(CIFAR("cifar10", "CIFAR10", 10, "labels"))
    register(CIFAR("cifar100", "CIFAR100", 100, "fine_labels"))
