"""Curves from elsewhere: the CSV files ``normdyn fit --curves`` and ``--lambda-star`` read.

CURVES.csv holds either

- raw per-seed curves: columns ``P,seed,lambda,test_error``, one row per
  logged checkpoint, rows of one (P, seed) in time order; rows with an empty
  or NaN lambda or test_error are skipped (a measure not computed there); or
- mean curves already on a common grid: columns ``P,lambda,test_error``;
  NaN (or empty) test_error is allowed, the grid is the union of the lambda
  values and a P without a value at some lambda gets NaN there.

LSTAR.csv has columns ``P,lambda_star`` (one row per P). Extra columns are
ignored. Every lambda, test_error and lambda_star must be > 0 (log-log fits).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from normdyn.analyzers.fit.aggregate import MeanCurves, SeedCurve
from normdyn.core.errors import DataError

__all__ = ["RAW_COLUMNS", "MEAN_COLUMNS", "LAMBDA_STAR_COLUMNS", "read_curves_csv", "read_lambda_star_csv"]

RAW_COLUMNS = ("P", "seed", "lambda", "test_error")
MEAN_COLUMNS = ("P", "lambda", "test_error")
LAMBDA_STAR_COLUMNS = ("P", "lambda_star")


def _read_rows(path: Path, required: tuple[str, ...], expected: str) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = list(reader)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'}); "
            f"expected {expected}"
        )
    if not rows:
        raise DataError(f"{path}: no data rows")
    return header, rows


def _number(path: Path, line: int, column: str, text: str | None) -> float:
    text = (text or "").strip()
    if text == "" or text.lower() == "nan":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}, line {line}: column {column!r} holds {text!r}, not a number") from None


def _positive(path: Path, line: int, column: str, value: float) -> float:
    if not math.isnan(value) and not (value > 0 and math.isfinite(value)):
        raise DataError(f"{path}, line {line}: {column} = {value:g}; must be > 0 and finite (log-log fits)")
    return value


def _int(path: Path, line: int, column: str, text: str | None, *, positive: bool) -> int:
    value = _number(path, line, column, text)
    if math.isnan(value) or value != int(value) or (positive and value <= 0):
        kind = "a positive integer" if positive else "an integer"
        raise DataError(f"{path}, line {line}: column {column!r} holds {text!r}, not {kind}")
    return int(value)


def read_curves_csv(path: str | os.PathLike[str]) -> list[SeedCurve] | MeanCurves:
    """Per-seed curves (a ``seed`` column present) or mean curves from CURVES.csv."""
    path = Path(path)
    expected = f"{','.join(RAW_COLUMNS)} (per-seed curves) or {','.join(MEAN_COLUMNS)} (mean curves)"
    header, rows = _read_rows(path, MEAN_COLUMNS, expected)
    per_seed = "seed" in header
    parsed: list[tuple[int, int, float, float]] = []
    for line, row in enumerate(rows, start=2):
        P = _int(path, line, "P", row["P"], positive=True)
        seed = _int(path, line, "seed", row["seed"], positive=False) if per_seed else 0
        lam = _positive(path, line, "lambda", _number(path, line, "lambda", row["lambda"]))
        err = _positive(path, line, "test_error", _number(path, line, "test_error", row["test_error"]))
        if not per_seed and math.isnan(lam):
            raise DataError(f"{path}, line {line}: lambda is empty; mean curves need a lambda on every row")
        parsed.append((P, seed, lam, err))
    return _seed_curves(path, parsed) if per_seed else _mean_curves(path, parsed)


def _seed_curves(path: Path, parsed: list[tuple[int, int, float, float]]) -> list[SeedCurve]:
    groups: dict[tuple[int, int], list[tuple[float, float]]] = {}
    first_line: dict[tuple[int, int, float, float], int] = {}
    for line, (P, seed, lam, err) in enumerate(parsed, start=2):
        if math.isnan(lam) or math.isnan(err):
            continue
        # the parsed values are the keys: nothing here is recomputed, so equal text is an equal key
        earlier = first_line.setdefault((P, seed, lam, err), line)
        if earlier != line:
            raise DataError(
                f"{path}, line {line}: repeats line {earlier} (P={P}, seed={seed}, lambda={lam!r}, "
                f"test_error={err!r}); remove the duplicate row"
            )
        groups.setdefault((P, seed), []).append((lam, err))
    if not groups:
        raise DataError(f"{path}: every row has an empty lambda or test_error")
    return [
        SeedCurve(
            P,
            seed,
            np.log10([p[0] for p in pts]),
            np.array([p[1] for p in pts]),
            source=f"{path} (P={P}, seed={seed})",
        )
        for (P, seed), pts in sorted(groups.items())
    ]


def _mean_curves(path: Path, parsed: list[tuple[int, int, float, float]]) -> MeanCurves:
    # Each row's column is found by position (np.unique's inverse) on the lambda values as parsed,
    # never by recomputing a logarithm and searching for it: np.log10 and math.log10 differ in the
    # last bit on some CPUs, which would put a value in a neighbouring column.
    P, row_P = np.unique(np.array([p for p, _, _, _ in parsed], dtype=np.int64), return_inverse=True)
    lambdas, row_lam = np.unique(np.array([lam for _, _, lam, _ in parsed], dtype=np.float64), return_inverse=True)
    log10_grid = np.log10(lambdas)
    mean = np.full((P.size, log10_grid.size), np.nan)
    filled = np.zeros_like(mean, dtype=bool)
    for (p, _, lam, err), i, j in zip(parsed, row_P.ravel(), row_lam.ravel()):
        if filled[i, j]:
            raise DataError(
                f"{path}: two rows for P={p}, lambda={lam:g}; mean curves have one value per point "
                "(add a seed column for per-seed curves)"
            )
        mean[i, j], filled[i, j] = err, True
    curves = MeanCurves(log10_grid, P, mean, np.full(P.size, np.nan), "grid argmin")
    empty = [int(p) for p, row in zip(P, mean) if not np.any(np.isfinite(row))]
    if empty:
        raise DataError(f"{path}: the mean curve of P = {', '.join(map(str, empty))} has no test_error value")
    curves.log10_lambda_star = curves.log10_lambda_star_grid
    return curves


def read_lambda_star_csv(path: str | os.PathLike[str]) -> dict[int, float]:
    """P -> lambda* from LSTAR.csv (columns ``P,lambda_star``)."""
    path = Path(path)
    _, rows = _read_rows(path, LAMBDA_STAR_COLUMNS, ",".join(LAMBDA_STAR_COLUMNS))
    out: dict[int, float] = {}
    for line, row in enumerate(rows, start=2):
        P = _int(path, line, "P", row["P"], positive=True)
        value = _positive(path, line, "lambda_star", _number(path, line, "lambda_star", row["lambda_star"]))
        if math.isnan(value):
            raise DataError(f"{path}, line {line}: lambda_star is empty")
        if P in out:
            raise DataError(f"{path}, line {line}: a second lambda_star for P={P}")
        out[P] = value
    return out
