"""Hook specifications of the ``normdyn`` plugin project (pluggy).

Every hook uses the register-callback style: the host passes a ``register``
function and the plugin calls it once per object it provides. Each object has
a ``name`` attribute; two objects of one kind with the same name are an error
naming both plugins. All hooks are called once per plugin when the host first
builds its registries (historic calls are not used).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import pluggy

hookspec = pluggy.HookspecMarker("normdyn")
hookimpl = pluggy.HookimplMarker("normdyn")

Register = Callable[[Any], None]


@hookspec
def register_measures(register: Register) -> None:
    """Call ``register(measure)`` for each complexity measure the plugin provides.

    A measure has ``name``, ``version``, ``needs`` (a subset of
    {"weights", "model", "data"}), ``params`` (defaults) and
    ``compute(view, state) -> float | dict[str, float]``; its docstring
    states the exact formula. Returns nothing.
    """


@hookspec
def register_fitters(register: Register) -> None:
    """Call ``register(fitter_class)`` for each scaling-law fitter.

    A fitter class has a ``name`` class attribute and follows the
    scikit-learn convention: ``__init__`` stores hyperparameters, ``fit``
    returns self, fitted attributes end in ``_``. Returns nothing.
    """


@hookspec
def register_models(register: Register) -> None:
    """Call ``register(model)`` for each model family (``name``, ``build(spec)``, ...).

    Returns nothing.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Call ``register(dataset)`` for each dataset (``name``, ``load(...)``, ...).

    Returns nothing.
    """


@hookspec
def register_report_sections(register: Register) -> None:
    """Call ``register(section)`` for each report section (``name``, ``render(context, out)``,
    optional ``title`` and ``order``); see ``normdyn.core.contracts.ReportSection``.

    Returns nothing.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the ``normdyn`` group: ``cli.add_command(cmd)`` (eager) or
    ``cli.add_lazy_command(name, "module:attr", short_help)`` (the module is imported only when
    the command runs; see :class:`normdyn.core.command_group.NormdynGroup`). Returns nothing.
    """
