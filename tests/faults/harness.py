"""What the fault cases share: the services as processes on one store backend, a mixed load through the
issuer API, the catalog-versus-validator audit, a reader of the event stream, and the figures report.

The audit is the point of every case. Three sources must agree once the system has settled:
- the load's own record: every 2xx it got (a create, a rotation, a revocation) must be in the catalog;
- the issuer's catalog (its store and `GET /v2/keys`) and its outbox (every event published);
- the validator's projection (its store, key by key and revision by revision) and its answers over
  HTTP forward-auth for every secret the load holds.
"Lost" counts what one side has and the next lacks, "phantom" what the validator has and the catalog
does not, "duplicated" an event id that reached the stream twice or a rotation that made two keys.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
from nats.js.api import DeliverPolicy
from sqlalchemy import text

from shared.db import create_engine
from shared.events import STREAM_EVENTS
from shared.natsserver import free_port
from tests.e2e.stack import ProcessStack, process_stack
from tests.support.databases import DatabaseFactory, run_sync

SERVICE_NAMES = ("issuer", "validator", "rotator", "notifier")
EXPECTED_CODE = {"active": "VALID", "rotating": "VALID", "revoked": "REVOKED", "expired": "EXPIRED"}

# Figures of every case, printed in the terminal summary (tests/faults/conftest.py) and as they come.
FIGURES: list[tuple[str, dict[str, object]]] = []


def report(case: str, **figures: object) -> None:
    FIGURES.append((case, dict(figures)))
    print(f"\n[faults] {case}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "condition") -> float:
    """Wait until `check` holds; return the seconds it took. Fails at the deadline: no sleep-to-sync."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not met within {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - start


@dataclass
class Stores:
    """The database URL of each service, so the audit reads the stores themselves."""

    urls: dict[str, str]

    def query(self, service: str, sql: str) -> list[tuple[Any, ...]]:
        url = self.urls[service]

        async def run() -> list[tuple[Any, ...]]:
            engine = create_engine(url, pool_size=1)
            try:
                async with engine.connect() as conn:
                    return [tuple(row) for row in (await conn.execute(text(sql))).all()]
            finally:
                await engine.dispose()

        return run_sync(run)


@contextmanager
def fault_stack(
    nats_url: str,
    data_dir: Path,
    backend: str,
    databases: DatabaseFactory,
    names: tuple[str, ...] = SERVICE_NAMES,
    **extra_env: str,
) -> Iterator[tuple[ProcessStack, Stores]]:
    """tests/e2e/stack.process_stack with every service's store on `backend`, no failed-auth throttle
    (the audit asks about many keys from one address) and an SMTP port nobody listens on unless given."""
    urls = {name: databases(name, backend) for name in SERVICE_NAMES}
    env = {
        **{f"CNX_{name.upper()}_DATABASE_URL": url for name, url in urls.items()},
        "CNX_FAILED_AUTH_PER_MINUTE": "0",
        # The load drives the management API with one admin key far past its own 600/min: what is
        # measured here is that nothing is lost when a service dies, not that key's rate limit.
        "CNX_MANAGEMENT_RATE_LIMIT": "0",
        "CNX_SMTP_HOST": "127.0.0.1",
        "CNX_SMTP_PORT": str(free_port()),
        **extra_env,
    }
    with process_stack(nats_url, data_dir, list(names), **env) as stack:
        yield stack, Stores(urls)


# --- where notices land -----------------------------------------------------------------------------


class WebhookSink:
    """A webhook receiver on a fixed free port, in a thread: records every POST, answers 204.
    stop() and start() again take it down and bring it back on the same URL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with sink._lock:
                    sink.bodies.append(orjson.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def count(self) -> int:
        with self._lock:
            return len(self.bodies)

    def notices(self) -> Counter[tuple[str, str]]:
        """(key id, type) -> how many webhooks arrived."""
        with self._lock:
            return Counter((b["key_id"], b["type"]) for b in self.bodies)


def mail_notices(mailbox: Any) -> Counter[tuple[str, str]]:
    """(key id, Message-ID) -> how many mails the SMTP server accepted. The notifier gives every notice
    its own Message-ID, the same on each attempt, so a count above 1 is a notice sent twice."""
    return Counter((str(m["X-CloudNexus-Key-Id"]), str(m["Message-ID"])) for m in list(mailbox.messages))


def mail_subjects(mailbox: Any, key_id: str) -> list[str]:
    return sorted(
        " ".join(str(m["Subject"]).split())
        for m in list(mailbox.messages)
        if m["X-CloudNexus-Key-Id"] == key_id
    )


def deliveries(stores: Stores) -> Counter[str]:
    """Notifier delivery rows by status."""
    return Counter(row[0] for row in stores.query("notifier", "SELECT status FROM notifier_deliveries"))


# --- the load -------------------------------------------------------------------------------------


@dataclass
class LoadRecord:
    secrets: dict[str, str] = field(default_factory=dict)  # key id -> secret, for acknowledged keys
    expected: dict[str, str] = field(default_factory=dict)  # key id -> status the 2xx answers imply
    uncertain: set[str] = field(default_factory=set)  # keys whose last change got no clear answer
    committed: Counter[str] = field(default_factory=Counter)  # op -> 2xx count
    failed: Counter[str] = field(default_factory=Counter)  # "op status" -> count
    unexpected: list[str] = field(default_factory=list)  # 5xx other than 503, or a 4xx on a sure key
    unanswered_creates: int = 0  # creates and rotations without an answer: may have committed
    slowest_s: float = 0.0

    @property
    def attempts(self) -> int:
        return sum(self.committed.values()) + sum(self.failed.values())


class MixedLoad:
    """Creates, rotations (1 h grace) and revocations through the issuer API from a thread, paced.

    Mix: creates until 10 keys are active, then 50% create, 25% rotate, 25% revoke; with `verify_share`
    that share of calls is a `POST /v2/keys/verify` of a known key instead (it goes through NATS).
    """

    def __init__(
        self,
        issuer_url: str,
        admin_key: str,
        *,
        rate: float = 40.0,
        timeout: float = 5.0,
        seed: int = 7,
        create_body: Mapping[str, object] | None = None,
        verify_share: float = 0.0,
    ) -> None:
        self.verify_share = verify_share
        self.url = issuer_url
        self.headers = {"Authorization": f"Bearer {admin_key}"}
        self.interval = 1.0 / rate
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.create_body = dict(create_body or {})
        self.record = LoadRecord()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mixed-load", daemon=True)
        self._lock = threading.Lock()

    @property
    def attempts(self) -> int:
        with self._lock:
            return self.record.attempts

    def start(self) -> MixedLoad:
        self._thread.start()
        return self

    def stop(self) -> LoadRecord:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the load did not stop"
        return self.record

    def wait_attempts(self, more: int, timeout: float = 30.0) -> None:
        target = self.attempts + more
        poll(lambda: self.attempts >= target, timeout, what=f"{more} more load operations")

    def _active(self) -> list[str]:
        r = self.record
        return [k for k, s in r.expected.items() if s == "active" and k not in r.uncertain]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                active = self._active()
                if active and self.rng.random() < self.verify_share:
                    self._verify(client, self.rng.choice(active))
                    self._stop.wait(self.interval)
                    continue
                roll = self.rng.random()
                if len(active) < 10 or roll < 0.5:
                    self._create(client, n)
                elif roll < 0.75:
                    self._rotate(client, self.rng.choice(active))
                else:
                    self._revoke(client, self.rng.choice(active))
                self._stop.wait(self.interval)  # pacing of the load, not synchronisation

    def _call(
        self, client: httpx.Client, op: str, method: str, path: str, **kw: Any
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = client.request(method, path, **kw)
        except httpx.TransportError as exc:
            with self._lock:
                self.record.failed[f"{op} {type(exc).__name__}"] += 1
            return None
        finally:
            self.record.slowest_s = max(self.record.slowest_s, time.monotonic() - started)
        if response.is_success:
            with self._lock:
                self.record.committed[op] += 1
            return response
        with self._lock:
            self.record.failed[f"{op} {response.status_code}"] += 1
            if response.status_code >= 500 and response.status_code != 503:
                self.record.unexpected.append(f"{op} {response.status_code} {response.text[:200]}")
        return response

    def _create(self, client: httpx.Client, n: int) -> None:
        body = {"name": f"load {n}", "environment": "prod", "scopes": ["compute:read"], **self.create_body}
        response = self._call(client, "create", "POST", "/v2/keys", json=body)
        if response is None or response.status_code == 503:
            self.record.unanswered_creates += 1
        elif response.is_success:
            data = response.json()
            self.record.secrets[data["id"]] = data["key"]
            self.record.expected[data["id"]] = "active"

    def _rotate(self, client: httpx.Client, key_id: str) -> None:
        response = self._call(
            client, "rotate", "POST", "/v2/keys/rotate", json={"key_id": key_id, "grace_period_hours": 1}
        )
        if response is None or response.status_code == 503:
            self.record.uncertain.add(key_id)
            self.record.unanswered_creates += 1
        elif response.is_success:
            data = response.json()
            self.record.secrets[data["id"]] = data["key"]
            self.record.expected[data["id"]] = "active"
            self.record.expected[key_id] = "rotating"
        else:
            self.record.unexpected.append(f"rotate {key_id}: {response.status_code} {response.text[:200]}")

    def _verify(self, client: httpx.Client, key_id: str) -> None:
        self._call(client, "verify", "POST", "/v2/keys/verify", json={"key": self.record.secrets[key_id]})

    def _revoke(self, client: httpx.Client, key_id: str) -> None:
        response = self._call(client, "revoke", "POST", f"/v2/keys/{key_id}/revoke")
        if response is None or response.status_code == 503:
            self.record.uncertain.add(key_id)
        elif response.is_success:
            self.record.expected[key_id] = "revoked"
        else:
            self.record.unexpected.append(f"revoke {key_id}: {response.status_code} {response.text[:200]}")


# --- the event stream -----------------------------------------------------------------------------


@dataclass
class StreamMessage:
    seq: int
    subject: str
    msg_id: str
    data: bytes

    @property
    def body(self) -> dict[str, Any]:
        return orjson.loads(self.data)  # type: ignore[no-any-return]


def read_stream(
    nats_url: str, stream: str = STREAM_EVENTS, subject: str = "keys.events.>"
) -> list[StreamMessage]:
    """Every message of the stream, through an ordered consumer of our own (no durable touched)."""

    async def run() -> list[StreamMessage]:
        nc = await nats.connect(nats_url.split(","), connect_timeout=5)
        try:
            js = nc.jetstream()
            last = (await js.stream_info(stream)).state.last_seq
            out: list[StreamMessage] = []
            if last == 0:
                return out
            sub = await js.subscribe(
                subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
            while True:
                msg = await sub.next_msg(timeout=10)
                seq = msg.metadata.sequence.stream
                msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                out.append(StreamMessage(seq, msg.subject, msg_id, msg.data))
                if seq >= last:
                    break
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return run_sync(run)


def consumer_states(nats_url: str, consumers: list[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """(stream, durable) -> (pending, unacknowledged)."""

    async def run() -> dict[str, tuple[int, int]]:
        nc = await nats.connect(nats_url.split(","), connect_timeout=5)
        try:
            js = nc.jetstream()
            out: dict[str, tuple[int, int]] = {}
            for stream, durable in consumers:
                info = await js.consumer_info(stream, durable)
                out[durable] = (info.num_pending, info.num_ack_pending)
            return out
        finally:
            await nc.close()

    return run_sync(run)


def consumers_idle(
    nats_url: str, consumers: list[tuple[str, str]], delivered_only: frozenset[str] = frozenset()
) -> bool:
    """Each (stream, durable) has nothing pending and nothing unacknowledged; for `delivered_only`
    durables, nothing pending (their unacknowledged messages are reported, not waited for)."""
    states = consumer_states(nats_url, consumers)
    return all(
        pending == 0 and (unacked == 0 or durable in delivered_only)
        for durable, (pending, unacked) in states.items()
    )


def wait_idle(
    nats_url: str,
    consumers: list[tuple[str, str]],
    timeout: float,
    delivered_only: frozenset[str] = frozenset(),
) -> float:
    """Poll until every consumer is idle; on the deadline, fail naming what each still holds."""
    try:
        return poll(
            lambda: consumers_idle(nats_url, consumers, delivered_only),
            timeout,
            interval=0.2,
            what="consumers idle",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {consumer_detail(nats_url, consumers)}") from None


def consumer_detail(nats_url: str, consumers: list[tuple[str, str]]) -> str:
    """For a failure message: each consumer's counters and the subjects of its unacknowledged messages."""

    async def run() -> str:
        nc = await nats.connect(nats_url.split(","), connect_timeout=5)
        try:
            js = nc.jetstream()
            lines = []
            for stream, durable in consumers:
                info = await js.consumer_info(stream, durable)
                line = (
                    f"{durable}: pending={info.num_pending} unacked={info.num_ack_pending} "
                    f"redelivered={info.num_redelivered} delivered={info.delivered} "
                    f"ack_floor={info.ack_floor}"
                )
                if info.num_ack_pending and info.ack_floor and info.ack_floor.stream_seq is not None:
                    try:
                        first = await js.get_msg(stream, info.ack_floor.stream_seq + 1)
                        line += f" first unacked: {first.subject} {first.data[:300]!r}"
                    except Exception as exc:  # diagnostics only
                        line += f" ({exc!r})"
                lines.append(line)
            return "\n".join(lines)
        finally:
            await nc.close()

    return run_sync(run)


# --- the audit ------------------------------------------------------------------------------------


def catalog_via_api(issuer_url: str, admin_key: str) -> dict[str, str]:
    """key id -> status, every page of GET /v2/keys."""
    out: dict[str, str] = {}
    cursor: str | None = None
    with httpx.Client(base_url=issuer_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10) as c:
        while True:
            params: dict[str, object] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            response = c.get("/v2/keys", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            out.update({k["id"]: k["status"] for k in page["data"]})
            cursor = page["next_cursor"]
            if not cursor:
                return out


def issuer_rows(stores: Stores) -> dict[str, tuple[str, int]]:
    return {k: (s, r) for k, s, r in stores.query("issuer", "SELECT id, status, revision FROM issuer_keys")}


def validator_rows(stores: Stores, service: str = "validator") -> dict[str, tuple[str, int]]:
    rows = stores.query(service, "SELECT key_id, revision, view FROM validator_keys")
    return {k: (str(orjson.loads(v)["status"]), int(r)) for k, r, v in rows}


def outbox_pending(stores: Stores) -> int:
    return int(stores.query("issuer", "SELECT count(*) FROM issuer_outbox WHERE published_at IS NULL")[0][0])


def validator_code(client: httpx.Client, secret: str) -> str:
    # `scope` on the auth URL: forward-auth refuses (NO_ROUTE) what nothing the operator set covers.
    response = client.get("/v2/auth/verify?scope=compute:read", headers={"Authorization": f"Bearer {secret}"})
    return response.headers.get("x-cnx-code", f"HTTP {response.status_code}")


@dataclass
class Audit:
    keys: int
    events_published: int
    events_in_stream: int
    events_applied: int
    lost: int
    phantom: int
    duplicated: int
    converge_s: float
    problems: list[str]

    def figures(self) -> dict[str, object]:
        return {
            "keys": self.keys,
            "events_published": self.events_published,
            "events_in_stream": self.events_in_stream,
            "events_applied": self.events_applied,
            "lost": self.lost,
            "phantom": self.phantom,
            "duplicated": self.duplicated,
            "converge_s": round(self.converge_s, 2),
        }


def audit(
    stack: ProcessStack,
    stores: Stores,
    nats_url: str,
    record: LoadRecord | None,
    *,
    timeout: float = 60.0,
    validators: tuple[str, ...] = ("validator",),
) -> Audit:
    """Wait until the outbox is empty and every validator store equals the catalog, then check it all."""
    started = time.monotonic()

    def settled() -> bool:
        if outbox_pending(stores):
            return False
        catalog = issuer_rows(stores)
        return all(validator_rows(stores, v) == catalog for v in validators)

    try:
        poll(settled, timeout, interval=0.2, what="validator store equal to the catalog")
    except AssertionError:
        pass  # counted below, with the detail of what differs
    converge_s = time.monotonic() - started
    problems: list[str] = []
    catalog = issuer_rows(stores)
    lost = phantom = duplicated = 0
    for name in validators:
        view = validator_rows(stores, name)
        for key_id, row in catalog.items():
            if view.get(key_id) != row:
                lost += 1
                problems.append(f"{name}: {key_id} catalog {row} validator {view.get(key_id)}")
        for key_id in view.keys() - catalog.keys():
            phantom += 1
            problems.append(f"{name}: phantom {key_id}")

    # The API's view, and the validator's answer for every secret the load holds (memory, not store).
    api = catalog_via_api(stack.url("issuer"), stack.admin_key)
    if set(api) != set(catalog):
        problems.append(f"GET /v2/keys lists {len(api)} keys, the store {len(catalog)}")
    if record is not None:
        for name in validators:
            with httpx.Client(base_url=stack.url(name), timeout=5) as client:
                for key_id, secret in record.secrets.items():
                    want = EXPECTED_CODE[api.get(key_id, "missing")] if key_id in api else "in catalog"
                    got = validator_code(client, secret)
                    if got != want:
                        lost += 1
                        problems.append(f"{name}: {key_id} ({api.get(key_id)}) answered {got}, want {want}")
        # Every 2xx is reflected in the catalog.
        for key_id, status in record.expected.items():
            if key_id in record.uncertain:
                continue
            if api.get(key_id) != status:
                lost += 1
                problems.append(f"acknowledged {status} for {key_id}, catalog says {api.get(key_id)}")
        # Nothing doubled: keys the load did not acknowledge are at most its unanswered creates.
        unacknowledged = len(set(catalog) - set(record.secrets)) - 1  # the bootstrap admin key
        if unacknowledged > record.unanswered_creates:
            duplicated += unacknowledged - record.unanswered_creates
            problems.append(f"{unacknowledged} unacknowledged keys > {record.unanswered_creates} unanswered")
    successors = stores.query(
        "issuer",
        "SELECT rotated_from, count(*) FROM issuer_keys WHERE rotated_from IS NOT NULL "
        "GROUP BY rotated_from HAVING count(*) > 1",
    )
    duplicated += len(successors)
    problems += [f"{old} was rotated into {n} keys" for old, n in successors]

    # The outbox against the stream: every event out once.
    outbox = [row[0] for row in stores.query("issuer", "SELECT event_id FROM issuer_outbox")]
    messages = read_stream(nats_url)
    ids = Counter(m.msg_id for m in messages)
    doubled = [i for i, n in ids.items() if n > 1]
    duplicated += len(doubled)
    problems += [f"event {i} is in the stream {ids[i]} times" for i in doubled[:5]]
    missing = [e for e in outbox if e not in ids]
    lost += len(missing)
    problems += [f"outbox event {e} never reached the stream" for e in missing[:5]]
    last_applied = min(
        int(stores.query(v, "SELECT coalesce(max(last_seq), 0) FROM validator_cursor")[0][0])
        for v in validators
    )
    key_events = [m for m in messages if m.subject != "keys.events.key.used"]
    return Audit(
        keys=len(catalog),
        events_published=len(outbox),
        events_in_stream=len(messages),
        events_applied=sum(1 for m in key_events if m.seq <= last_applied),
        lost=lost,
        phantom=phantom,
        duplicated=duplicated,
        converge_s=converge_s,
        problems=problems,
    )


def load_figures(record: LoadRecord) -> dict[str, object]:
    return {
        "ops_committed": sum(record.committed.values()),
        "committed": dict(record.committed),
        "ops_failed": sum(record.failed.values()),
        "failed": dict(record.failed),
        "unanswered_creates": record.unanswered_creates,
        "slowest_call_s": round(record.slowest_s, 2),
    }


def stream_subjects(nats_url: str, stream: str, subjects: str) -> dict[str, int]:
    async def run() -> dict[str, int]:
        nc = await nats.connect(nats_url.split(","), connect_timeout=5)
        try:
            info = await nc.jetstream().stream_info(stream, subjects_filter=subjects)
            return dict(info.state.subjects or {})
        finally:
            await nc.close()

    return run_sync(run)
