"""Training speed: normdyn's loop against a plain DataLoader loop, and the
cost of checkpointing + evaluation on the log:50 schedule.

Measured side by side in one process on MNIST-shaped synthetic data
(uint8 images normalised as the reference does) with the paper's MNIST CNN:

1. Epoch time on P training samples, batch 128, Adam: normdyn's own
   ``train_step`` (tensors on the device, batches indexed there) against a
   plain ``torch.utils.data.DataLoader`` over a TensorDataset (shuffle, same
   model, data and batch size). Repeated alternately; medians compared.
   On CUDA it is also compared with the reference's input pipeline: a
   DataLoader (4 workers) that turns every uint8 image into a PIL image and
   applies ToTensor + Normalize.
2. One schedule point with normdyn's own ``save_point``: evaluation on the
   P training samples and on the test set, the safetensors checkpoint and the
   resume state, written into a real store; and the evaluation alone
   (``measure_point``), which gives the per-sample evaluation rate.

The overhead of the schedule is n_points x point time / (T x epoch time);
it depends on P (the test set is evaluated at every point whatever P is), so
it is printed for the paper's MNIST P grid, from the measured per-sample
rates, and the last line reports the geometric middle of the grid (P=6000).

Last line: ``ratio_vs_dataloader=X overhead_pct=Y`` (X > 1: normdyn faster).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from machine import describe  # benchmarks/machine.py, beside this script
from torch.utils.data import DataLoader, TensorDataset

from normdyn.core import plugins
from normdyn.core.contracts import DatasetTensors
from normdyn.core.hookspecs import hookimpl
from normdyn.core.schedule import parse_schedule
from normdyn.core.store import Run
from normdyn.trainer.checkpointing import Position
from normdyn.trainer.config import TrainConfig
from normdyn.trainer.loop import measure_point, save_point, train_step
from normdyn.trainer.setup import ORDER_SEED_OFFSET, prepare

P_GRID = (375, 1500, 6000, 48000)
P_REPORTED = 6000
MNIST_TEST = 10000  # the test set every point evaluates, in the overhead figures


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


class SyntheticMNIST:
    """MNIST-shaped random digits, normalised like the reference ((x/255 - 0.5) / 0.5)."""

    name = "bench_mnist"

    def __init__(self, n_train: int, n_test: int):
        self.raw_train = _images(n_train, 0)
        self.raw_test = _images(n_test, 1)

    def load(self, *, root: Any = None, download: bool = False, **params: Any) -> DatasetTensors:
        def norm(u8: torch.Tensor) -> torch.Tensor:
            return ((u8.float() / 255 - 0.5) / 0.5).unsqueeze(1)

        return DatasetTensors(
            norm(self.raw_train[0]),
            self.raw_train[1],
            norm(self.raw_test[0]),
            self.raw_test[1],
            num_classes=10,
            input_shape=(1, 28, 28),
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _dataloader_epoch(
    model: torch.nn.Module, opt: torch.optim.Optimizer, loader: DataLoader, device: torch.device
) -> None:
    model.train()
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()


class PILTransformDataset(torch.utils.data.Dataset):
    """The reference pipeline: uint8 array -> PIL image -> ToTensor -> Normalize, per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        from torchvision import transforms

        self.images, self.labels = images.numpy(), labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--P", type=int, default=1024, help="training samples timed per epoch")
    ap.add_argument("--test-size", type=int, default=2000, help="test samples timed (figures scale to MNIST's 10000)")
    ap.add_argument("--T", type=int, default=1000, help="epochs of the run the overhead refers to (reference: 1000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    print(describe(), flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    source = SyntheticMNIST(args.P, args.test_size)

    class Plugin:
        @hookimpl
        def register_datasets(self, register: Any) -> None:
            register(source)

    plugins.register_plugin(Plugin(), name="bench-mnist")
    config = TrainConfig(
        model="cnn",
        dataset="bench_mnist",
        P=args.P,
        seed=0,
        epochs=args.T,
        schedule="log:50",
        batch_size=128,
        init_factor=0.05,
        data_root=None,
        device=args.device,
    )
    t = prepare(config)
    init_model, init_opt = copy.deepcopy(t.model.state_dict()), copy.deepcopy(t.optimizer.state_dict())
    print(
        f"device={device} torch_threads={torch.get_num_threads()} P={args.P} batch=128 "
        f"test={args.test_size} model=cnn (MNIST preset)"
    )

    order = torch.Generator().manual_seed(ORDER_SEED_OFFSET)
    at = Position()

    def normdyn_epoch() -> None:
        for _ in range(t.batches_per_epoch):
            train_step(t, at, order)

    ref_model = plugins.get("models", "cnn").build(t.model_spec).to(device)
    ref_model.load_state_dict(init_model)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(t.x_train.cpu(), t.y_train.cpu()), batch_size=128, shuffle=True)
    pipelines: dict[str, Callable[[], None]] = {
        "normdyn": normdyn_epoch,
        "dataloader": lambda: _dataloader_epoch(ref_model, ref_opt, loader, device),
    }
    if device.type == "cuda":
        pil_loader = DataLoader(
            PILTransformDataset(*source.raw_train), batch_size=128, shuffle=True, num_workers=4, persistent_workers=True
        )
        pipelines["dataloader_transforms"] = lambda: _dataloader_epoch(ref_model, ref_opt, pil_loader, device)
    for fn in pipelines.values():  # warm-up (allocator, kernels, workers)
        fn()
    times: dict[str, list[float]] = {k: [] for k in pipelines}
    for _ in range(args.repeats):
        for name, fn in pipelines.items():
            times[name].append(_timed(fn, device))
    epoch = {k: statistics.median(v) for k, v in times.items()}
    for name, value in epoch.items():
        print(f"epoch_time_{name}_s={value:.4f}")
    ratio = epoch["dataloader"] / epoch["normdyn"]
    print(f"ratio_vs_dataloader={ratio:.3f}")
    if "dataloader_transforms" in epoch:
        print(f"ratio_vs_dataloader_transforms={epoch['dataloader_transforms'] / epoch['normdyn']:.3f}")

    # one schedule point, with normdyn's own save_point, into a real store
    t.model.load_state_dict(init_model)
    t.optimizer.load_state_dict(init_opt)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.create(tmp, "bench", config={}, model_spec=t.model_spec, dataset={}, P=args.P, seed=0)
        point_times, eval_times = [], []
        for i in range(args.repeats):
            at.step = i + 1  # distinct, increasing steps inside the run: checkpoint and resume state
            point_times.append(_timed(lambda: save_point(t, run, at, order, set()), device))
            eval_times.append(_timed(lambda: measure_point(t), device))
        ckpt_bytes = int(run.checkpoints()["bytes"][-1])
    point, evaluation = statistics.median(point_times), statistics.median(eval_times)
    writes = max(point - evaluation, 0.0)
    print(
        f"point_time_s={point:.4f} eval_time_s={evaluation:.4f} (P={args.P} + test {args.test_size} samples) "
        f"write_time_s={writes:.4f} ({ckpt_bytes / 1e6:.1f} MB checkpoint + resume state)"
    )

    # per-sample rates -> overhead of the log:50 schedule for a run of T epochs at any P
    train_per_sample = epoch["normdyn"] / args.P
    eval_per_sample = evaluation / (args.P + args.test_size)
    n_points = len(parse_schedule("log:50", args.T))
    overhead = {}
    for P in P_GRID:
        t_point = (P + MNIST_TEST) * eval_per_sample + writes
        overhead[P] = 100 * n_points * t_point / (args.T * P * train_per_sample)
        print(f"P={P}: overhead_pct={overhead[P]:.2f} (T={args.T} epochs, {n_points} points, test set {MNIST_TEST})")
    print(f"ratio_vs_dataloader={ratio:.3f} overhead_pct={overhead[P_REPORTED]:.2f}")


if __name__ == "__main__":
    main()
