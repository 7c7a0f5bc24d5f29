"""The Developer Console at `/console`: the product page, working, served by the issuer.

A server-rendered page (Jinja2) and plain static scripts; no build step. The page calls the same
management API a script would, with `Authorization: Bearer` from the browser's sessionStorage (never a
cookie, a URL or a log). What the page says about the system (grace period, expiry notices, plans,
scopes, the demo API's URL) comes from this deployment's settings, so it stays true.

Every console response carries a strict Content-Security-Policy (scripts and styles from this origin
only, no inline script, nothing may frame it) and sends no referrer.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import scopes
from shared.events import PLAN_LIMITS
from shared.settings import Settings

HERE = Path(__file__).parent / "console"

# connect-src 'self': the page talks to this issuer only; form-action 'none': forms are handled by the
# script, never submitted (a key typed into a form must not end up in a URL).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), clipboard-write=(self)",
}
PAGE_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}

# What each resource governs, for "Token Types & Scopes".
RESOURCE_NOTES = {
    "compute": "VPS/VM instances: list and describe (read), create, update and terminate (write)",
    "storage": "object storage and databases",
    "network": "load balancers, firewalls and DNS records",
    "billing": "invoices, usage and payment settings",
    "admin": "this management API: list keys and the audit trail (read); create, rotate, renew and "
    "revoke keys (write)",
}


class SecureHeaders:
    """ASGI wrapper adding the console's security headers to every response of the app it wraps."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def in_words(value: timedelta) -> str:
    """`timedelta(hours=24)` -> "24 hours", `timedelta(days=7)` -> "7 days"."""
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


def joined(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def page_context(settings: Settings) -> dict[str, Any]:
    notices = sorted(settings.expiry_notices, reverse=True)
    grace_hours = settings.rotation_grace.total_seconds() / 3600
    plans = [
        {
            "name": name.capitalize(),
            "rate": f"{limit.requests_per_minute:,}",
            "burst": f"{limit.burst:,}" if limit.burst is not None else "No cap beyond the rate",
        }
        for name, limit in PLAN_LIMITS.items()
    ]
    plans.append({"name": "Enterprise", "rate": "Custom", "burst": "Custom (per key, or none)"})
    return {
        "api_url": (settings.console_api_url or f"http://127.0.0.1:{settings.demo_port}").rstrip("/"),
        "grace": in_words(settings.rotation_grace),
        "grace_hours": f"{grace_hours:g}",
        "notices": joined([in_words(n) for n in notices]) if notices else "",
        "default_expiry_days": settings.default_expiry_days,
        "resources": [(r, RESOURCE_NOTES[r]) for r in scopes.RESOURCES],
        "actions": scopes.ACTIONS,
        "all_scopes": scopes.ALL_SCOPES,
        "plans": plans,
    }


def install(app: FastAPI, settings: Settings) -> None:
    """`GET /console` (the page) and `/console/static/*` (its script and style)."""
    templates = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"])
    )
    page = templates.get_template("console.html").render(**page_context(settings))
    app.mount("/console/static", SecureHeaders(StaticFiles(directory=HERE / "static")), name="console-static")

    @app.get("/console", include_in_schema=False)
    async def console(request: Request) -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/console/", include_in_schema=False)
    async def console_slash() -> RedirectResponse:
        return RedirectResponse("/console", status_code=308, headers=SECURITY_HEADERS)
