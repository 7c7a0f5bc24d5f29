"""The HTTP server every port runs (issuer, validator, rotator and notifier probes, the demo API): uvicorn
with httptools, bounded against hostile clients, and a drain step in front of its shutdown.

What stock uvicorn leaves open, and what this module closes (HttpLimits, from the CNX_HTTP_* settings):
- a request head of any size: httptools buffers a header without limit (a 50 MB header grew the
  validator by 60 MB and stalled its other requests for seconds). Here a head over `max_header_bytes`
  is answered 431 and the connection closed, after at most one socket read past the limit.
- a connection that never sends a whole head (silent, or trickling header lines) was held forever:
  uvicorn arms no timer before the first request, and its keep-alive timer is cancelled by any byte.
  Here every head must be complete `header_timeout` after the connection opened or its first byte
  arrived; idle keep-alive connections close after `keepalive_timeout` (found by the same sweep, not
  uvicorn's timer armed and cancelled for every request).
- connections without number: uvicorn's `limit_concurrency` only answers 503 once a request head has
  arrived, keeps the connection open afterwards, and counts running tasks with connections. Here a
  connection beyond `max_connections` open at once answers its first request 503 and is closed.

The protocol is pinned to httptools (the faster parser, and what `auto` picked anyway): h11 has a head
limit of its own (h11_max_incomplete_event_size) but none of the rest, and one bounded protocol is
easier to keep true than two. The subclass leans on uvicorn's HttpToolsProtocol internals (see the pin
in pyproject.toml); tests/integration/test_http_bounds.py fails if a new uvicorn breaks them.

Refusals (431, 503) are JSON errors like the apps' own, written with `Connection: close`; the server
then stops sending (FIN) but keeps reading and dropping for `LINGER_S`, so a client still writing its
oversized head reads the answer instead of a connection reset (nginx's lingering close).

A port may also take a Responder (the validator's forward-auth): a request with no body whose answer
needs no waiting is answered from the parser's callback, one write, no ASGI cycle or task (about a
third more forward-auth answers per second); tests/integration/test_http_responder.py holds it to the
same HTTP as the ASGI path.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HEADER_VALUE_RE, STATUS_LINE, HttpToolsProtocol

from shared.settings import Settings

log = logging.getLogger(__name__)

# How long a refused connection is read and dropped before it is closed.
LINGER_S = 2.0
# uvicorn's main loop ticks every 0.1 s; the timeouts are checked every SWEEP_TICKS ticks.
SWEEP_TICKS = 2
# What a response's writes may hold back before they go to the socket at once (see _CycleTransport).
CORK_BYTES = 64 * 1024


# An answer made without ASGI (see BoundedHttpProtocol): status, headers (lower-case names the responder
# owns; values are checked here), body. Content-Length, Date and Connection are the server's.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
# Answers a request from its scope (as uvicorn builds it: method, path, raw_path, query_string, headers,
# client) at once, or returns None to leave it to the ASGI app. Synchronous: it runs in the parser's
# callback, so it must not block, and whatever needs to wait belongs to the ASGI path.
Responder = Callable[[dict[str, Any]], Answer | None]
_BODY_HEADERS = (b"content-length", b"transfer-encoding", b"expect")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            header_timeout=settings.http_header_timeout.total_seconds(),
            keepalive_timeout=settings.http_keepalive_timeout.total_seconds(),
            max_connections=settings.http_max_connections,
        )


def _refusal(status: int, code: str, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


_on_headers_complete = HttpToolsProtocol.on_headers_complete


_FAILED: Answer = (
    500,
    [(b"content-type", b"application/json")],
    orjson.dumps({"error": {"code": "internal", "message": "internal error"}}),
)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing the rest of what was read."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit, a head deadline and a connection cap.

    The head is counted in raw bytes while it arrives (so an oversized one is refused before it is
    buffered whole) and, when it completes in a read that could hold more than the limit, measured
    exactly from the parsed request line and headers (a read may also carry the body).
    """

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits: HttpLimits = getattr(config, "limits", None) or HttpLimits()
        self._in_head = True  # the next bytes read belong to a request head
        self._head_bytes = 0  # bytes of the current head read in earlier reads
        self._read_len = 0  # bytes of the read being parsed
        self._heads = 0  # heads completed on this connection
        # When the current head began (loop time), None between requests (uvicorn's keep-alive timer
        # governs idle connections) and once it is complete.
        self.head_since: float | None = None
        # Since when the connection has waited for its next request (loop time), None while one is in
        # progress: the sweep closes it after `keepalive_timeout`, instead of a timer armed and
        # cancelled for every request (uvicorn's).
        self.idle_since: float | None = None
        self.linger_until: float | None = None  # when a closing connection stops reading and closes
        self._dropping = False  # refused or closing: what is read is dropped, not parsed
        self._pending_refusal: bytes | None = None  # to write once the answer in progress is complete
        self._over_cap = False
        self._respond: Responder | None = getattr(config, "respond", None)
        self._answer: Answer | None = None  # made at the head's end, written at the message's end

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        self._cycle_transport = _CycleTransport(transport, self._close_after_response, self.loop)
        self._over_cap = len(self.connections) > self.limits.max_connections
        self.head_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        if self._dropping:
            return  # refused: read and drop until the client closes or the linger ends
        self.idle_since = None
        in_head = self._in_head
        if in_head and self.head_since is None:
            self.head_since = self.loop.time()
        heads = self._heads
        self._read_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._dropping:
                return  # a callback refused the request and answered it
            self._cycle_transport.flush()  # an answer still held goes out before the 400
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            # No WebSockets are served (ws="none"): uvicorn's own answer to an upgrade.
            self._unsupported_upgrade_warning()
            return
        if self._in_head and not self._dropping:
            if in_head and self._heads == heads:
                self._head_bytes += len(data)
            else:
                # A new head began inside this read, after a whole request: counted from the next
                # read on (at most one read uncounted; the exact check when it completes covers it).
                self._head_bytes = 0
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse_head()

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._in_head = False
        self.head_since = None
        limit = self.limits.max_header_bytes
        if self._head_bytes + self._read_len > limit and self._head_size() > limit:
            self._refuse_head()
            raise _Refused
        self._head_bytes = 0
        if self._over_cap:
            self._refuse(
                _refusal(
                    503,
                    "unavailable",
                    "too many connections to this server; retry shortly",
                    b"retry-after: 1\r\n",
                )
            )
            raise _Refused
        if self._respond is not None and self._answer_now():
            return
        _on_headers_complete(self)
        if self.cycle is not None:
            self.cycle.transport = self._cycle_transport  # type: ignore[assignment]  # a Transport by delegation

    def _answer_now(self) -> bool:
        """The responder's answer, when it gives one: no body to read, nothing answered before it still
        in progress. Then no ASGI cycle, task or send is made for the request; its answer is written at
        the message's end, in one write."""
        cycle = self.cycle
        if (cycle is not None and not cycle.response_complete) or self.pipeline:
            return False  # pipelined behind an answer still being made: answered in order, by ASGI
        for name, _ in self.headers:
            if name in _BODY_HEADERS:
                return False
        method = self.parser.get_method()
        if method == b"HEAD" or self.parser.should_upgrade():
            return False
        # The scope as uvicorn's on_headers_complete completes it.
        scope = self.scope
        scope["method"] = method.decode("ascii")
        http_version = self.parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed.query or b""
        assert self._respond is not None
        try:
            answer = self._respond(scope)  # type: ignore[arg-type]  # uvicorn's HTTPScope is a dict
        except Exception:
            self.logger.exception("the responder failed")
            answer = _FAILED
        if answer is None:
            return False
        self._answer = answer
        return True

    def _write_answer(self, answer: Answer) -> None:
        status, headers, body = answer
        keep_alive = self.parser.should_keep_alive()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        if HEADER_VALUE_RE.search(b"".join(value for _, value in headers)):
            # A value that would split the head (CR, LF): nothing of it goes out.
            self.logger.error("the responder's answer has an invalid header value")
            content = [STATUS_LINE[500]]
            body = _FAILED[2]
            keep_alive = False
        content.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        self.transport.write(b"".join(content))
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
            return
        self.idle_since = self.loop.time()
        if self.flow.write_paused:
            # A client that sends and does not read: nothing more is read (and answered) until it has
            # taken what is written (resume_writing), as an ASGI cycle waits in its send.
            self.flow.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        cycle = self.cycle
        if not self._dropping and not self.pipeline and (cycle is None or cycle.response_complete):
            self.flow.resume_reading()  # reading paused by _write_answer; an ASGI cycle resumes its own

    def on_message_complete(self) -> None:
        self._in_head = True
        answer = self._answer
        if answer is not None:
            self._answer = None
            self._write_answer(answer)
            return
        # uvicorn's own, inlined: this runs once per request.
        cycle = self.cycle
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return
        cycle.more_body = False
        cycle.message_event.set()

    def on_response_complete(self) -> None:
        self._cycle_transport.flush()
        if self._pending_refusal is not None:
            # The answer to an earlier pipelined request is out: now the refusal of the next.
            refusal, self._pending_refusal = self._pending_refusal, None
            self.server_state.total_requests += 1
            if not self.transport.is_closing():
                self.transport.write(refusal)
                self._linger()
            return
        self.server_state.total_requests += 1
        if self._dropping or self.transport.is_closing():
            return  # closing: not idle, no pipelined request started
        # uvicorn's own, with the keep-alive timer replaced by `idle_since` (the sweep closes idle ones).
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_since = self.loop.time()

    def _close_after_response(self) -> None:
        """How a request's cycle closes the connection (`Connection: close`, an app error)."""
        self._cycle_transport.flush()
        if self._in_head or self.transport.is_closing():
            self.transport.close()
            return
        # The request's body is still arriving (the app answered without reading it all: a 413).
        # Closing a socket with unread data resets the connection, and the client, still writing,
        # would never read the answer: linger instead.
        self._linger()

    def _head_size(self) -> int:
        # The request line and the header lines as sent, to within a few bytes of whitespace.
        method = self.parser.get_method()
        return len(method) + len(self.url) + 11 + sum(len(n) + len(v) + 4 for n, v in self.headers) + 2

    def _refuse_head(self) -> None:
        self._refuse(
            _refusal(
                431,
                "request_header_fields_too_large",
                f"the request head is over {self.limits.max_header_bytes} bytes",
            )
        )

    def _refuse(self, response: bytes) -> None:
        self._dropping = True
        self.head_since = None
        if self.cycle is not None and not self.cycle.response_complete:
            # The answer to an earlier pipelined request is still being made: ours goes after it.
            self._pending_refusal = response
            return
        self.transport.write(response)
        self._linger()

    def _linger(self) -> None:
        """Stop sending (FIN after what is written), read and drop for LINGER_S, then close."""
        self._cycle_transport.flush()
        self.idle_since = None
        self.head_since = None
        self._dropping = True
        self.linger_until = self.loop.time() + LINGER_S
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def expire(self, now: float) -> None:
        """Close the connection if its head is overdue, it has been idle too long or its linger is over
        (called by the sweep)."""
        if self.transport.is_closing():
            return
        if self.linger_until is not None:
            if now >= self.linger_until:
                self.transport.close()
        elif self.head_since is not None:
            if now - self.head_since >= self.limits.header_timeout:
                self.transport.close()
        elif self.idle_since is not None and now - self.idle_since >= self.limits.keepalive_timeout:
            self.transport.close()


class _CycleTransport:
    """The connection as a request's cycle sees it: its writes are held and go to the socket as one
    when the response is complete, on the next turn of the loop, or past CORK_BYTES, whichever is first;
    closing goes through the protocol, which lingers when the request's body is still arriving.

    uvicorn writes a response's head and its body apart: two sends, and on loopback or a busy proxy
    two wake-ups of the reader, which cost as much as the rest of a small answer. One write per response
    (as nginx does) is what the forward-auth figure of `make bench` measures."""

    def __init__(
        self, transport: asyncio.Transport, close: Callable[[], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._transport = transport
        self._call_soon = loop.call_soon
        self._held: list[bytes] = []
        self._held_bytes = 0
        self.is_closing = transport.is_closing
        self.close = close

    def write(self, data: bytes) -> None:
        held = self._held
        if not held:
            # A streaming response (or a 100 Continue) must not wait for what comes next.
            self._call_soon(self.flush)
        held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > CORK_BYTES:
            self.flush()

    def flush(self) -> None:
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._held_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedConfig(uvicorn.Config):
    """uvicorn's Config with our protocol pinned and the limits it reads."""

    def __init__(
        self, app: Any, *, limits: HttpLimits, respond: Responder | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            app,
            http=BoundedHttpProtocol,
            ws="none",
            timeout_keep_alive=limits.keepalive_timeout,  # type: ignore[arg-type]  # uvicorn says int; float works
            **kwargs,
        )
        self.limits = limits
        self.respond = respond


class GracefulServer(uvicorn.Server):
    """uvicorn with a drain step in front of its shutdown, and the sweep of the bounded connections.

    On the first SIGTERM/SIGINT readiness turns false (`on_drain`) while requests are still served for
    `drain_delay` seconds, so load balancers and Kubernetes endpoints stop sending new ones; then uvicorn
    stops accepting, lets in-flight requests finish (up to timeout_graceful_shutdown) and runs the
    lifespan shutdown, where each service drains its consumers and flushes what it holds. A second
    signal skips what is left of the delay.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_drain: Callable[[], None] | None = None,
        drain_delay: float = 0.0,
    ) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._drain_delay = drain_delay
        self.draining = False

    async def on_tick(self, counter: int) -> bool:
        if counter % SWEEP_TICKS == 0:
            # One sweep over the connections instead of a timer per request: the head deadline costs
            # the hot path one clock read per request.
            now = asyncio.get_running_loop().time()
            for connection in list(self.server_state.connections):
                if isinstance(connection, BoundedHttpProtocol):
                    connection.expire(now)
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self._drain_delay <= 0:
            if not self.draining:
                self._mark_draining()
            super().handle_exit(sig, frame)
            return
        self._mark_draining()
        # We are in a signal handler: hand the timer to the loop the thread-safe way.
        loop = asyncio.get_running_loop()
        loop.call_soon_threadsafe(loop.call_later, self._drain_delay, super().handle_exit, sig, frame)

    def _mark_draining(self) -> None:
        self.draining = True
        log.info("shutting down: readiness is now false")
        if self._on_drain is not None:
            try:
                self._on_drain()
            except Exception:
                log.exception("on_drain failed")


def mark_not_ready(app: object) -> Callable[[], None] | None:
    """The default drain step: a FastAPI app's `state.ready` (read by its /readyz) turns false."""
    state = getattr(app, "state", None)
    if state is None:
        return None
    return lambda: setattr(state, "ready", False)


def server_config(
    app: object, limits: HttpLimits, *, host: str, port: int, respond: Responder | None = None
) -> BoundedConfig:
    """The uvicorn configuration of every port (the benchmark's forward-auth server uses it too).
    `respond` answers what it can without the ASGI app (the validator's forward-auth)."""
    return BoundedConfig(
        app,
        limits=limits,
        respond=respond,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default (FORWARDED_ALLOW_IPS): a local
        # client could then claim any address and pass a key's IP allowlist. Which proxies are believed
        # is CNX_TRUSTED_PROXIES' call alone (the validator's forward-auth reads the header itself).
        proxy_headers=False,
    )


async def serve_http(
    app: object,
    settings: Settings,
    port: int,
    *,
    on_drain: Callable[[], None] | None = None,
    respond: Responder | None = None,
) -> None:
    """Run uvicorn until SIGTERM/SIGINT: readiness false first, then (after CNX_SHUTDOWN_DELAY) stop
    accepting, finish in-flight requests, run the lifespan shutdown."""
    limits = HttpLimits.from_settings(settings)
    server = GracefulServer(
        server_config(app, limits, host=settings.host, port=port, respond=respond),
        on_drain=on_drain or mark_not_ready(app),
        drain_delay=settings.shutdown_delay.total_seconds(),
    )
    loop = asyncio.get_running_loop()
    # uvicorn takes the signals over while it serves (GracefulServer.handle_exit) and raises them again
    # when it returns; these no-op handlers catch that re-raise, so the caller's own clean-up (after
    # serve_http) still runs. They must not stop the server themselves: the loop sees every signal
    # too (its wakeup fd), and acting on it here would skip the drain delay.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: None)
    await server.serve()
