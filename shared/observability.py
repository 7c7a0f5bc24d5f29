"""JSON logs with secrets redacted, a Prometheus registry per app, and the probe endpoints."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.text import UNSAFE, one_line
from shared.tokens import redact

ReadinessCheck = Callable[[], Awaitable[bool] | bool]


class RedactingJsonFormatter(logging.Formatter):
    """One JSON object per line; any token in the message or exception text is cut to its prefix."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            # One line of text whatever was logged: JSON escapes C0 controls, but not DEL, C1 controls
            # (an 8-bit CSI drives a terminal) or bidi overrides; a key name or reason carries them.
            "msg": one_line(redact(record.getMessage())),
        }
        if record.exc_info:
            entry["exc"] = _keep_newlines(redact(self.formatException(record.exc_info)))
        return json.dumps(entry, ensure_ascii=False)


def _keep_newlines(text: str) -> str:
    """A traceback keeps its lines (JSON escapes them); every other unsafe character is replaced."""
    return UNSAFE.sub(lambda m: m.group() if m.group() == "\n" else "\ufffd", text)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(RedactingJsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn installs its own handlers; route them through ours so access lines are redacted too
    # (an `?api_key=` query string would otherwise land in the access log in clear).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream", "faststream.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def probes_router(registry: CollectorRegistry, checks: dict[str, ReadinessCheck]) -> APIRouter:
    """`/healthz` (the process answers), `/readyz` (every check passes), `/metrics`."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        results = {name: await run_check(check) for name, check in checks.items()}
        ready = all(results.values())
        response.status_code = 200 if ready else 503
        return {"ready": ready, "checks": results}

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


async def run_check(check: ReadinessCheck) -> bool:
    try:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        return bool(result)
    except Exception:
        return False
