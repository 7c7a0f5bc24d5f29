"""A real headless Chromium for the console tests: Debian's `chromium` package driven by Playwright.

`playwright install` cannot download here, so Playwright is pointed at /usr/bin/chromium
(`.ci/apt-packages.txt` installs it). Without it the tests skip locally, and fail under CI=true: CI must
never go green without having driven the browser. Each browser gets a new, empty profile directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import in_ci

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    """The browser binary, or skip (fail under CI) with the reason."""
    path = os.environ.get("CNX_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (make .venv installs the dev dependencies)"
    else:
        if os.access(path, os.X_OK):
            return path
        reason = f"no chromium at {path} (apt-get install chromium; .ci/apt-packages.txt lists it)"
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Problems:
    """What the page said went wrong: console errors, uncaught exceptions, CSP violations."""

    errors: list[str] = field(default_factory=list)
    # Console errors a step expects (the browser logs a 401 response of a bad sign-in), as substrings.
    expected: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning") and not any(e in message.text for e in self.expected):
            self.errors.append(f"{message.type}: {message.text}")


@contextmanager
def browser_context(profile_dir: Path, viewport: dict[str, int] = DESKTOP) -> Iterator[Any]:
    """A persistent context (so the new, empty user-data-dir is ours) on the system chromium."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    profile_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=viewport,
            locale="en-US",
            timezone_id="UTC",
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """axe-core's violations of those impacts on the page as it is now, one line each."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    found = []
    for violation in results.response["violations"]:
        if violation.get("impact") in impacts:
            targets = [", ".join(node["target"]) for node in violation["nodes"]][:5]
            found.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {targets}")
    return found
