"""`normdyn analyze --device`: an explicit cpu computes what the default does, an unusable device
is one clear error before any run is read, and the reader thread leaves torch's threads as it
found them. Where CUDA exists, the same code path on it agrees with the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from normdyn.analyzers.analyze import analyze_store, check_device
from normdyn.core.cli import cli
from normdyn.core.errors import ConfigError
from normdyn.core.layers import LayerSpec
from normdyn.core.store import Run

LAYERS = [
    LayerSpec(
        name="c0",
        kind="conv2d",
        weight="c0.weight",
        in_channels=4,
        in_shape=(24, 24),
        stride=(1, 1),
        padding=(1, 1),
        dilation=(1, 1),
    ).to_dict(),
    LayerSpec(name="fc", kind="linear", weight="fc.weight", in_channels=64).to_dict(),
]
MEASURES = ["spectral_complexity", "conv_operator_norm"]


def _make_run(store: Path) -> Run:
    run = Run.create(store, "r0", config={}, model_spec={"layers": LAYERS}, dataset={}, P=10, seed=0)
    g = torch.Generator().manual_seed(0)
    w = {"c0.weight": torch.randn(8, 4, 3, 3, generator=g), "fc.weight": torch.randn(10, 64, generator=g)}
    for step in range(3):  # a drifting trajectory: the warm starts carry across checkpoints
        w = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in w.items()}
        run.append_checkpoint(w, step=step, epoch=float(step))
    return run


def _values(run: Run) -> dict[str, list[float]]:
    return {m: list(run.read_measure(m).values) for m in run.measures()}


def test_an_explicit_cpu_device_computes_what_the_default_does(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    assert analyze_store(tmp_path, MEASURES).ok
    default = _values(run)
    result = CliRunner().invoke(
        cli, ["analyze", str(tmp_path), "-q", "--force", "--device", "cpu", *sum([["-m", m] for m in MEASURES], [])]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 run(s): 6 computed, 0 skipped, 0 failed"
    # the same code on the same device and data: bitwise equal
    assert _values(run) == default


def test_cuda_where_it_is_unavailable_is_one_error_before_any_run_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _make_run(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "-q", "--device", "cuda"])
    assert result.exit_code == 1
    assert "--device 'cuda': CUDA is not available here" in result.output
    assert "use --device cpu" in result.output
    assert run.measures() == []  # nothing computed, nothing stored


def test_a_device_torch_does_not_know_is_named() -> None:
    with pytest.raises(ConfigError, match=r"--device 'gpu0' is not a torch device"):
        check_device("gpu0")
    assert check_device("cpu") == "cpu"


def test_the_reader_thread_gives_torch_its_threads_back(tmp_path: Path) -> None:
    _make_run(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert analyze_store(tmp_path, ["spectral_complexity"]).ok
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_pieces_keep_every_thread_while_torch_has_one_fewer_beside_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normdyn.analyzers import analyze
    from normdyn.core import plugins, threads

    _make_run(tmp_path)
    monkeypatch.setattr(analyze, "_COMPUTE_BOUND", float("inf"))  # every row after the first overlaps a read
    measure = plugins.registry("measures").get("spectral_complexity")
    compute = measure.compute
    seen: list[tuple[int, int]] = []

    def recording(view, state):  # type: ignore[no-untyped-def]
        seen.append((torch.get_num_threads(), threads.workers()))
        return compute(view, state)

    monkeypatch.setattr(measure, "compute", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert analyze_store(tmp_path, ["spectral_complexity"]).ok
        # torch: both threads for the first row, one beside each later row's read; the pieces of
        # normdyn.core.threads (no barrier a reader can stall) keep both throughout
        assert seen == [(2, 2), (1, 2), (1, 2)]
        assert threads.workers() == 2  # the budget ends with the run
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_the_cpu(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    assert analyze_store(tmp_path, MEASURES, device="cpu").ok
    cpu = _values(run)
    assert analyze_store(tmp_path, MEASURES, device="cuda", force=True).ok
    for name, values in _values(run).items():
        # each side is certified within tol/2 of the exact value: 5e-8 (spectral), 5e-7 (conv)
        assert values == pytest.approx(cpu[name], rel=1e-6), name
