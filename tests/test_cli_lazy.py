"""The CLI starts without the heavy libraries: listing and help import only what they need.

Each case runs in a fresh interpreter (an import, once made, stays in sys.modules).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "matplotlib", "seaborn", "pandas", "scipy")

_PROBE = """
import json, sys
from normdyn.core.cli import cli
try:
    cli.main({args!r}, prog_name="normdyn", standalone_mode=False)
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(args: list[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    code = _PROBE.format(args=args, heavy=heavy)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _commands() -> list[str]:
    from normdyn.core.cli import cli

    return cli.list_commands(None)


def test_every_command_is_listed() -> None:
    assert {"train", "sweep", "analyze", "import", "import-curves", "fit", "report", "demo", "perceptron"} <= set(
        _commands()
    )


@pytest.mark.parametrize("args", [["--help"], ["schedule", "log:5", "--total", "100"], ["store", "--help"]])
def test_help_and_core_commands_import_nothing_heavy(args: list[str]) -> None:
    assert _heavy_after(args) == []
    # nor the store's libraries: they load when a store command runs (half of --help's time before)
    assert _heavy_after(args, ("numpy", "h5py", "normdyn.core.store")) == []


def test_every_command_help_imports_nothing_heavy() -> None:
    code = (
        "import json, sys\nfrom normdyn.core.cli import cli\nout = {}\n"
        "for name in cli.list_commands(None):\n"
        "    cmd = cli.get_command(None, name)\n"
        f"    out[name] = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded == {name: [] for name in loaded}, "a command module imports a heavy library at import time"


def test_store_ls_and_show_import_no_torch(tmp_path: Path) -> None:
    import torch

    from normdyn.core.store import Run

    run = Run.create(tmp_path, "r", config={}, model_spec={}, dataset={}, P=4, seed=0)
    run.append_checkpoint({"w": torch.ones(2, 2)}, step=0, epoch=0.0)
    assert _heavy_after(["store", "ls", str(tmp_path)]) == []
    assert _heavy_after(["store", "show", str(tmp_path / "r")]) == []


def test_a_running_command_still_gets_its_libraries(tmp_path: Path) -> None:
    # the lazy path really imports the command: `measures` needs the measure plugins, hence torch
    assert "torch" in _heavy_after(["measures"])
