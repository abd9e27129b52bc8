"""Report section: the fitted exponents and the per-P summary table (per_P.csv).

The numbers are those of ``context.fit_json`` (= results.json = ``normdyn fit
--json``), so the page and the files never disagree.
"""

from __future__ import annotations

from typing import Any

from normdyn.core.hookspecs import Register, hookimpl

__all__ = ["FitSummary", "PER_P_COLUMNS"]

PER_P_COLUMNS = (
    "P",
    "n_seeds",
    "lambda_star",
    "lambda_star_grid",
    "eps_star",
    "eps_star_pred",
    "gamma1_P",
    "gamma1_P_err",
    "in_law1",
    "in_law2",
)


class FitSummary:
    """The exponents (gamma1, gamma2, gamma_pred, gamma_meas with errors), the window, and per-P values."""

    name = "fit_summary"
    title = "Fitted exponents"
    order = 10

    def render(self, context: Any, out: Any) -> None:
        """Show the exponent table and write per_P.csv."""
        j = context.fit_json
        if j is None:
            return
        lo, hi = j["window"]
        rows = [
            [
                "law 1: eps/eps* = k1 (lambda/lambda*)^-gamma1",
                "gamma1",
                j["gamma1"],
                j["gamma1_err"],
                f"k1 = {_fmt(j['k1'])}; window {_fmt(lo)}..{_fmt(hi)} "
                f"({'automatic' if j['window_auto'] else 'given'}); "
                f"P >= {j['law1_min_P']}; {j['method']}",
            ],
            [
                "law 2: lambda* = k2 P^gamma2",
                "gamma2",
                j["gamma2"],
                j["gamma2_err"],
                f"k2 = {_fmt(j['k2'])}; lambda* from {j['lambda_star_source']}; P >= {j['law2_min_P']}; "
                f"{j['law2_method']}",
            ],
            [
                "combined: eps* ~ P^-(gamma1 gamma2)",
                "gamma_pred",
                j["gamma_pred"],
                j["sigma"],
                f"z = {_fmt(j['z'])} (gamma_pred - gamma_meas in units of sigma)",
            ],
            [
                "direct: eps* = k P^-gamma_meas",
                "gamma_meas",
                j["gamma_meas"],
                j["gamma_meas_err"],
                f"k = {_fmt(j['k_meas'])}; {j['eps_star_method']}",
            ],
        ]
        out.table(
            "exponents",
            ["law", "exponent", "value", "error", "details"],
            rows,
            "Exponents of the two dynamical laws and their product",
        )
        per_p = [[r[c] for c in PER_P_COLUMNS] for r in j["per_P"]]
        out.table("per_P", list(PER_P_COLUMNS), per_p, "Per training-set size")
        for note in j["notes"]:
            out.text(f"note: {note}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


@hookimpl
def register_report_sections(register: Register) -> None:
    """Register the exponent and per-P tables."""
    register(FitSummary())
