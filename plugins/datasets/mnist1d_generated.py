"""MNIST-1D generated locally, dataset ``mnist1d``.

Built with ``mnist1d.data.make_dataset`` (never its download path) and cached
as ``ROOT/mnist1d/mnist1d-n{num_samples}-split{train_split}-seed{data_seed}.npz``
(read back without pickle). Parameters: ``num_samples`` (5000: 4000 train /
1000 test with the default split), ``train_split`` (0.8), ``data_seed`` (42,
the generator's seed, independent of the run seed). Inputs are [1, 40]
float32 signals, 10 classes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normdyn.core.atomic import replacing
from normdyn.core.contracts import DatasetTensors
from normdyn.core.errors import DataError
from normdyn.core.hookspecs import hookimpl

_PARAMS = {"num_samples": 5000, "train_split": 0.8, "data_seed": 42}


def _generate(num_samples: int, train_split: float, data_seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # imports matplotlib: seconds, so only when needed

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, data_seed
    # make_dataset reseeds the global python and numpy RNGs; give them back untouched
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": data["x"], "y": data["y"], "x_test": data["x_test"], "y_test": data["y_test"]}


class MNIST1D:
    """Dataset ``mnist1d`` (see the module docstring)."""

    name = "mnist1d"

    def load(self, *, root: str | None = None, download: bool = False, **params: Any) -> DatasetTensors:
        """MNIST-1D as tensors, generated once and cached under ``root`` (no cache without a root)."""
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise DataError(
                f"dataset 'mnist1d': unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(_PARAMS)}"
            )
        p = {**_PARAMS, **params}
        n, split, seed = int(p["num_samples"]), float(p["train_split"]), int(p["data_seed"])
        if n < 10 or not 0 < split < 1:
            raise DataError(f"dataset 'mnist1d': num_samples={n} must be >= 10 and train_split={split} in (0, 1)")
        arrays: dict[str, np.ndarray] | None = None
        cache = (
            None if root is None else Path(root).expanduser() / "mnist1d" / f"mnist1d-n{n}-split{split}-seed{seed}.npz"
        )
        if cache is not None and cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
            except (OSError, KeyError, ValueError) as exc:
                raise DataError(f"{cache}: damaged MNIST-1D cache ({exc}); delete it to regenerate") from None
        if arrays is None:
            arrays = _generate(n, split, seed)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with replacing(cache) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag

        def signals(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1)

        x_train, x_test = signals(arrays["x"]), signals(arrays["x_test"])
        return DatasetTensors(
            x_train,
            torch.from_numpy(arrays["y"].astype(np.int64)),
            x_test,
            torch.from_numpy(arrays["y_test"].astype(np.int64)),
            num_classes=10,
            input_shape=tuple(x_train.shape[1:]),
            spec={"name": self.name, **p},
        )


@hookimpl
def register_datasets(register: Any) -> None:
    register(MNIST1D())
