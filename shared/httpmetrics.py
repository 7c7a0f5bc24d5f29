"""HTTP request count and latency by route, method and status, for every service's HTTP port.

One ASGI middleware for all five apps (the four FastAPI apps and the validator's bare forward-auth
app). The request path pays only for a clock read and a few integer additions into a dict: a
`prometheus_client` Histogram with labels takes a lock and a label lookup per observation, about as
much as half a forward-auth check (services/validator/metrics.py). The collector turns the integers
into `cnx_http_requests_total` and `cnx_http_request_duration_seconds` when Prometheus scrapes.

Routes are templates (`/v2/keys/{key_id}`), never raw paths: a client choosing paths must not choose
the number of series. Anything no route matched is `unmatched`; a method outside the usual set is
`other`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from time import perf_counter

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.httpserver import Answer, Responder

# Seconds. Forward-auth answers in well under a millisecond; the management API writes to a database.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

RouteOf = Callable[[Scope], str]


def starlette_route(scope: Scope) -> str:
    """The template of the route Starlette matched (it records it in the scope), else `unmatched`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class HttpRequestMetrics(Collector):
    """The counts behind the two metric families: (route, method, status) -> per-bucket counts (the
    last slot counts requests slower than the largest bucket), and the sum of durations."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._buckets: dict[tuple[str, str, int], list[int]] = {}
        self._sums: dict[tuple[str, str, int], float] = {}
        if registry is not None:
            registry.register(self)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method if method in _METHODS else "other", status)
        counts = self._buckets.get(key)
        if counts is None:
            counts = self._buckets[key] = [0] * (len(BUCKETS) + 1)
            self._sums[key] = 0.0
        counts[bisect_left(BUCKETS, seconds)] += 1
        self._sums[key] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "cnx_http_requests",
            "HTTP requests answered, by route template, method and status",
            labels=["route", "method", "status"],
        )
        duration = HistogramMetricFamily(
            "cnx_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template, method and status",
            labels=["route", "method", "status"],
        )
        for key, counts in list(self._buckets.items()):
            labels = [key[0], key[1], str(key[2])]
            cumulative: list[tuple[str, float]] = []
            running = 0
            for bound, count in zip(BUCKETS, counts, strict=False):
                running += count
                cumulative.append((_bound(bound), running))
            running += counts[-1]
            cumulative.append(("+Inf", running))
            requests.add_metric(labels, running)
            duration.add_metric(labels, cumulative, self._sums[key])
        yield requests
        yield duration


def _bound(value: float) -> str:
    return repr(float(value))


class HttpMetricsMiddleware:
    """Counts every HTTP request into `metrics` once its response has started (500 if the app raised
    before answering). `route_of` names the route from the scope after the app has run."""

    def __init__(
        self, app: ASGIApp, *, metrics: HttpRequestMetrics, route_of: RouteOf = starlette_route
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.observe(self.route_of(scope), scope["method"], status, perf_counter() - started)


def counted_responder(respond: Responder, *, metrics: HttpRequestMetrics, route_of: RouteOf) -> Responder:
    """`respond` (shared/httpserver.Responder) counted into `metrics` as the middleware counts the ASGI
    app's requests, for the requests it answers itself."""

    def respond_counted(scope: dict[str, object]) -> Answer | None:
        started = perf_counter()
        answer = respond(scope)
        if answer is not None:
            metrics.observe(route_of(scope), scope["method"], answer[0], perf_counter() - started)  # type: ignore[arg-type]
        return answer

    return respond_counted
