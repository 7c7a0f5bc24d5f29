"""The Developer Console (issue 14) in a real headless Chromium, against the real stack: issuer,
validator and demo API as processes on a real nats-server with `make up`'s identities.

Found by role and label, as a person finds things. Screenshots of every step go to the test's tmp dir
(`screenshots/`, printed at the end); an axe-core scan at each main state reports no serious or
critical violation; the page logs no error.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import DESKTOP, PHONE, Problems, axe_violations, browser_context, chromium_path
from tests.support.nats import start_secured_nats

from .stack import ProcessStack, poll, process_stack

# A well-formed key nobody holds (its checksum is right): the API's own 401 message, in the alert.
BAD_KEY = "cnx_prod_" + "A" * 36


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    chromium_path()  # skip (or fail under CI) before starting anything
    directory = tmp_path_factory.mktemp("console-stack")
    nats = start_secured_nats(directory / "nats")
    try:
        # The tests drive one admin key far past the management API's 600/min.
        with process_stack(
            nats, directory / "data", ["issuer", "validator", "demo"], CNX_MANAGEMENT_RATE_LIMIT="0"
        ) as running:
            yield running
    finally:
        nats.server.stop()


class Shots:
    def __init__(self, directory: Path, *, full_page: bool = True) -> None:
        self.directory = directory
        self.full_page = full_page
        directory.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def __call__(self, page: Any, name: str) -> None:
        self.count += 1
        page.screenshot(path=str(self.directory / f"{self.count:02d}-{name}.png"), full_page=self.full_page)


def eventually(
    check: Callable[[], bool], timeout: float = 20.0, step: Callable[[], None] | None = None
) -> None:
    """Poll `check` (running `step` before each try) until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if step is not None:
            step()
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.25)


def usage(stack: ProcessStack, key_id: str) -> tuple[int, int]:
    answer = httpx.get(f"{stack.url('issuer')}/v2/keys/{key_id}/usage", headers=stack.admin(), timeout=10)
    assert answer.status_code == 200, answer.text
    hours = answer.json()["hours"]
    assert len(hours) == 24
    return sum(h["allowed"] for h in hours), sum(h["refused"] for h in hours)


def assert_accessible(page: Any, where: str) -> None:
    found = axe_violations(page)
    assert not found, f"axe at {where}:\n" + "\n".join(found)


def row_of(page: Any, text: str) -> Any:
    return page.get_by_role("row").filter(has_text=text)


def test_the_console_is_served_with_a_strict_policy(stack: ProcessStack) -> None:
    issuer = stack.url("issuer")
    page = httpx.get(f"{issuer}/console", timeout=10)
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    # No inline script, no inline handler: every script comes from a file the policy allows.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text)
    assert not re.search(r"\son[a-z]+\s*=", page.text)
    script = httpx.get(f"{issuer}/console/static/console.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == csp
    assert script.headers["x-frame-options"] == "DENY"
    # API data (key names are user input) goes on the page as text, never as markup.
    assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text
    assert "document.write" not in script.text
    # The key is kept in sessionStorage only: never a cookie, never localStorage.
    assert "document.cookie" not in script.text and "localStorage" not in script.text
    # The page tells this deployment's truth: the demo API's URL and the grace default.
    assert f"http://127.0.0.1:{stack.env['CNX_DEMO_PORT']}" in page.text
    assert "24 hours" in page.text


def test_a_person_manages_keys_in_the_console(stack: ProcessStack, tmp_path: Path) -> None:
    shots = Shots(tmp_path / "screenshots")
    problems = Problems()
    issuer, demo = stack.url("issuer"), stack.url("demo")
    with browser_context(tmp_path / "profile", DESKTOP) as context:
        page = context.new_page()
        problems.watch(page)
        page.goto(f"{issuer}/console")
        page.get_by_role("heading", name="API Keys & Tokens").wait_for()
        shots(page, "signed-out")
        assert_accessible(page, "sign-in")

        # A bad key: the API's error, in words, in role=alert. The browser logs the 401 response.
        problems.expected.append("401")
        page.get_by_label("Admin key").fill(BAD_KEY)
        page.get_by_role("button", name="Sign in").click()
        alert = page.get_by_role("alert")
        alert.wait_for()
        assert "Sign-in failed" in alert.inner_text() and "not accepted" in alert.inner_text()
        assert BAD_KEY not in alert.inner_text()
        shots(page, "bad-key")
        problems.expected.remove("401")

        page.get_by_label("Admin key").fill(stack.admin_key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Active Tokens").wait_for()
        assert page.evaluate("document.cookie") == ""
        assert stack.admin_key not in page.url
        headers = [h.inner_text().strip().lower() for h in page.locator("#keys-table thead th").all()]
        assert headers == ["key id", "name", "last used", "status", "actions"]
        shots(page, "signed-in")
        assert_accessible(page, "signed in")

        # Generate: a bad CIDR is answered next to its field; then the key, once.
        page.get_by_role("button", name="Generate New Key").click()
        dialog = page.get_by_role("dialog", name="Generate New Key")
        dialog.get_by_label("Name").fill("Production Backend")
        dialog.get_by_label("Environment").select_option("prod")
        dialog.get_by_label("compute:read", exact=True).check()
        dialog.get_by_label("storage:write", exact=True).check()
        dialog.get_by_label("Expires in (days)").fill("90")
        dialog.get_by_label("Plan").select_option("starter")
        dialog.get_by_label("IP allowlist").fill("not-a-cidr")
        dialog.get_by_label("Notification email").fill("ops@example.com")
        assert_accessible(page, "generate dialog")
        shots(page, "generate-dialog")
        problems.expected.append("422")  # the browser logs the API's answer to the bad CIDR
        dialog.get_by_role("button", name="Create key").click()
        ip_error = page.locator("#err-ip")
        ip_error.wait_for()
        assert "CIDR" in ip_error.inner_text()
        assert dialog.get_by_label("IP allowlist").get_attribute("aria-invalid") == "true"
        shots(page, "field-error")
        problems.expected.remove("422")
        dialog.get_by_label("IP allowlist").fill("127.0.0.0/8\n::1/128")
        dialog.get_by_role("button", name="Create key").click()
        secret_box = page.get_by_label("Your new key")
        secret_box.wait_for()
        secret = secret_box.input_value()
        assert re.fullmatch(r"cnx_prod_[0-9A-Za-z]{36}", secret)
        assert secret_box.get_attribute("readonly") is not None
        card = page.locator("#new-key")
        card_text = card.inner_text()
        assert "API keys are revealed only once upon creation" in card_text
        assert "Never commit them to version control." in card_text
        assert "Created:" in card_text and "Expires:" in card_text and "Active" in card_text
        assert "compute:read" in card_text and "storage:write" in card_text
        assert card.get_by_role("button", name="Copy").is_visible()
        # The examples carry the new key and the demo API's URL while it is on screen.
        curl = page.get_by_role("tabpanel", name="cURL").inner_text()
        assert secret in curl and f"{demo}/v2/instances" in curl
        page.get_by_role("tab", name="Python").click()
        assert secret in page.get_by_role("tabpanel", name="Python").inner_text()
        page.get_by_role("tab", name="Node.js").click()
        assert secret in page.get_by_role("tabpanel", name="Node.js").inner_text()
        page.get_by_role("tab", name="cURL").click()
        card.get_by_role("button", name="Copy").click()
        page.locator("#copy-status").filter(has_text=re.compile(r"\S")).wait_for()
        shots(page, "new-key-once")
        assert_accessible(page, "new key")

        # Reloaded: still signed in (this tab's sessionStorage), the secret gone for good.
        page.reload()
        page.get_by_role("heading", name="Active Tokens").wait_for()
        row = row_of(page, "Production Backend")
        row.wait_for()
        assert secret not in page.content()
        assert not page.get_by_label("Your new key").is_visible()
        assert "YOUR_API_KEY" in page.get_by_role("tabpanel", name="cURL").inner_text()
        cells = [c.inner_text().strip() for c in row.get_by_role("cell").all()]
        assert cells[0] == secret[:13] + "..."
        assert cells[2] == "Never" and cells[3] == "Active"
        shots(page, "row-never-used")

        # Used against the demo API: "Last Used" changes once the validators' report is in.
        for _ in range(3):
            answer = httpx.get(
                f"{demo}/v2/instances", headers={"Authorization": f"Bearer {secret}"}, timeout=10
            )
            assert answer.status_code == 200
        last_used = row.get_by_role("cell").nth(2)
        eventually(
            lambda: last_used.inner_text().strip() == "Just now",
            step=lambda: page.get_by_role("button", name="Refresh").click(),
        )
        shots(page, "last-used")

        # Rotate: the grace defaults to the deployment's; both keys listed, the old one Rotating.
        row.get_by_role("button", name="Rotate Production Backend").click()
        rotate = page.get_by_role("dialog", name="Rotate Production Backend")
        assert rotate.get_by_label("Grace period (hours)").input_value() == "24"
        rotate.get_by_label("Grace period (hours)").fill("2")
        shots(page, "rotate-dialog")
        rotate.get_by_role("button", name="Rotate", exact=True).click()
        new_secret_box = page.get_by_label("Your new key")
        eventually(lambda: new_secret_box.input_value() not in ("", secret))
        new_secret = new_secret_box.input_value()
        rows = row_of(page, "Production Backend")
        eventually(lambda: rows.count() == 2)
        old_row = rows.filter(has_text="Rotating")
        assert re.search(r"Rotating until \w{3} \d+, \d{4}", old_row.inner_text())
        assert rows.filter(has_text="Active").count() == 1
        shots(page, "rotated-both-rows")
        page.get_by_role("button", name="I have stored it, close").click()
        assert new_secret not in page.content()

        # Revoke the old one, after a confirmation.
        old_row.get_by_role("button", name="Revoke Production Backend").click()
        confirm = page.get_by_role("dialog", name=re.compile("Revoke Production Backend"))
        shots(page, "revoke-dialog")
        confirm.get_by_role("button", name="Revoke", exact=True).click()
        revoked_row = rows.filter(has_text="Revoked")
        revoked_row.wait_for()
        assert rows.filter(has_text="Active").count() == 1
        shots(page, "revoked")

        # The revoked key is refused (counted as refused), the new one allowed.
        assert (
            httpx.get(
                f"{demo}/v2/instances", headers={"Authorization": f"Bearer {secret}"}, timeout=10
            ).status_code
            == 401
        )
        assert (
            httpx.get(
                f"{demo}/v2/instances", headers={"Authorization": f"Bearer {new_secret}"}, timeout=10
            ).status_code
            == 200
        )
        old_id = revoked_row.get_attribute("data-key-id")
        assert old_id
        poll(lambda: usage(stack, old_id) == (3, 1), timeout=20)

        # Details: every setting, and the chart's counts (as text for screen readers too).
        revoked_row.get_by_role("button", name="Production Backend", exact=True).click()
        details = page.get_by_role("dialog", name="Production Backend")
        details.get_by_text("Last 24 hours: 3 allowed validations, 1 refused.").wait_for()
        chart = details.get_by_role("img", name="Validations per hour, last 24 hours")
        assert chart.is_visible()
        assert (
            details.locator("svg rect.allowed").count() >= 1
            and details.locator("svg rect.refused").count() >= 1
        )
        table_rows = details.locator("#usage-table tbody tr")
        assert table_rows.count() == 24
        counts = [[c.inner_text() for c in r.locator("td").all()][1:] for r in table_rows.all()]
        assert sum(int(a) for a, _ in counts) == 3 and sum(int(r) for _, r in counts) == 1
        listed = details.locator("#details-list").inner_text()
        assert "127.0.0.0/8" not in listed  # settings live in the form
        assert details.get_by_label("IP allowlist").input_value() == "127.0.0.0/8\n::1/128"
        assert details.get_by_label("Notification email").input_value() == "ops@example.com"
        shots(page, "details-chart")
        assert_accessible(page, "details")
        details.get_by_role("button", name="Close").click()

        # Editable settings, on the live key.
        new_row = rows.filter(has_text="Active")
        new_row.get_by_role("button", name="Production Backend", exact=True).click()
        details = page.get_by_role("dialog", name="Production Backend")
        details.get_by_label("Name").fill("Production Backend v2")
        details.get_by_label("IP allowlist").fill("10.0.0.0/8\n203.0.113.0/24")
        details.get_by_label("Auto-renew").check()
        details.get_by_role("button", name="Save changes").click()
        details.get_by_text("Saved.").wait_for()
        shots(page, "settings-saved")
        details.get_by_role("button", name="Close").click()
        row_of(page, "Production Backend v2").wait_for()
        key = httpx.get(
            f"{issuer}/v2/keys/{new_row.get_attribute('data-key-id')}", headers=stack.admin(), timeout=10
        )
        assert key.json()["name"] == "Production Backend v2" and key.json()["auto_renew"] is True
        assert key.json()["ip_allowlist"] == ["10.0.0.0/8", "203.0.113.0/24"]
        # Now refused from 127.0.0.1: the allowlist is in force.
        assert (
            httpx.get(
                f"{demo}/v2/instances", headers={"Authorization": f"Bearer {new_secret}"}, timeout=10
            ).status_code
            == 403
        )

        # Webhook signing secret, shown once.
        page.get_by_role("button", name="Generate webhook secret").click()
        webhook = page.get_by_label("Your webhook signing secret")
        webhook.wait_for()
        assert webhook.input_value().startswith("whsec_")
        shots(page, "webhook-secret")
        page.get_by_role("button", name="Close", exact=True).click()
        assert not webhook.is_visible()

        # Filters.
        page.get_by_role("combobox", name="Status").select_option("revoked")
        eventually(lambda: page.locator("#keys-body tr").count() == 1)
        assert "Revoked" in page.locator("#keys-body tr").inner_text()
        page.get_by_role("combobox", name="Status").select_option("")
        page.get_by_role("combobox", name="Environment").select_option("dev")
        eventually(lambda: page.locator("#keys-body tr").count() == 0)
        assert page.get_by_text("No keys match.").is_visible()
        page.get_by_role("combobox", name="Environment").select_option("")

        # Beyond 20 rows: pages.
        for n in range(20):
            stack.create_key(name=f"Batch key {n:02d}", environment="dev")
        page.get_by_role("button", name="Refresh").click()
        eventually(
            lambda: page.locator("#keys-body tr").count() == 20 and row_of(page, "Batch key 19").count() == 1
        )
        page.get_by_role("button", name="Next page").click()
        row_of(page, "Production Backend v2").wait_for()
        assert page.get_by_text("Page 2").is_visible()
        shots(page, "page-2")
        page.get_by_role("button", name="Previous page").click()
        row_of(page, "Batch key 19").wait_for()

        # Sign out: the key is gone from the tab.
        page.get_by_role("button", name="Sign out").click()
        page.get_by_label("Admin key").wait_for()
        assert page.evaluate("sessionStorage.length") == 0
        assert not page.get_by_role("heading", name="Active Tokens").is_visible()
        shots(page, "signed-out-again")
    assert not problems.errors, problems.errors
    assert stack.admin_key not in stack.logs() and secret not in stack.logs()
    print(f"screenshots: {shots.directory}")


def focused(page: Any) -> dict[str, str]:
    return page.evaluate(
        "() => { const e = document.activeElement; return {tag: e.tagName, id: e.id || '',"
        " label: e.getAttribute('aria-label') || '', text: (e.innerText || '').trim().slice(0, 80)} }"
    )


def tab_until(
    page: Any, wanted: Callable[[dict[str, str]], bool], limit: int = 120, back: bool = False
) -> None:
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        if wanted(focused(page)):
            return
    raise AssertionError(f"never reached by keyboard; last focus {focused(page)}")


def test_the_main_flow_works_by_keyboard_alone_on_a_phone(stack: ProcessStack, tmp_path: Path) -> None:
    shots = Shots(tmp_path / "screenshots", full_page=False)  # what the phone's screen shows
    problems = Problems()
    with browser_context(tmp_path / "profile", PHONE) as context:
        page = context.new_page()
        problems.watch(page)
        page.goto(f"{stack.url('issuer')}/console")
        page.get_by_role("heading", name="API Keys & Tokens").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shots(page, "phone-signed-out")
        assert_accessible(page, "phone sign-in")

        tab_until(page, lambda f: f["id"] == "admin-key")
        page.keyboard.type(stack.admin_key)
        page.keyboard.press("Enter")
        page.get_by_role("heading", name="Active Tokens").wait_for()
        eventually(lambda: focused(page)["text"] == "Generate New Key")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shots(page, "phone-signed-in")
        assert_accessible(page, "phone signed in")

        # Generate by keyboard: Enter opens the dialog on "Name"; Space ticks a scope; Enter submits.
        page.keyboard.press("Enter")
        eventually(lambda: focused(page)["id"] == "gen-name")
        page.keyboard.type("Keyboard Key")
        tab_until(page, lambda f: f["id"] == "gen-environment")
        tab_until(
            page,
            lambda f: f["tag"] == "INPUT" and page.evaluate("document.activeElement.value") == "compute:read",
        )
        page.keyboard.press("Space")
        shots(page, "phone-generate")
        assert_accessible(page, "phone generate dialog")
        tab_until(page, lambda f: f["text"] == "Create key")
        page.keyboard.press("Enter")
        secret_box = page.get_by_label("Your new key")
        secret_box.wait_for()
        assert secret_box.input_value().startswith("cnx_prod_")
        shots(page, "phone-new-key")
        tab_until(page, lambda f: f["text"] == "Copy")
        page.keyboard.press("Enter")
        tab_until(page, lambda f: f["text"] == "I have stored it, close")
        page.keyboard.press("Enter")
        assert not secret_box.is_visible()
        eventually(lambda: focused(page)["text"] == "Generate New Key")

        # Rotate, then revoke the old key, by keyboard.
        row_of(page, "Keyboard Key").wait_for()
        tab_until(page, lambda f: f["label"] == "Rotate Keyboard Key")
        page.keyboard.press("Enter")
        eventually(lambda: focused(page)["id"] == "rotate-grace")
        page.keyboard.press("Enter")
        page.get_by_label("Your new key").wait_for()
        eventually(lambda: row_of(page, "Keyboard Key").count() == 2)
        tab_until(page, lambda f: f["text"] == "I have stored it, close")
        page.keyboard.press("Enter")
        rotating = row_of(page, "Keyboard Key").filter(has_text="Rotating")
        rotating.wait_for()
        old_id = rotating.get_attribute("data-key-id")
        page.locator(f'[data-focus="details:{old_id}"]').focus()  # start from the old row's name
        tab_until(page, lambda f: f["label"] == "Revoke Keyboard Key")
        page.keyboard.press("Enter")
        tab_until(page, lambda f: f["text"] == "Revoke")
        page.keyboard.press("Enter")
        page.locator(f'tr[data-key-id="{old_id}"]').filter(has_text="Revoked").wait_for()
        shots(page, "phone-revoked")

        # Details by keyboard, closed with Escape: focus comes back to the row.
        page.locator(f'[data-focus="details:{old_id}"]').focus()
        page.keyboard.press("Enter")
        details = page.get_by_role("dialog", name="Keyboard Key")
        details.get_by_text(re.compile(r"Last 24 hours: \d+ allowed validations?, \d+ refused\.")).wait_for()
        shots(page, "phone-details")
        assert_accessible(page, "phone details")
        page.keyboard.press("Escape")
        eventually(lambda: not details.is_visible())
        eventually(
            lambda: page.evaluate("document.activeElement.getAttribute('data-focus')") == f"details:{old_id}"
        )

        # The tabs follow the arrow keys.
        page.get_by_role("tab", name="cURL").focus()
        page.keyboard.press("ArrowRight")
        assert page.get_by_role("tab", name="Python").get_attribute("aria-selected") == "true"
        assert page.get_by_role("tabpanel", name="Python").is_visible()

        tab_until(page, lambda f: f["text"] == "Sign out", back=True, limit=200)
        page.keyboard.press("Enter")
        page.get_by_label("Admin key").wait_for()
        shots(page, "phone-signed-out-again")
    assert not problems.errors, problems.errors
