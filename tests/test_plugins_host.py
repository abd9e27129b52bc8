"""The plugin host: registries, duplicates, entry points, NORMDYN_LOAD_PLUGINS, packaging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from normdyn.core import plugins
from normdyn.core.errors import PluginError, UnknownNameError
from normdyn.core.hookspecs import hookimpl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "normdyn-example-plugin"


def _fitter(name: str) -> type:
    """A minimal class that meets the fitter contract (name, law, fit)."""

    def fit(self, *args):
        return self

    return type(f"Fitter_{name}", (), {"name": name, "law": "law1", "fit": fit})


class PluginA:
    @hookimpl
    def register_fitters(self, register):
        register(_fitter("fit_a"))
        register(_fitter("shared"))


class PluginB:
    @hookimpl
    def register_fitters(self, register):
        register(_fitter("shared"))


def test_registry_records_owner_and_lists_names_on_unknown() -> None:
    a = PluginA()
    plugins.register_plugin(a, name="plugin-a")
    try:
        reg = plugins.registry("fitters")
        assert reg.owners["fit_a"] == "plugin-a"
        assert plugins.get("fitters", "fit_a").name == "fit_a"
        with pytest.raises(UnknownNameError) as info:
            plugins.get("fitters", "nope")
        assert "unknown fitter 'nope'; available:" in str(info.value)
        assert "fit_a" in str(info.value) and "shared" in str(info.value)
    finally:
        plugins.unregister_plugin(a)
    assert "fit_a" not in plugins.names("fitters")


def test_duplicate_name_is_an_error_naming_both_plugins() -> None:
    a, b = PluginA(), PluginB()
    plugins.register_plugin(a, name="plugin-a")
    plugins.register_plugin(b, name="plugin-b")
    try:
        with pytest.raises(PluginError) as info:
            plugins.registry("fitters")
        assert str(info.value) == (
            "duplicate fitter name 'shared': registered by plugin 'plugin-a' and by plugin 'plugin-b'"
        )
    finally:
        plugins.unregister_plugin(a)
        plugins.unregister_plugin(b)


def test_misspelt_hook_is_caught() -> None:
    class Typo:
        @hookimpl
        def register_measurez(self, register):
            pass

    with pytest.raises(Exception, match="register_measurez"):
        plugins.register_plugin(Typo(), name="typo")
    plugins.unregister_plugin(name="typo")


def _fake_install(site: Path) -> None:
    """Make the example plugin importable and visible as an entry point,
    exactly as pip would (a dist-info with entry_points.txt on sys.path)."""
    dist = site / "normdyn_example_plugin-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: normdyn-example-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[normdyn]\nexample = normdyn_example_plugin\n")


def _plugins_json(site: Path, load: str | None) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "NORMDYN_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(EXAMPLE), env.get("PYTHONPATH", "")])
    if load is not None:
        env["NORMDYN_LOAD_PLUGINS"] = load
    out = subprocess.run(
        [sys.executable, "-m", "normdyn.core.cli", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_entry_point_plugin_is_found_and_can_be_restricted(tmp_path: Path) -> None:
    _fake_install(tmp_path)
    listed = _plugins_json(tmp_path, None)
    example = [p for p in listed if p["name"] == "example"]
    assert example == [
        {
            "name": "example",
            "measures": ["max_abs_weight"],
            "fitters": [],
            "models": [],
            "datasets": [],
            "report_sections": [],
            "commands": [],
        }
    ]
    assert all(set(p) == {"name", *plugins.KINDS, "commands"} for p in listed)
    assert [p for p in _plugins_json(tmp_path, "example") if p["name"] == "example"] == example
    assert not [p for p in _plugins_json(tmp_path, "") if p["name"] == "example"]
    assert not [p for p in _plugins_json(tmp_path, "other") if p["name"] == "example"]


def test_every_builtin_plugin_is_listed() -> None:
    listed = {p["name"] for p in plugins.plugin_summary()}
    builtins = {ep.name for ep in plugins.builtin_entry_points()}
    assert len(builtins) >= 20 and builtins <= listed


def test_every_hook_is_documented() -> None:
    """Each hookspec has a docstring and appears as name(args) in docs/plugins.md."""
    from normdyn.core import hookspecs

    doc = (ROOT / "docs" / "plugins.md").read_text()
    for name in (
        "register_measures",
        "register_fitters",
        "register_models",
        "register_datasets",
        "register_report_sections",
        "register_commands",
    ):
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and spec.__doc__.strip()
        assert f"{name}(" in doc, f"{name} missing from docs/plugins.md"


def test_wheel_contains_every_module(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("normdyn-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"normdyn/{folder}/{p.relative_to(ROOT / folder).as_posix()}"
        for folder in ("core", "trainer", "analyzers", "plugins")
        for p in (ROOT / folder).rglob("*.py")
    }
    missing = expected - names
    assert not missing, f"modules missing from the wheel (list their packages in pyproject.toml): {sorted(missing)}"
    assert any(n.endswith("entry_points.txt") for n in names)
