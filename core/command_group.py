"""The ``normdyn`` click group: lazily loaded commands, and library errors as one-line CLI errors.

A plugin adds a command either eagerly (``cli.add_command(cmd)``) or lazily
(``cli.add_lazy_command(name, "package.module:attr", short_help)``, click's
documented LazyGroup pattern): a lazy command's module is imported only when
that command runs or its own ``--help`` is asked for, and ``normdyn --help``
lists it from the short help given here, so listing commands imports nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import click

from normdyn.core.errors import NormdynError

__all__ = ["NormdynGroup", "LazyCommand"]


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives (``module:attr``) and the one line ``--help`` shows for it."""

    target: str
    short_help: str


class NormdynGroup(click.Group):
    """A click group whose commands may load lazily and whose NormdynErrors become ClickExceptions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, LazyCommand] = {}
        self.load_error: NormdynError | None = None

    def add_lazy_command(self, name: str, target: str, short_help: str) -> None:
        """Register command ``name``, importing ``target`` ("module:attr") only when it is needed."""
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"lazy command {name!r}: target {target!r} is not 'module:attr'")
        if name in self.commands or name in self.lazy_commands:
            raise NormdynError(f"two commands named {name!r}")
        self.lazy_commands[name] = LazyCommand(target, short_help)

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        lazy = self.lazy_commands.get(cmd_name)
        if lazy is None:
            return None
        module_name, _, attr = lazy.target.partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise NormdynError(
                f"command {cmd_name!r}: {lazy.target} is a {type(command).__name__}, not a click command"
            )
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, with lazy commands described by their registered short help (no import)."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                cmd = self.commands[name]
                if cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(limit=formatter.width - 6 - len(name))))
            else:
                rows.append((name, self.lazy_commands[name].short_help))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        if self.load_error is not None:
            raise click.ClickException(f"plugins failed to load: {self.load_error}")
        try:
            return super().invoke(ctx)
        except NormdynError as exc:
            raise click.ClickException(str(exc)) from None
