"""Checkpoint schedules: which steps (or epochs) of a run get saved.

Grammar (terms joined by ``+``, the result is the sorted union):

- ``log:K``    step 0 plus exactly K distinct, log-spaced integers in [1, T]
               ending at T. At the low end, where log spacing would put two
               points on the same integer, consecutive integers are used
               instead: no point is ever silently dropped. Needs K <= T.
- ``linear:E`` every E-th step: 0, E, 2E, ... <= T.
- ``at:a,b,c`` the listed steps (each in [0, T]).

Example (Pythia style): ``log:10+linear:1000``.
"""

from __future__ import annotations

import math

from normdyn.core.errors import ScheduleError

__all__ = ["parse_schedule", "log_points"]


def log_points(K: int, T: int) -> list[int]:
    """Exactly K distinct integers in [1, T], log-spaced, the last equal to T.

    Greedy: each next point is the geometric step from the previous point to T
    over the points still to place, at least previous + 1, and at most what
    leaves room for the remaining points.
    """
    if K < 1:
        raise ScheduleError(f"log:{K}: K must be >= 1")
    if K > T:
        raise ScheduleError(
            f"log:{K} asks for {K} distinct points but the run has only {T} steps/epochs; use K <= {T} or a longer run"
        )
    points = [1] if K > 1 else [T]
    while len(points) < K:
        prev = points[-1]
        remaining = K - len(points)
        target = round(prev * math.exp(math.log(T / prev) / remaining))
        points.append(min(max(prev + 1, target), T - remaining + 1))
    return points


def _term(term: str, T: int) -> set[int]:
    kind, sep, arg = term.partition(":")
    if not sep or not arg:
        raise ScheduleError(f"schedule term {term!r}: expected log:K, linear:E or at:a,b,...")
    kind = kind.strip().lower()
    try:
        values = [int(v) for v in arg.split(",")]
    except ValueError:
        raise ScheduleError(f"schedule term {term!r}: {arg!r} is not an integer list") from None
    if kind in ("log", "linear") and len(values) != 1:
        raise ScheduleError(f"schedule term {term!r}: {kind} takes exactly one integer")
    if kind == "log":
        return {0, *log_points(values[0], T)}
    if kind == "linear":
        if values[0] < 1:
            raise ScheduleError(f"schedule term {term!r}: the interval must be >= 1")
        return set(range(0, T + 1, values[0]))
    if kind == "at":
        bad = [v for v in values if not 0 <= v <= T]
        if bad:
            raise ScheduleError(f"schedule term {term!r}: {bad} outside [0, {T}]")
        return set(values)
    raise ScheduleError(f"schedule term {term!r}: unknown kind {kind!r} (use log, linear or at)")


def parse_schedule(spec: str, total: int) -> list[int]:
    """The sorted list of steps that ``spec`` selects in a run of ``total`` steps."""
    if total < 1:
        raise ScheduleError(f"schedule {spec!r}: the run length must be >= 1, got {total}")
    if not spec or not spec.strip():
        raise ScheduleError("empty schedule: use e.g. log:50")
    points: set[int] = set()
    for term in spec.split("+"):
        points |= _term(term.strip(), total)
    return sorted(points)
