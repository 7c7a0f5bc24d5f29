"""Logs (JSON lines, or text for the local stack) with secrets redacted, a Prometheus registry per app
with process and HTTP request metrics, and the probe endpoints."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared import correlation
from shared.httpmetrics import HttpMetricsMiddleware, HttpRequestMetrics
from shared.outbox import OutboxRelay
from shared.text import UNSAFE, one_line
from shared.tokens import redact

ReadinessCheck = Callable[[], Awaitable[bool] | bool]
LogFormat = Literal["json", "text"]


class RedactingJsonFormatter(logging.Formatter):
    """One JSON object per line (time, level, service, logger, message, correlation_id when there is
    one, exc); any token in the message or exception text is cut to its prefix."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            # One line of text whatever was logged: JSON escapes C0 controls, but not DEL, C1 controls
            # (an 8-bit CSI drives a terminal) or bidi overrides; a key name or reason carries them.
            "message": one_line(redact(record.getMessage())),
        }
        correlation_id = correlation.current()
        if correlation_id is not None:
            entry["correlation_id"] = correlation_id
        if record.exc_info:
            entry["exc"] = _keep_newlines(redact(self.formatException(record.exc_info)))
        return json.dumps(entry, ensure_ascii=False)


class RedactingTextFormatter(logging.Formatter):
    """`CNX_LOG_FORMAT=text`, for people reading a terminal (the local stack): one line per record,
    redacted like the JSON form, the correlation id in brackets when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        correlation_id = correlation.current()
        tag = f" [{correlation_id}]" if correlation_id else ""
        line = (
            f"{when} {record.levelname:<7} {self.service} {record.name}{tag}: "
            f"{one_line(redact(record.getMessage()))}"
        )
        if record.exc_info:
            line += "\n" + _keep_newlines(redact(self.formatException(record.exc_info)))
        return line


def _keep_newlines(text: str) -> str:
    """A traceback keeps its lines (JSON escapes them); every other unsafe character is replaced."""
    return UNSAFE.sub(lambda m: m.group() if m.group() == "\n" else "\ufffd", text)


def configure_logging(service: str, level: str = "INFO", log_format: LogFormat = "json") -> None:
    handler = logging.StreamHandler(sys.stdout)
    formatter = RedactingTextFormatter(service) if log_format == "text" else RedactingJsonFormatter(service)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn installs its own handlers; route them through ours so access lines are redacted too
    # (an `?api_key=` query string would otherwise land in the access log in clear).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream", "faststream.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def register_process_metrics(registry: CollectorRegistry) -> None:
    """`process_*` (CPU, resident memory, open file descriptors, start time), `python_info` and
    `python_gc_*` in this app's own registry (the default registry has them, but apps keep their own)."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)


def instrument(app: FastAPI, registry: CollectorRegistry) -> None:
    """What every FastAPI app of ours exports and carries: process metrics, HTTP request count and
    latency by route and status, and the correlation id of each request (shared/correlation.py).
    Call it after the app's other middleware: the last added is the outermost, so the latency counted
    includes theirs."""
    register_process_metrics(registry)
    app.add_middleware(HttpMetricsMiddleware, metrics=HttpRequestMetrics(registry))
    app.add_middleware(correlation.CorrelationMiddleware)


# The label values of a LabelledCounts: a tuple of str, one per label.
Labels = TypeVar("Labels", bound=tuple[str, ...])


class LabelledCounts(Collector, Generic[Labels]):
    """A counter family read at scrape time from counts the service keeps as plain ints:
    `counts()` maps label values (a tuple, in `labels` order) to a count. `every` lists label values
    exported as 0 before anything happened, so a rate() over them starts from a known zero."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        counts: Callable[[], Mapping[Labels, int]],
        *,
        every: Iterable[Labels] = (),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.counts = counts
        self.every = list(every)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        values = {key: 0 for key in self.every}
        values.update(self.counts())
        for key, count in values.items():
            family.add_metric([str(part) for part in key], count)
        yield family


class OutboxMetrics(Collector):
    """`cnx_<service>_outbox_published_total` (a counter), `..._outbox_backlog` (rows the relay's latest
    read found waiting, at most a batch) and `..._outbox_failing_seconds` (how long its publishes have
    been failing: JetStream away or refusing; 0 while it publishes), read from the relay at scrape."""

    def __init__(self, service: str, relay: OutboxRelay) -> None:
        self.prefix = f"cnx_{service}_outbox"
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        relay = self.relay
        yield CounterMetricFamily(
            f"{self.prefix}_published",
            "Events the outbox relay published since start",
            value=relay.published_total,
        )
        yield GaugeMetricFamily(
            f"{self.prefix}_backlog",
            "Committed events the outbox relay found waiting at its latest read (at most one batch)",
            value=relay.backlog,
        )
        since = relay.failing_since
        yield GaugeMetricFamily(
            f"{self.prefix}_failing_seconds",
            "Seconds since the outbox relay's publishes started failing; 0 while it publishes",
            value=0.0 if since is None else time.monotonic() - since,
        )


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
