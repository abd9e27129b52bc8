"""The plugin host: one pluggy manager; plugins found through entry points, loaded lazily.

Every plugin, normdyn's own included, is an entry point of the ``normdyn``
group; core names none of them (normdyn's own are declared in its
pyproject.toml, the way xarray declares its built-in backends). An entry
point whose name starts with a registry kind and a dot (``measures.spectral``,
``models.cnn``, ``fitters.law1``, ``datasets.teacher``,
``report_sections.fit_tables``) promises to implement that kind's hook only;
it is imported when that registry is first needed, so ``normdyn --help`` and
the store commands never import what the measures need. Any other entry point
is loaded when the CLI starts and may implement every hook.

``NORMDYN_LOAD_PLUGINS`` (comma-separated entry-point names; empty = none)
restricts which third-party plugins load; normdyn's own always load. Under
pytest (``sys._called_from_test``) third-party plugins load only when that
variable names them. ``NORMDYN_TRACE_PLUGINS=1`` prints every hook call to
stderr.

Registries (measures, fitters, models, datasets, report sections) are built by
calling each plugin's hook through pluggy (one subset caller per plugin, so
tracing sees every call), so every registered object is known with the plugin
that provided it; duplicate names and objects that break their kind's contract
(:mod:`normdyn.core.contracts`) are errors naming the plugin.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from normdyn.core import hookspecs
from normdyn.core.contracts import check_contract
from normdyn.core.errors import PluginError, UnknownNameError

__all__ = [
    "KINDS",
    "pm",
    "load_plugins",
    "registry",
    "get",
    "names",
    "plugin_summary",
    "register_plugin",
    "unregister_plugin",
    "register_commands",
    "builtin_entry_points",
]

KINDS = ("measures", "fitters", "models", "datasets", "report_sections")
_OWN_DISTRIBUTION = "normdyn"

pm = pluggy.PluginManager("normdyn")
pm.add_hookspecs(hookspecs)
_started = False
_candidates: list[EntryPoint] = []  # the entry points this process loads, read once at start
_loaded_kinds: set[str] = set()
_registries: dict[str, Registry] = {}


def _is_own(ep: EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    return dist is not None and dist.metadata["Name"].lower().replace("_", "-") == _OWN_DISTRIBUTION


def _kind_of(ep: EntryPoint) -> str | None:
    prefix = ep.name.split(".", 1)[0]
    return prefix if "." in ep.name and prefix in KINDS else None


def _wanted_entry_points() -> list[EntryPoint]:
    allowed = os.environ.get("NORMDYN_LOAD_PLUGINS")
    wanted = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
    third_party_ok = not getattr(sys, "_called_from_test", False) or wanted is not None
    out = []
    for ep in entry_points(group="normdyn"):
        if _is_own(ep):
            out.append(ep)
        elif third_party_ok and (wanted is None or ep.name in wanted):
            out.append(ep)
    return out


def builtin_entry_points() -> list[EntryPoint]:
    """normdyn's own plugins, as declared in its package metadata."""
    return [ep for ep in entry_points(group="normdyn") if _is_own(ep)]


def _register_entry_point(ep: EntryPoint) -> None:
    if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
        return
    try:
        plugin = ep.load()
    except Exception as exc:  # a broken plugin must name itself
        raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
    pm.register(plugin, name=ep.name)
    kind = _kind_of(ep)
    if kind is not None:
        others = {caller.name for caller in pm.get_hookcallers(plugin) or []} - {f"register_{kind}"}
        if others:
            pm.unregister(name=ep.name)
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}) is named for {kind} only but implements "
                f"{', '.join(sorted(others))}; rename its entry point (no '{kind}.' prefix) to load it at start"
            )


def load_plugins(kind: str | None = None) -> pluggy.PluginManager:
    """Load the plugins loaded at start (once) and, with ``kind``, those named for that registry kind."""
    global _started, _candidates
    if not _started:
        _started = True
        _candidates = _wanted_entry_points()
        if os.environ.get("NORMDYN_TRACE_PLUGINS"):
            pm.trace.root.setwriter(sys.stderr.write)
            pm.enable_tracing()
        for ep in _candidates:
            if _kind_of(ep) is None:
                _register_entry_point(ep)
        pm.check_pending()
    kinds = KINDS if kind == "all" else () if kind is None else (kind,)
    for k in kinds:
        if k in _loaded_kinds:
            continue
        _loaded_kinds.add(k)
        for ep in _candidates:
            if _kind_of(ep) == k:
                _register_entry_point(ep)
        pm.check_pending()
    return pm


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register ``plugin`` (a module or object with hook implementations)."""
    load_plugins("all")
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    finally:
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
            what = self.kind[:-1].replace("_", " ")
            raise UnknownNameError(f"unknown {what} {name!r}; available: {available}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self.items)


def _per_plugin(hook_name: str) -> list[tuple[str, Callable[..., Any]]]:
    """(plugin name, a caller of ``hook_name`` for that plugin alone), in registration order.

    Subset callers go through the manager's hook execution, so tracing and
    hook-call monitoring see every call.
    """
    caller = getattr(pm.hook, hook_name)
    impls = caller.get_hookimpls()
    out: list[tuple[str, Callable[..., Any]]] = []
    for impl in impls:
        others = [i.plugin for i in impls if i is not impl]
        out.append((impl.plugin_name, pm.subset_hook_caller(hook_name, remove_plugins=others)))
    return out


def _build(kind: str) -> Registry:
    reg = Registry(kind)
    what = kind[:-1].replace("_", " ")
    for owner, call in _per_plugin(f"register_{kind}"):

        def register(obj: Any, _owner: str = owner) -> None:
            name = check_contract(kind, obj, _owner)
            if name in reg.items:
                raise PluginError(
                    f"duplicate {what} name {name!r}: registered by plugin "
                    f"{reg.owners[name]!r} and by plugin {_owner!r}"
                )
            reg.items[name] = obj
            reg.owners[name] = _owner

        call(register=register)
    return reg


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of :data:`KINDS`), built on first use."""
    if kind not in KINDS:
        raise PluginError(f"unknown registry kind {kind!r}; use one of {', '.join(KINDS)}")
    load_plugins(kind)
    if kind not in _registries:
        _registries[kind] = _build(kind)
    return _registries[kind]


def get(kind: str, name: str) -> Any:
    """Shortcut: ``registry(kind).get(name)``."""
    return registry(kind).get(name)


def names(kind: str) -> list[str]:
    """Shortcut: ``registry(kind).names()``."""
    return registry(kind).names()


def register_commands(cli: Any) -> dict[str, list[str]]:
    """Let every plugin loaded at start add its commands to ``cli``; return the command names per plugin."""
    load_plugins()
    added: dict[str, list[str]] = {}
    for owner, call in _per_plugin("register_commands"):
        before = set(cli.list_commands(None))
        call(cli=cli)
        added[owner] = sorted(set(cli.list_commands(None)) - before)
    return added


def plugin_summary(commands: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """One dict per plugin: ``name`` and, per hook kind, the names it registered."""
    load_plugins("all")
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
        if owner in out:
            out[owner]["commands"] = cmds
    return [out[k] for k in sorted(out)]
