"""The plugin host: one pluggy manager, loaded once and lazily.

Built-in plugins are the modules named in :data:`DEFAULT_PLUGINS`; third-party
plugins come from the ``normdyn`` entry-point group. ``NORMDYN_LOAD_PLUGINS``
(comma-separated entry-point names; empty = none) restricts which third-party
plugins load; built-ins always load. Set ``NORMDYN_TRACE_PLUGINS=1`` to print
every hook call to stderr.

Registries (measures, fitters, models, datasets, report sections) are built
by calling each plugin's hook separately, so every registered object is known
with the plugin that provided it, and duplicate names are reported with both.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import click
import pluggy

from normdyn.core import hookspecs
from normdyn.core.errors import PluginError, UnknownNameError

__all__ = [
    "DEFAULT_PLUGINS",
    "KINDS",
    "pm",
    "get_plugin_manager",
    "load_plugins",
    "registry",
    "get",
    "names",
    "plugin_summary",
    "register_plugin",
    "unregister_plugin",
]

DEFAULT_PLUGINS: tuple[str, ...] = (
    # models
    "normdyn.plugins.models.perceptron",
    "normdyn.plugins.models.cnn",
    "normdyn.plugins.models.resnet",
    "normdyn.plugins.models.vit",
    "normdyn.plugins.models.mlp",
    "normdyn.plugins.models.cnn1d",
    # datasets
    "normdyn.plugins.datasets.teacher",
    "normdyn.plugins.datasets.torchvision_images",
    "normdyn.plugins.datasets.mnist1d_generated",
    # measures
    "normdyn.plugins.measures.perceptron",
    "normdyn.plugins.measures.spectral",
    "normdyn.plugins.measures.norms",
    "normdyn.plugins.measures.path_norm",
    "normdyn.plugins.measures.conv_operator",
    "normdyn.plugins.measures.data_measures",
    # fitters
    "normdyn.plugins.fitters.powerlaw",
    "normdyn.plugins.fitters.law1_collapse",
    "normdyn.plugins.fitters.per_p_laws",
    "normdyn.plugins.fitters.combined",
    # report sections
    "normdyn.plugins.reports.fit_tables",
    "normdyn.plugins.reports.fit_figures",
    "normdyn.plugins.reports.run_figures",
    # commands
    "normdyn.analyzers.perceptron_commands",
    "normdyn.analyzers.report_commands",
    "normdyn.analyzers.demo_commands",
    "normdyn.trainer.commands",
    "normdyn.analyzers.fit_commands",
    "normdyn.analyzers.analyze_commands",
)

KINDS = ("measures", "fitters", "models", "datasets", "report_sections")

pm = pluggy.PluginManager("normdyn")
pm.add_hookspecs(hookspecs)
_loaded = False
_registries: dict[str, Registry] = {}


def load_plugins() -> pluggy.PluginManager:
    """Load built-in and entry-point plugins (once) and return the manager."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    if os.environ.get("NORMDYN_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    allowed = os.environ.get("NORMDYN_LOAD_PLUGINS")
    wanted = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
    if not getattr(sys, "_called_from_test", False) or wanted is not None:
        for ep in entry_points(group="normdyn"):
            if wanted is not None and ep.name not in wanted:
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken third-party plugin must name itself
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
    for module_name in DEFAULT_PLUGINS:
        if pm.get_plugin(module_name) is None:
            pm.register(importlib.import_module(module_name), name=module_name)
    pm.check_pending()
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager with all plugins loaded."""
    return load_plugins()


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register ``plugin`` (a module or object with hook implementations)."""
    load_plugins()
    pm.register(plugin, name=name)
    pm.check_pending()
    _registries.clear()


def unregister_plugin(plugin: Any = None, name: str | None = None) -> None:
    """Remove a plugin registered earlier (by object or name)."""
    pm.unregister(plugin, name=name)
    _registries.clear()


@dataclass
class Registry:
    """The objects of one kind, by name, with the plugin that registered each."""

    kind: str
    items: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        """The object called ``name``; an unknown name lists the available ones."""
        try:
            return self.items[name]
        except KeyError:
            available = ", ".join(sorted(self.items)) or "none"
            raise UnknownNameError(
                f"unknown {self.kind[:-1].replace('_', ' ')} {name!r}; available: {available}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self.items)


def _build(kind: str) -> Registry:
    reg = Registry(kind)
    caller = getattr(pm.hook, f"register_{kind}")
    for impl in caller.get_hookimpls():  # registration order
        owner = impl.plugin_name

        def register(obj: Any, _owner: str = owner) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {_owner!r} registered a {kind[:-1]} without a string 'name': {obj!r}")
            if name in reg.items:
                raise PluginError(
                    f"duplicate {kind[:-1].replace('_', ' ')} name {name!r}: registered by plugin "
                    f"{reg.owners[name]!r} and by plugin {_owner!r}"
                )
            reg.items[name] = obj
            reg.owners[name] = _owner

        impl.function(register=register)
    return reg


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of :data:`KINDS`), built on first use."""
    if kind not in KINDS:
        raise PluginError(f"unknown registry kind {kind!r}; use one of {', '.join(KINDS)}")
    load_plugins()
    if kind not in _registries:
        _registries[kind] = _build(kind)
    return _registries[kind]


def get(kind: str, name: str) -> Any:
    """Shortcut: ``registry(kind).get(name)``."""
    return registry(kind).get(name)


def names(kind: str) -> list[str]:
    """Shortcut: ``registry(kind).names()``."""
    return registry(kind).names()


def register_commands(cli: click.Group) -> dict[str, list[str]]:
    """Let every plugin add its commands to ``cli``; return commands per plugin."""
    load_plugins()
    added: dict[str, list[str]] = {}
    for impl in pm.hook.register_commands.get_hookimpls():
        before = set(cli.commands)
        impl.function(cli=cli)
        added[impl.plugin_name] = sorted(set(cli.commands) - before)
    return added


def plugin_summary(commands: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """One dict per plugin: ``name`` and, per hook kind, the names it registered."""
    load_plugins()
    out: dict[str, dict[str, Any]] = {}
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        out[name] = {"name": name, **{k: [] for k in KINDS}, "commands": []}
    for kind in KINDS:
        reg = registry(kind)
        for obj_name, owner in reg.owners.items():
            out[owner][kind].append(obj_name)
    for owner, cmds in (commands or {}).items():
        out[owner]["commands"] = cmds
    return [out[k] for k in sorted(out)]
