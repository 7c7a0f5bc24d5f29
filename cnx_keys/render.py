"""How the CLI shows the API's answers to a person: times in words, tables, a key's details. Pure
functions of their inputs (the time `now` is an argument), rich renderables out.

Every value that came from the API is shown as rich `Text` (never parsed as markup) after
`clean()`: a name is the API's to check, but a terminal must not be steered by what a server sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from rich.table import Table
from rich.text import Text

from .models import AuditEntryObject, KeyObject, ValidationResult

# C0 and C1 controls (an ESC starts a terminal escape sequence), DEL, and bidi overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
STATUS_STYLE = {"active": "green", "rotating": "yellow", "expired": "red", "revoked": "red"}
SECURITY_NOTICE = (
    "Store this key now: it is shown only once and cannot be recovered (only a digest of it is kept). "
    "Keep it in a secret manager or an environment variable, never in source code."
)


def clean(value: object) -> str:
    return _UNSAFE.sub("\ufffd", str(value))


def text(value: object, style: str = "") -> Text:
    return Text(clean(value), style=style)


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def span(seconds: float) -> str:
    """A duration in words at the precision a person reads: `2 mins`, `5 hours`, `3 days`, `3 months`."""
    s = abs(seconds)
    if s < 60:
        return _plural(int(s), "sec")
    if s < 3600:
        return _plural(int(s // 60), "min")
    if s < 48 * 3600:
        return _plural(int(s // 3600), "hour")
    days = s / 86400
    if days < 45:
        return _plural(int(days), "day")
    # Rounded: a 90-day key made a second ago expires "in 3 months", not "in 2 months".
    if days < 360:
        return _plural(round(days / 30), "month")
    return _plural(round(days / 365), "year")


def relative(when: datetime | None, now: datetime, *, never: str = "never") -> str:
    """`2 mins ago`, `in 90 days`, `just now`; `never` for no time at all."""
    if when is None:
        return never
    seconds = (when - now).total_seconds()
    if abs(seconds) < 10:
        return "just now"
    return f"in {span(seconds)}" if seconds > 0 else f"{span(seconds)} ago"


def stamp(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else "-"


def dated(when: datetime | None, now: datetime, *, never: str = "never") -> str:
    """A date with its distance: `2026-03-01 09:00 UTC (in 90 days)`."""
    if when is None:
        return never
    return f"{stamp(when)} ({relative(when, now)})"


def status_text(key: KeyObject, now: datetime) -> Text:
    label: str = key.status
    if key.status == "rotating" and key.grace_until:
        label = f"rotating, ends {relative(key.grace_until, now)}"
    return text(label, STATUS_STYLE.get(key.status, ""))


def key_table(keys: Iterable[KeyObject], now: datetime) -> Table:
    table = Table(header_style="bold", box=None, pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("Key", no_wrap=True)
    table.add_column("Name", overflow="fold")
    table.add_column("Env", no_wrap=True)
    table.add_column("Last Used", no_wrap=True)
    table.add_column("Status")
    table.add_column("Expires", no_wrap=True)
    for key in keys:
        table.add_row(
            text(key.id),
            text(f"{key.prefix}..."),
            text(key.name),
            text(key.environment),
            text(relative(key.last_used_at, now)),
            status_text(key, now),
            text(relative(key.expires_at, now, never="never")),
        )
    return table


def key_details(key: KeyObject, now: datetime) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    limit = key.rate_limit
    rows: list[tuple[str, Text]] = [
        ("ID", text(key.id)),
        ("Key", text(f"{key.prefix}...")),
        ("Name", text(key.name)),
        ("Status", status_text(key, now)),
        ("Environment", text(key.environment)),
        ("Scopes", text(" ".join(key.scopes))),
        ("Plan", text(key.plan)),
        (
            "Rate limit",
            text(
                f"{limit.requests_per_minute}/min, burst {limit.burst if limit.burst is not None else 'none'}"
                if limit
                else "-"
            ),
        ),
        ("IP allowlist", text(" ".join(key.ip_allowlist) or "any address")),
        ("Created", text(dated(key.created_at, now))),
        ("Expires", text(dated(key.expires_at, now))),
        ("Last used", text(dated(key.last_used_at, now))),
        ("Auto-renew", text("on" if key.auto_renew else "off")),
    ]
    if key.grace_until:
        rows.append(("Grace until", text(dated(key.grace_until, now))))
    if key.notify is not None:
        rows.append(("Notify email", text(key.notify.email or "-")))
        rows.append(("Webhook URL", text(key.notify.webhook_url or "-")))
    if key.metadata:
        rows.append(("Metadata", text(", ".join(f"{k}={v}" for k, v in sorted(key.metadata.items())))))
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def audit_table(entries: Iterable[AuditEntryObject], now: datetime) -> Table:
    table = Table(header_style="bold", box=None, pad_edge=False)
    table.add_column("At", no_wrap=True)
    table.add_column("Action", no_wrap=True)
    table.add_column("Actor", no_wrap=True)
    table.add_column("Target", no_wrap=True)
    table.add_column("IP", no_wrap=True)
    for entry in entries:
        table.add_row(
            text(f"{stamp(entry.at)} ({relative(entry.at, now)})"),
            text(entry.action, "red" if entry.action == "auth.denied" else ""),
            text(entry.actor_key_id or "-"),
            text(entry.target_key_id or "-"),
            text(entry.ip or "-"),
        )
    return table


def verification(result: ValidationResult) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("Valid", text("yes" if result.valid else "no", "green" if result.valid else "red"))
    grid.add_row("Code", text(f"{result.code.value}: {result.message}"))
    if result.key_id:
        grid.add_row("Key ID", text(result.key_id))
    if result.environment:
        grid.add_row("Environment", text(result.environment))
    if result.scopes is not None:
        grid.add_row("Scopes", text(" ".join(result.scopes) or "-"))
    if result.rate_limit is not None:
        state = result.rate_limit
        grid.add_row(
            "Rate limit", text(f"{state.remaining}/{state.limit} left, resets in {state.reset_s:g}s")
        )
    if result.retry_after_s is not None:
        grid.add_row("Retry after", text(f"{result.retry_after_s:g}s"))
    return grid
