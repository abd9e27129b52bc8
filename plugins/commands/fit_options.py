"""The run-selection and law-fit options that ``normdyn fit`` and ``normdyn report`` share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from normdyn.analyzers.fit.laws import FitOptions

__all__ = ["law_options", "parse_where", "options_from"]


def parse_where(items: tuple[str, ...]) -> dict[str, str]:
    """``--where KEY=VALUE`` options as a dict (a malformed item is a usage error)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: use KEY=VALUE", param_hint="--where")
        out[key] = value
    return out


_DEFAULTS = FitOptions()
_LAW_OPTIONS = (
    click.option(
        "--where", multiple=True, metavar="KEY=VALUE", help="Keep runs whose config KEY equals VALUE (repeatable)."
    ),
    click.option(
        "--grid",
        type=(float, float, int),
        default=None,
        metavar="A B N",
        help="Common grid: N points from 10^A to 10^B (default: the data's range, 50 points).",
    ),
    click.option(
        "--window",
        type=(float, float),
        default=None,
        metavar="LO HI",
        help="Law-1 window in lambda/lambda* (default: chosen automatically).",
    ),
    click.option("--law1-min-P", "law1_min_P", type=int, default=None, help="Law 1 uses P >= this."),
    click.option("--law2-min-P", "law2_min_P", type=int, default=None, help="Law 2 uses P >= this."),
    click.option(
        "--method",
        default=_DEFAULTS.method,
        show_default=True,
        help="Law-1 fitter: paper (mean of per-P slopes, the reference), pooled (one OLS) "
        "or any registered law-1 fitter (normdyn plugins lists them).",
    ),
    click.option(
        "--law2-method",
        default=_DEFAULTS.law2_method,
        show_default=True,
        help="Law-2 fitter of lambda*(P): any registered law2 fitter.",
    ),
    click.option(
        "--eps-star-method",
        default=_DEFAULTS.eps_star_method,
        show_default=True,
        help="Fitter of the direct eps*(P) fit: any registered eps_star fitter.",
    ),
)


def law_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the run-selection and law-fit options shared by ``fit`` and ``report``
    (--where, --grid, --window, --law1-min-P, --law2-min-P, --method, --law2-method, --eps-star-method)."""
    for option in reversed(_LAW_OPTIONS):
        command = option(command)
    return command


def options_from(params: dict[str, Any], **extra: Any) -> FitOptions:
    """The FitOptions that the law options in ``params`` (a command's parsed options) ask for."""
    keys = ("window", "law1_min_P", "law2_min_P", "method", "law2_method", "eps_star_method")
    return FitOptions(**{k: params[k] for k in keys}, **extra)
