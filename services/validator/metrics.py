"""The validator's Prometheus metrics that the hot path feeds: plain counters read at scrape time.

A `prometheus_client.Counter` with labels costs a lock and a label lookup per increment, about as much
as half a validation; the request handlers add to dicts of ints instead (cluster.Cluster.answers), and
this collector reports them when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Scope

from shared.httpmetrics import UNMATCHED

from .openapi import VERIFY_PATH

# The event lag histogram's buckets (seconds): a revocation should be enforced in well under a second.
EVENT_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class AnswerCounts(Collector):
    """`cnx_validator_answers_total{transport, code}` from {transport: {code: count}}."""

    def __init__(self, answers: Mapping[str, Mapping[str, int]]) -> None:
        self.answers = answers

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "cnx_validator_answers",
            "Validation answers this replica decided, by code and by how the request reached it "
            "(nats, http, or peer: passed on by the replica it reached, to the key's owner)",
            labels=["transport", "code"],
        )
        for transport, counts in self.answers.items():
            for code, count in list(counts.items()):
                family.add_metric([transport, str(code)], count)
        yield family


# The forward-auth app's own routes (http.py): every other path is one `unmatched` series.
_ROUTES = {path: path for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", VERIFY_PATH)}


def http_route(scope: Scope) -> str:
    """The route label of a request to the forward-auth port (a path under the verify URL is it)."""
    path: str = scope["path"]
    route = _ROUTES.get(path)
    if route is not None:
        return route
    return VERIFY_PATH if path.startswith(VERIFY_PATH + "/") else UNMATCHED
