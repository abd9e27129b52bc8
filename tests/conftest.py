"""Test configuration: locally installed third-party plugins never leak in
(normdyn.core.plugins skips entry points while sys._called_from_test is set,
unless NORMDYN_LOAD_PLUGINS names them)."""

from __future__ import annotations

import sys


def pytest_configure(config: object) -> None:
    sys._called_from_test = True  # type: ignore[attr-defined]


def pytest_unconfigure(config: object) -> None:
    if hasattr(sys, "_called_from_test"):
        del sys._called_from_test
