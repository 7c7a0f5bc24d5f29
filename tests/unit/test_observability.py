"""Logs as JSON lines (or text) with the correlation id; HTTP request metrics by route and status."""

from __future__ import annotations

import json
import logging

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest

from shared import correlation
from shared.events import KeyRevoked, KeyView, parse_event
from shared.observability import RedactingJsonFormatter, RedactingTextFormatter, instrument

KEY = "cnx_prod_" + "a" * 36


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("issuer", logging.INFO, __file__, 1, message, None, None)


def test_json_line_has_time_level_service_message_and_correlation_id() -> None:
    correlation.bind("req-12345678")
    try:
        line = RedactingJsonFormatter("issuer").format(record(f"revoked {KEY}\nnext"))
    finally:
        correlation.bind(None)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["service"] == "issuer"
    assert entry["time"].endswith("+00:00")
    assert entry["correlation_id"] == "req-12345678"
    assert KEY not in entry["message"] and entry["message"].startswith("revoked cnx_prod_aaaa")


def test_text_format_is_one_redacted_line_with_the_correlation_id() -> None:
    correlation.bind("req-12345678")
    try:
        line = RedactingTextFormatter("notifier").format(record(f"sent for {KEY}"))
    finally:
        correlation.bind(None)
    assert "[req-12345678]" in line and "notifier" in line and KEY not in line and "\n" not in line


def test_a_caller_request_id_is_kept_only_when_plain() -> None:
    assert correlation.from_header(b"abc-1234-XYZ") == "abc-1234-XYZ"
    for hostile in (b"a b c d e f g h", b"x" * 65, KEY.encode(), b"\x1b[31mred\x1b[0m", b"short"):
        fresh = correlation.from_header(hostile)
        assert fresh != hostile.decode("latin-1") and len(fresh) == 16


async def test_api_call_id_reaches_the_events_it_causes_and_the_metrics_count_it() -> None:
    registry = CollectorRegistry()
    app = FastAPI()
    seen: list[KeyRevoked] = []

    @app.post("/v2/keys/{key_id}/revoke")
    async def revoke(key_id: str) -> dict[str, str]:
        view = KeyView.model_validate(
            {
                "key_id": key_id,
                "digest": "d" * 64,
                "account_id": "acc",
                "prefix": "cnx_prod_aaaa",
                "name": "k",
                "environment": "prod",
                "scopes": [],
                "plan": "starter",
                "status": "revoked",
                "created_at": "2026-01-01T00:00:00Z",
                "revision": 1,
            }
        )
        seen.append(KeyRevoked(account_id="acc", key_id=key_id, key=view))
        return {"status": "revoked"}

    instrument(app, registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://issuer") as client:
        answer = await client.post("/v2/keys/key_1/revoke", headers={"X-Request-Id": "call-0001"})
        missing = await client.get("/no/such/path/abc")
    assert answer.headers["x-request-id"] == "call-0001"
    assert len(missing.headers["x-request-id"]) == 16
    # The event carries it over the bus; a consumer binds it for its own log lines.
    wire = seen[0].model_dump_json()
    assert parse_event(wire).correlation_id == "call-0001"
    assert correlation.current() is None, "the request's id does not leak past the request"

    text = generate_latest(registry).decode()
    assert 'cnx_http_requests_total{method="POST",route="/v2/keys/{key_id}/revoke",status="200"} 1.0' in text
    assert 'cnx_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    revoked = 'method="POST",route="/v2/keys/{key_id}/revoke",status="200"'
    assert f"cnx_http_request_duration_seconds_count{{{revoked}}} 1.0" in text
    assert "process_resident_memory_bytes" in text or "python_info" in text
