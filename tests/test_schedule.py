"""Checkpoint schedules: exact point counts, unions, errors."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from normdyn.core.cli import cli
from normdyn.core.errors import ScheduleError
from normdyn.core.schedule import log_points, parse_schedule


@pytest.mark.parametrize(
    "K,T", [(1, 1), (1, 100), (5, 5), (10, 1000), (50, 60), (50, 500), (50, 1000), (37, 10**6), (100, 100)]
)
def test_log_gives_exactly_K_distinct_points_ending_at_T(K: int, T: int) -> None:
    pts = log_points(K, T)
    assert len(pts) == K and len(set(pts)) == K
    assert pts == sorted(pts) and pts[-1] == T and pts[0] >= 1
    sched = parse_schedule(f"log:{K}", T)
    assert sched == [0] + pts


def test_log_is_geometric_where_integers_allow() -> None:
    pts = log_points(10, 10**6)
    ratios = [b / a for a, b in zip(pts[1:], pts[2:])]
    assert all(abs(math.log10(r) - 6 / 9) < 0.05 for r in ratios)
    assert log_points(10, 1000) == [1, 2, 4, 9, 20, 44, 96, 210, 458, 1000]


def test_linear_and_unions() -> None:
    assert parse_schedule("linear:250", 1000) == [0, 250, 500, 750, 1000]
    assert parse_schedule("linear:300", 1000) == [0, 300, 600, 900]
    assert parse_schedule("log:3+linear:400", 1000) == [0, 1, 32, 400, 800, 1000]
    assert parse_schedule("at:5,3,3+log:1", 10) == [0, 3, 5, 10]


@pytest.mark.parametrize(
    "spec,T,message",
    [
        ("log:60", 50, "asks for 60 distinct points but the run has only 50"),
        ("log:0", 50, "K must be >= 1"),
        ("linear:0", 50, "the interval must be >= 1"),
        ("cosine:4", 50, "unknown kind 'cosine'"),
        ("log", 50, "expected log:K, linear:E or at:a,b"),
        ("log:x", 50, "'x' is not an integer list"),
        ("at:3,99", 50, "[99] outside [0, 50]"),
        ("", 50, "empty schedule"),
        ("log:5", 0, "the run length must be >= 1"),
    ],
)
def test_bad_specs(spec: str, T: int, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(spec, T)
    assert message in str(info.value)


def test_schedule_command() -> None:
    result = CliRunner().invoke(cli, ["schedule", "log:10", "--total", "1000"])
    assert result.exit_code == 0
    assert result.output == "0\n1\n2\n4\n9\n20\n44\n96\n210\n458\n1000\n"
    result = CliRunner().invoke(cli, ["schedule", "log:10", "--total", "5"])
    assert result.exit_code == 1
    assert (
        result.output
        == "Error: log:10 asks for 10 distinct points but the run has only 5 steps/epochs; use K <= 5 or a longer run\n"
    )
