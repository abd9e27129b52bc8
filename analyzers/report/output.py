"""Where report sections put their output: figure and table files plus the HTML that shows them.

A section gets one :class:`SectionOutput` per render. ``figure`` saves a
matplotlib figure as PNG and SVG and embeds the PNG in index.html (base64,
so the page is self-contained); ``table`` writes a CSV file and an HTML
table; ``text`` adds a paragraph. Every file is written atomically and
recorded in ``files`` (relative to the report directory), which is what
index.html links to.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from normdyn.core.atomic import write_bytes_atomic
from normdyn.core.table import format_cell

__all__ = ["SectionOutput", "RawHTML", "html_table", "FIGURE_DPI"]

FIGURE_DPI = 110  # PNG resolution: sharp on screen, about 60-120 KB per figure


def _csv_cell(value: Any) -> Any:
    """CSV cells: NaN and None as empty, floats with full precision."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


class RawHTML(str):
    """A table cell that is already HTML (a link): :func:`html_table` does not escape it."""


def _html_cell(value: Any) -> str:
    if isinstance(value, RawHTML):
        return str(value)
    return html.escape(format_cell("-" if value is None else value))


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; floats with 4 significant digits, NaN and None as '-', :class:`RawHTML` as is."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class SectionOutput:
    """The sink of one section: files go to ``directory``, links are ``prefix/NAME`` from index.html."""

    def __init__(self, directory: Path, prefix: str):
        self.directory = Path(directory)
        self.prefix = prefix
        self.blocks: list[str] = []
        self.files: list[str] = []

    def file(self, name: str, data: bytes) -> str:
        """Write ``data`` to ``NAME`` in the section's directory; return its link from index.html."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.directory / name, data)
        rel = f"{self.prefix}/{name}" if self.prefix else name
        self.files.append(rel)
        return rel

    def figure(self, fig: Any, stem: str, caption: str = "") -> None:
        """Save ``fig`` (a matplotlib Figure) as ``fig-STEM.png`` and ``.svg`` and show the PNG."""
        png, svg = io.BytesIO(), io.BytesIO()
        # Fixed metadata and hash salt make the files byte-identical between runs of one report.
        fig.savefig(png, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
        fig.savefig(svg, format="svg", metadata={"Date": None})
        png_rel = self.file(f"fig-{stem}.png", png.getvalue())
        svg_rel = self.file(f"fig-{stem}.svg", svg.getvalue())
        data = base64.b64encode(png.getvalue()).decode("ascii")
        links = f'<a href="{html.escape(png_rel)}">PNG</a> · <a href="{html.escape(svg_rel)}">SVG</a>'
        self.blocks.append(
            f'<figure><img alt="{html.escape(stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)} ({links})</figcaption></figure>"
        )

    def table(
        self,
        stem: str,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        caption: str = "",
        *,
        csv_file: bool = True,
        show: bool = True,
    ) -> None:
        """Write ``STEM.csv`` (unless ``csv_file`` is False) and show the table (unless ``show`` is False)."""
        link = ""
        if csv_file:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(headers)
            writer.writerows([[_csv_cell(v) for v in row] for row in rows])
            rel = self.file(f"{stem}.csv", buf.getvalue().encode("utf-8"))
            link = f' (<a href="{html.escape(rel)}">CSV</a>)'
        if show:
            self.blocks.append(f"<p>{html.escape(caption)}{link}</p>{html_table(headers, rows)}")
        else:
            self.blocks.append(f"<p>{html.escape(caption)}{link}</p>")

    def text(self, paragraph: str) -> None:
        """A paragraph of plain text (escaped)."""
        self.blocks.append(f"<p>{html.escape(paragraph)}</p>")
