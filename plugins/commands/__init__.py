"""The top layer: normdyn's own commands, registered like any third-party command.

This package may use every other folder (core, trainer, analyzers, plugins);
nothing below it imports it. Each command is registered lazily: its module is
imported only when the command runs or its own ``--help`` is asked for, and
command modules import their heavy dependencies inside the command function.
"""

from __future__ import annotations

from typing import Any

from normdyn.core.hookspecs import hookimpl

# name -> (module:attr, the one line `normdyn --help` shows)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("normdyn.plugins.commands.train:train_cmd", "Train one run (or continue one with --resume)."),
    "sweep": (
        "normdyn.plugins.commands.train:sweep_cmd",
        "Run a grid of runs into one store (resumable, in parallel).",
    ),
    "fit": (
        "normdyn.plugins.commands.fit:fit_command",
        "Fit law 1, law 2 and their product on a store or a curves CSV.",
    ),
    "report": ("normdyn.plugins.commands.report:report_command", "Write figures, tables and an index.html for stores."),
    "demo": (
        "normdyn.plugins.commands.demo:demo_command",
        "The whole loop on built-in data: train, measure, fit, report (about 4 min).",
    ),
    "perceptron": (
        "normdyn.plugins.commands.perceptron:perceptron_command",
        "The solvable model: train the teacher-student perceptron, fit both laws, compare with theory.",
    ),
    "analyze": (
        "normdyn.plugins.commands.analyze:analyze_cmd",
        "Compute complexity measures over the checkpoints of stores.",
    ),
    "measures": ("normdyn.plugins.commands.analyze:measures_cmd", "List the available complexity measures."),
    "import": (
        "normdyn.plugins.commands.import_run:import_cmd",
        "Import checkpoints made elsewhere as a run of a store.",
    ),
    "import-curves": (
        "normdyn.plugins.commands.import_curves:import_curves_cmd",
        "Convert deep_norm result files into a curves CSV for normdyn fit.",
    ),
}


@hookimpl
def register_commands(cli: Any) -> None:
    """Add normdyn's own commands (lazily when the group supports it, as normdyn's does)."""
    for name, (target, short_help) in COMMANDS.items():
        cli.add_lazy_command(name, target, short_help)
