"""Batch reports: figures, tables, fits and provenance for every (store, measure), in one HTML page.

:func:`build_report` writes, under ``out``::

    index.html                      self-contained: figures embedded, tables, fits, provenance
    STORE/MEASURE/results.json      the fit, exactly what ``normdyn fit --json`` writes
    STORE/MEASURE/runs.csv          the runs used (provenance)
    STORE/MEASURE/fig-*.png|svg     one pair per figure of the report sections
    STORE/MEASURE/*.csv             the tables of the report sections

The figures and tables come from report sections, plugins registered through
``register_report_sections`` (docs/report.md). A (store, measure) that
cannot be read or fitted is reported in index.html and in the returned
summary, and the others are still written; a section that raises is reported
the same way without stopping the other sections.
"""

from __future__ import annotations

import html
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from normdyn.analyzers.report.context import ReportContext, load_context
from normdyn.analyzers.report.output import RawHTML, SectionOutput, html_table
from normdyn.core import __version__, plugins
from normdyn.core.atomic import write_bytes_atomic
from normdyn.core.errors import ConfigError, NormdynError
from normdyn.core.store import scan_runs

__all__ = ["TargetReport", "ReportSummary", "build_report", "stored_measures", "report_sections", "figure_style"]

INDEX = "index.html"
RESULTS = "results.json"


@dataclass
class TargetReport:
    """The outcome of one (store, measure): its directory, written files, and what failed."""

    store: str
    measure: str
    directory: str
    files: list[str] = field(default_factory=list)
    error: str | None = None
    fit_error: str | None = None
    section_errors: dict[str, str] = field(default_factory=dict)
    fit_json: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the data was read, fitted and every section rendered."""
        return self.error is None and self.fit_error is None and not self.section_errors


@dataclass
class ReportSummary:
    """What :func:`build_report` wrote: ``index`` (index.html) and one :class:`TargetReport` per (store, measure)."""

    out: Path
    index: Path
    targets: list[TargetReport]

    @property
    def failed(self) -> list[TargetReport]:
        """The targets where something failed."""
        return [t for t in self.targets if not t.ok]


def stored_measures(store: str | os.PathLike[str]) -> list[str]:
    """Every measure stored in at least one readable run of ``store``, sorted."""
    runs, _ = scan_runs(store)
    return sorted({m for run in runs for m in run.measures()})


def report_sections() -> list[Any]:
    """The registered report sections in page order (``order`` attribute, default 100, then name)."""
    reg = plugins.registry("report_sections")
    return sorted((reg.get(n) for n in reg.names()), key=lambda s: (getattr(s, "order", 100), s.name))


def figure_style() -> dict[Any, Any]:  # Any keys: matplotlib types rc keys as a Literal of every name
    """Matplotlib rc parameters of every report figure: seaborn's whitegrid look, applied locally."""
    import seaborn as sns

    return {
        **sns.axes_style("whitegrid"),
        **sns.plotting_context("notebook", font_scale=0.9),
        "svg.hashsalt": "normdyn",
        "figure.dpi": 100,
    }


def _labels(stores: Sequence[str]) -> list[str]:
    """A directory name per store: its base name, made unique with -2, -3, ..."""
    out: list[str] = []
    for s in stores:
        base = re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(s).resolve().name) or "store"
        label, k = base, 2
        while label in out:
            label, k = f"{base}-{k}", k + 1
        out.append(label)
    return out


def _runs_table(ctx: ReportContext) -> tuple[list[str], list[list[Any]]]:
    headers = ["run", "P", "seed", "status", "checkpoints", "measure_plugin", "measure_version", "measure_params"]
    rows = [
        [
            r.run_id,
            r.P,
            r.seed,
            r.status,
            len(r.step),
            r.measure_plugin,
            r.measure_version,
            json.dumps(r.measure_params, sort_keys=True),
        ]
        for r in ctx.runs
    ]
    return headers, rows


def _render_target(
    store: str,
    measure: str,
    label: str,
    out: Path,
    where: Mapping[str, str] | None,
    fit_kwargs: Mapping[str, Any] | None,
    sections: list[Any],
) -> tuple[TargetReport, str]:
    """Write one (store, measure) and return its outcome and its HTML section."""
    import matplotlib

    rel = f"{label}/{measure}"
    target = TargetReport(store, measure, rel)
    anchor = re.sub(r"[^A-Za-z0-9_-]", "-", rel)
    head = f'<section id="{anchor}"><h2>{html.escape(store)} &middot; {html.escape(measure)}</h2>'
    try:
        ctx = load_context(store, measure, where=where, fit_kwargs=fit_kwargs)
    except NormdynError as exc:
        target.error = str(exc)
        return target, f'{head}<p class="error">failed: {html.escape(str(exc))}</p></section>'
    directory = out / label / measure
    parts = [head]
    if ctx.fit_json is not None:
        target.fit_json = ctx.fit_json
        sink = SectionOutput(directory, rel)
        sink.file(RESULTS, (json.dumps(ctx.fit_json, indent=2) + "\n").encode("utf-8"))
        target.files += sink.files
        parts.append(
            f'<p>Fit: <a href="{html.escape(rel)}/{RESULTS}">{RESULTS}</a> '
            f"(the output of <code>normdyn fit --json</code>)</p>"
        )
    else:
        target.fit_error = ctx.fit_error
        parts.append(f'<p class="error">fit failed: {html.escape(str(ctx.fit_error))}</p>')
        # with a fit, the notes are part of results.json and shown by the fit_summary section
        parts += [f'<p class="note">note: {html.escape(note)}</p>' for note in ctx.notes]
    with matplotlib.rc_context(figure_style()):
        for section in sections:
            sink = SectionOutput(directory, rel)
            try:
                section.render(ctx, sink)
            except Exception as exc:  # a third-party section may raise anything: report it, keep going
                target.section_errors[section.name] = f"{type(exc).__name__}: {exc}"
                parts.append(
                    f"<h3>{html.escape(getattr(section, 'title', section.name))}</h3>"
                    f'<p class="error">{html.escape(f"section {section.name!r} failed: {exc}")}</p>'
                )
                continue
            target.files += sink.files
            if sink.blocks:
                parts.append(f"<h3>{html.escape(getattr(section, 'title', section.name))}</h3>" + "".join(sink.blocks))
    sink = SectionOutput(directory, rel)
    headers, rows = _runs_table(ctx)
    sink.table("runs", headers, rows, f"{len(rows)} run(s) of experiment {json.dumps(ctx.experiment, sort_keys=True)}")
    target.files += sink.files
    parts.append(
        "<details><summary>Provenance: runs and measure versions</summary>"
        + "".join(sink.blocks)
        + "</details></section>"
    )
    return target, "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3}
figure{display:inline-block;margin:0.5em;vertical-align:top;max-width:520px}
figure img{max-width:100%}
figcaption{font-size:0.85em;color:#444}
.error{color:#b00020}.note{color:#666;font-size:0.9em}
code{background:#f3f3f3;padding:0 3px}
"""


def _page(summary_rows: list[list[Any]], parts: list[str], command_line: str, stores: Sequence[str]) -> str:
    import matplotlib
    import numpy
    import torch

    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prov = html_table(
        ["", ""],
        [
            ["command", command_line],
            ["normdyn", __version__],
            ["created (UTC)", when],
            ["python", platform.python_version()],
            ["numpy", numpy.__version__],
            ["torch", torch.__version__],
            ["matplotlib", matplotlib.__version__],
            ["stores", ", ".join(str(Path(s).resolve()) for s in stores)],
        ],
    )
    contents = html_table(["store", "measure", "status", "gamma1", "gamma2", "gamma_pred", "gamma_meas"], summary_rows)
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>normdyn report</title><style>{_CSS}</style>'
        f"</head><body><h1>normdyn report</h1>{prov}<h2>Contents</h2>{contents}{''.join(parts)}</body></html>\n"
    )


def _summary_row(t: TargetReport) -> list[Any]:
    link = f'<a href="#{re.sub(r"[^A-Za-z0-9_-]", "-", t.directory)}">{html.escape(t.measure)}</a>'
    status = "ok" if t.ok else ("failed" if t.error else "partial")
    j = t.fit_json or {}
    return [t.store, RawHTML(link), status, j.get("gamma1"), j.get("gamma2"), j.get("gamma_pred"), j.get("gamma_meas")]


def build_report(
    stores: Sequence[str],
    out: str | os.PathLike[str],
    *,
    measures: Sequence[str] | None = None,
    where: Mapping[str, str] | None = None,
    fit_kwargs: Mapping[str, Any] | None = None,
    store_fit_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    command_line: str = "",
) -> ReportSummary:
    """Write the report of every store x measure (every stored measure when ``measures`` is empty) under ``out``.

    ``where`` and ``fit_kwargs`` select and fit runs as in ``normdyn fit``;
    ``store_fit_kwargs[store]`` replaces ``fit_kwargs`` for one store (the
    demo fits the perceptron with its own window). ``command_line`` is
    recorded as provenance. Failures are collected in the summary, never
    raised, except when there is nothing to report at all.
    """
    if not stores:
        raise ConfigError("no store given: normdyn report STORE... --out DIR")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    sections = report_sections()
    targets: list[TargetReport] = []
    parts: list[str] = []
    for store, label in zip(stores, _labels(stores)):
        try:
            names = list(measures) if measures else stored_measures(store)
        except NormdynError as exc:
            targets.append(TargetReport(store, "-", label, error=str(exc)))
            parts.append(
                f'<section><h2>{html.escape(store)}</h2><p class="error">failed: {html.escape(str(exc))}</p></section>'
            )
            continue
        if not names:
            msg = f"{store}: no run has a stored measure; run `normdyn analyze {store}` first"
            targets.append(TargetReport(store, "-", label, error=msg))
            parts.append(
                f'<section><h2>{html.escape(store)}</h2><p class="error">failed: {html.escape(msg)}</p></section>'
            )
            continue
        for measure in names:
            kwargs = (store_fit_kwargs or {}).get(store, fit_kwargs)
            target, part = _render_target(store, measure, label, out, where, kwargs, sections)
            targets.append(target)
            parts.append(part)
    rows = [_summary_row(t) for t in targets]
    page = _page(rows, parts, command_line, stores)
    index = out / INDEX
    write_bytes_atomic(index, page.encode("utf-8"))
    return ReportSummary(out, index, targets)
