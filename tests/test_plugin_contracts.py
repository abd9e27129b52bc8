"""Contracts are checked when a registry is built, hook calls are traced, and core names no plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from normdyn.core import plugins
from normdyn.core.errors import PluginError
from normdyn.core.hookspecs import hookimpl

ROOT = Path(__file__).resolve().parents[1]


class _Measure:
    name = "broken_measure"
    version = "1"
    needs = frozenset({"weights"})
    params: dict[str, Any] = {}

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        return 0.0


def _measure(**changes: Any) -> Any:
    obj = _Measure()
    for key, value in changes.items():
        setattr(obj, key, value)
    return obj


class _NoCompute:
    name = "no_compute"
    version = "1"
    needs = frozenset({"weights"})
    params: dict[str, Any] = {}


class _NoLawFitter:
    name = "no_law"

    def fit(self, *args: Any) -> Any:
        return self


class _Dataset:
    name = "no_load"


class _Section:
    name = "bad_order"
    order = "first"

    def render(self, context: Any, out: Any) -> None:
        return None


def _plugin(kind: str, obj: Any) -> Any:
    class Plugin:
        pass

    def hook(self: Any, register: Any) -> None:
        register(obj)

    hook.__name__ = f"register_{kind}"
    setattr(Plugin, f"register_{kind}", hookimpl(hook))
    return Plugin()


@pytest.fixture
def registered() -> Iterator[Any]:
    added: list[Any] = []

    def add(kind: str, obj: Any, name: str) -> None:
        plugin = _plugin(kind, obj)
        plugins.register_plugin(plugin, name=name)
        added.append(plugin)

    try:
        yield add
    finally:
        for plugin in added:
            plugins.unregister_plugin(plugin)


@pytest.mark.parametrize(
    ("kind", "obj", "message"),
    [
        ("measures", _NoCompute(), "plugin 'bad-plugin' registered measure 'no_compute': no compute() method"),
        (
            "measures",
            _measure(needs=frozenset({"weights", "gpu"})),
            "plugin 'bad-plugin' registered measure 'broken_measure': 'needs' holds gpu; allowed: data, model, weights",
        ),
        (
            "measures",
            _measure(version=2),
            "plugin 'bad-plugin' registered measure 'broken_measure': 'version' must be a string",
        ),
        (
            "measures",
            _measure(params=None),
            "plugin 'bad-plugin' registered measure 'broken_measure': 'params' must be a mapping",
        ),
        (
            "fitters",
            _NoLawFitter,
            "plugin 'bad-plugin' registered fitter 'no_law': 'law' is None; use one of law1, law2, eps_star",
        ),
        (
            "fitters",
            _NoLawFitter(),
            "plugin 'bad-plugin' registered fitter 'no_law': a fitter is registered as a class",
        ),
        ("datasets", _Dataset(), "plugin 'bad-plugin' registered dataset 'no_load': no load() method"),
        (
            "report_sections",
            _Section(),
            "plugin 'bad-plugin' registered report section 'bad_order': 'order' must be a number, not str",
        ),
    ],
)
def test_a_broken_plugin_object_is_refused_naming_the_plugin(
    registered: Any, kind: str, obj: Any, message: str
) -> None:
    registered(kind, obj, "bad-plugin")
    with pytest.raises(PluginError) as info:
        plugins.registry(kind)
    assert str(info.value).startswith(message)


def test_a_nameless_object_is_refused() -> None:
    class Nameless:
        @hookimpl
        def register_models(self, register: Any) -> None:
            register(object())

    plugin = Nameless()
    plugins.register_plugin(plugin, name="nameless")
    try:
        with pytest.raises(PluginError, match="plugin 'nameless' registered a model without a string 'name'"):
            plugins.registry("models")
    finally:
        plugins.unregister_plugin(plugin)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMDYN_")}
    env.update(extra)
    return env


def test_trace_plugins_prints_every_registry_hook_call() -> None:
    code = "from normdyn.core import plugins\nfor k in plugins.KINDS: plugins.registry(k)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(NORMDYN_TRACE_PLUGINS="1"), capture_output=True, text=True, check=True
    )
    called = [line.strip().split()[0] for line in proc.stderr.splitlines() if line.strip().endswith("[hook]")]
    builtins = [ep.name for ep in plugins.builtin_entry_points()]
    for kind in plugins.KINDS:
        per_kind = [n for n in builtins if n.startswith(f"{kind}.")]
        # one traced call per plugin of that kind (each plugin's hook is called separately)
        assert called.count(f"register_{kind}") >= len(per_kind) > 0, kind
    untraced = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    ).stderr
    assert "[hook]" not in untraced


def test_a_kind_named_plugin_must_implement_only_that_kind(tmp_path: Path) -> None:
    (tmp_path / "wrong_kind_plugin.py").write_text(
        "from normdyn.core.hookspecs import hookimpl\n@hookimpl\ndef register_commands(cli):\n    pass\n"
    )
    dist = tmp_path / "wrong_kind-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wrong-kind\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[normdyn]\nmeasures.wrong = wrong_kind_plugin\n")
    code = "from normdyn.core import plugins\nplugins.registry('measures')\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert (
        "plugin 'measures.wrong' (wrong_kind_plugin) is named for measures only but implements register_commands"
        in proc.stderr
    )
