"""Layer order of imported runs: trusted from a state dict, guessed from a sorted safetensors file.

``safetensors.save_file`` sorts tensors by name, so the paper CNN's
``classifier.*`` come before its ``features.*``: an order-dependent measure
(spectral_complexity_dn) must be refused there, the order-independent ones
must equal the ``.pt`` import's values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from normdyn.analyzers.analyze import analyze_store
from normdyn.core import plugins
from normdyn.core.cli import cli
from normdyn.core.store import Run

ORDER_FREE = ["spectral_complexity", "spectral_product", "group21", "frobenius", "l1"]


def _states() -> list[dict[str, torch.Tensor]]:
    family = plugins.get("models", "cnn")
    spec = family.spec(input_shape=(3, 8, 8), num_classes=10, conv_channels=[4, 8], hidden=[16])
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(family.build(spec).state_dict())
    return out


def _import(tmp_path: Path, name: str, suffix: str) -> Run:
    src = tmp_path / name
    src.mkdir()
    for step, sd in zip((0, 10), _states()):
        if suffix == ".pt":
            torch.save(sd, src / f"ckpt_{step}.pt")
        else:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(src / f"ckpt_{step}.safetensors"))
    result = CliRunner().invoke(cli, ["import", str(src), "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    return Run(tmp_path / "store" / name)


def _reference_dn(sd: dict[str, torch.Tensor]) -> float:
    """deep_norm's compute_model_norm over the layers in forward order (features, then classifier)."""
    mats = [sd[k].double().numpy().reshape(sd[k].shape[0], -1) for k in sd if k.endswith("weight")]
    s = [np.linalg.svd(w, compute_uv=False)[0] for w in mats]
    t = [np.linalg.norm(w, axis=0).sum() for w in mats]
    total = sum(sum(t[i + 1 :]) ** (2 / 3) / s[i] ** (2 / 3) for i in range(len(s)))
    return float(np.prod(s) * total**1.5)


def test_sorted_safetensors_refuse_dn_and_agree_with_pt_on_the_rest(tmp_path: Path) -> None:
    st, pt = _import(tmp_path, "st", ".safetensors"), _import(tmp_path, "pt", ".pt")
    assert st.model_spec == {"layer_order": "file"} and pt.model_spec == {"layer_order": "state_dict"}
    assert st.checkpoint(0).keys()[0] == "classifier.0.bias"  # what save_file did to the order
    assert pt.checkpoint(0).keys()[0] == "features.0.weight"
    args = ["analyze", str(tmp_path / "store"), "-q", "-m", "spectral_complexity_dn"]
    for name in ORDER_FREE:
        args += ["-m", name]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: st step {step} spectral_complexity_dn: {st.path / f'ckpt/step-{step:010d}.safetensors'}: "
        "spectral_complexity_dn depends on the order of the layers, but this run has no layer list and its "
        "tensors are in file order, not forward order (a .safetensors file lists them sorted by name); give "
        "the order: re-import with `normdyn import --model SPEC` (a JSON file or object with 'layers' in "
        "forward order, or a model family 'name', 'input_shape' and 'num_classes'), or from .pt state dicts, "
        "which keep it"
        for step in (0, 10)
    ]
    assert result.output.splitlines()[-1] == "2 run(s): 22 computed, 0 skipped, 2 failed"
    assert np.isnan(st.read_measure("spectral_complexity_dn").values).all()
    for name in ORDER_FREE:
        # the same tensors in another order: only the order of float64 summation differs
        assert st.read_measure(name).values == pytest.approx(pt.read_measure(name).values, rel=1e-12), name
    expected = [_reference_dn(sd) for sd in _states()]
    # sigma_i from power iteration, exact to relative 1e-7 (top_singular's bound): 1e-6 on the product
    assert pt.read_measure("spectral_complexity_dn").values == pytest.approx(expected, rel=1e-6)


def test_pt_order_is_kept_for_safetensors_of_the_same_batch(tmp_path: Path) -> None:
    src = tmp_path / "mixed"
    src.mkdir()
    first, second = _states()
    torch.save(first, src / "ckpt_0.pt")
    save_file({k: v.contiguous() for k, v in second.items()}, str(src / "ckpt_5.safetensors"))
    result = CliRunner().invoke(cli, ["import", str(src), "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    run = Run(tmp_path / "store" / "mixed")
    assert run.model_spec == {"layer_order": "state_dict"}
    assert run.checkpoint(1).keys() == list(first)
    summary = analyze_store(tmp_path / "store", ["spectral_complexity_dn"])
    assert (summary.computed, summary.failed) == (2, 0)
    # as above: power-iteration sigma to relative 1e-7
    assert run.read_measure("spectral_complexity_dn").values[1] == pytest.approx(_reference_dn(second), rel=1e-6)


def test_normdyn_checkpoints_keep_their_recorded_order(tmp_path: Path) -> None:
    made = Run.create(tmp_path / "orig", "r", config={}, model_spec={}, dataset={}, P=0, seed=0)
    sd = _states()[0]
    made.append_checkpoint(sd, step=3, epoch=0.0)
    result = CliRunner().invoke(cli, ["import", str(made.path / "ckpt"), "--store", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    run = Run(tmp_path / "s" / "ckpt")
    assert run.model_spec == {"layer_order": "state_dict"} and run.checkpoint(0).keys() == list(sd)


def test_extending_a_run_stores_new_files_in_its_order(tmp_path: Path) -> None:
    pt = _import(tmp_path, "pt", ".pt")
    later = tmp_path / "later"
    later.mkdir()
    save_file({k: v.contiguous() for k, v in _states()[1].items()}, str(later / "ckpt_20.safetensors"))
    result = CliRunner().invoke(cli, ["import", str(later), "--store", str(tmp_path / "store"), "--run-id", "pt"])
    assert result.output == f"{pt.path}: 1 imported, 0 already present, 0 failed\n"
    assert pt.checkpoint(2).keys() == pt.checkpoint(0).keys() == list(_states()[0])
