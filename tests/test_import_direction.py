"""The layers' import arrows (docs/architecture.md), read from the source with ast.

    commands + experiments (plugins/commands/: the one top layer) -> everything
    trainer/ -> core/        analyzers/ -> core/        built-in plugins -> core/
    core/ -> nothing of trainer/, analyzers/ or plugins/, not even as strings

Every import counts, at module level or inside a function (a lazy import is
still an arrow at run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "trainer", "analyzers", "plugins")
TOP_LAYER = "normdyn.plugins.commands"

# module prefix -> the normdyn prefixes it may import (its own folder is always allowed)
ALLOWED: dict[str, tuple[str, ...]] = {
    "normdyn.core": (),
    "normdyn.trainer": ("normdyn.core",),
    "normdyn.analyzers": ("normdyn.core",),
    "normdyn.plugins": ("normdyn.core",),
    TOP_LAYER: ("normdyn.core", "normdyn.trainer", "normdyn.analyzers", "normdyn.plugins"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["normdyn", *parts])


def _modules() -> list[tuple[str, Path]]:
    return sorted((_module_name(p), p) for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)] + [
                (node.lineno, f"{node.module}.{alias.name}") for alias in node.names if node.module == "normdyn"
            ]
    return [(line, name) for line, name in out if name.startswith("normdyn.")]


def _layer(module: str) -> str:
    for prefix in sorted(ALLOWED, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{module}: in no layer")


def _subpackage(module: str) -> str:
    """normdyn.plugins.measures.x -> normdyn.plugins.measures (built-in plugins may import their own kind)."""
    return ".".join(module.split(".")[:3])


def test_every_import_follows_the_arrows() -> None:
    wrong = []
    for module, path in _modules():
        layer = _layer(module)
        for line, target in _imports(path):
            own = target.startswith(layer + ".") or target == layer
            if layer == "normdyn.plugins":  # a built-in plugin stands on core and on its own subpackage only
                own = target.startswith(_subpackage(module) + ".")
            if own or any(target == a or target.startswith(a + ".") for a in ALLOWED[layer]):
                continue
            wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} ({layer}) imports {target}")
    assert not wrong, "imports against the layer arrows (docs/architecture.md):\n" + "\n".join(wrong)


@pytest.mark.parametrize("folder", ["trainer", "analyzers", "plugins"])
def test_core_does_not_name_other_folders_even_as_strings(folder: str) -> None:
    named = []
    for path in (ROOT / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and f"normdyn.{folder}" in node.value:
                named.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not named, f"core/ names normdyn.{folder}:\n" + "\n".join(named)


def test_the_rule_catches_a_wrong_arrow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from normdyn.trainer.loop import train\n")
    assert _imports(bad) == [(2, "normdyn.trainer.loop")]
    assert _layer("normdyn.analyzers.fit.laws") == "normdyn.analyzers"
    assert "normdyn.trainer" not in ALLOWED["normdyn.analyzers"]
