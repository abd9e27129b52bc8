"""The top layer: normdyn's own commands, registered like any third-party command.

This package may use every other folder (core, trainer, analyzers, plugins);
nothing below it imports it. Command modules import their heavy dependencies
inside the command, so listing commands costs nothing.
"""

from __future__ import annotations

import click

from normdyn.core.hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add normdyn's own commands."""
    from normdyn.plugins.commands.import_curves import import_curves_cmd

    cli.add_command(import_curves_cmd)
