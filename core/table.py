"""Plain text for the CLI and reports: aligned tables and "value +- err" strings (no dependency)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_cell", "format_table", "format_value_error"]


def format_cell(value: Any) -> str:
    """Floats with 4 significant digits, NaN as '-', everything else str()."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned text columns separated by two spaces, with a header rule."""
    cells = [[format_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def format_value_error(
    value: float | None, err: float | None, spec: str = ".3f", err_spec: str | None = None, sep: str = " +- "
) -> str:
    """``value +- err`` with ``spec`` (``err_spec`` for the error, default the same).

    A missing or non-finite value is '-'; a missing or non-finite error leaves
    the value alone. ``sep`` is the separator as the output needs it
    (' ± ' in figure labels, ' &plusmn; ' in HTML).
    """
    if value is None or not math.isfinite(value):
        return "-"
    if err is None or not math.isfinite(err):
        return format(value, spec)
    return f"{format(value, spec)}{sep}{format(err, spec if err_spec is None else err_spec)}"
