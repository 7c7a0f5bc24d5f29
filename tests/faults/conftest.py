"""The fault tier prints what each case measured at the end of the run, `make test` included."""

from __future__ import annotations

import pytest

from tests.faults.harness import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault suite figures")
    for case, figures in FIGURES:
        terminalreporter.write_line(f"{case}:")
        for name, value in figures.items():
            terminalreporter.write_line(f"    {name:<20} {value}")
