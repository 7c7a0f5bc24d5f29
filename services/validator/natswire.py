"""A lean NATS client connection that speaks the client protocol itself, for the validator's hot path.

nats-py spends about 7 µs per request on the way in and out (parsing into Msg objects, a subscription
queue and a task per callback, a publish coroutine): more than the validation itself. This module
answers `keys.validate` without any of that: an asyncio Protocol on a connection of its own parses
`MSG`/`HMSG` frames straight from the socket buffer, calls a synchronous handler per message, and
writes every reply of one read (`PUB <reply> <len>`) in a single write, so replies batch naturally
under load and go out at once when idle. The rest of the process keeps using nats-py.

What it speaks (docs.nats.io, "Client protocol"): INFO, then CONNECT with `verbose`/`pedantic` off and
`headers`/`no_responders` on (the server's 503 "no responders" status comes as an HMSG); when the
server asks for credentials, user and password or a token (from the URL as nats-py takes them, or the
settings), or an NKey or a user JWT with the signature of the server's nonce (shared/natsauth.py);
TLS when the URL or the settings say so or the server requires it, the handshake first (before INFO)
when the server expects that (`handshake_first`, CNX_NATS_TLS_FIRST); PING/PONG both ways (its own
PINGs find a dead peer); SUB/UNSUB; +OK and -ERR. The connection is re-made with a backoff when it
drops, and its subscriptions re-sent. Credentials never reach a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

from shared.natsauth import ConnectCredentials

log = logging.getLogger("validator.natswire")

# A handler gets (subject, reply, payload, headers or None) and returns the answer to publish on the
# reply subject, or None to publish nothing (it may publish elsewhere itself).
Handler = Callable[[bytes, bytes, bytes, bytes | None], bytes | None]

PING = b"PING\r\n"
PONG = b"PONG\r\n"
# The server's own limit on a client control line is 4 KiB, but its INFO can be longer (cluster URLs).
MAX_CONTROL_LINE = 64 * 1024
DEFAULT_PORT = 4222


class ProtocolError(Exception):
    """The peer sent something that is not the NATS client protocol, or refused us (-ERR)."""


def header_status(headers: bytes | None) -> bytes | None:
    """The status code of a header block (`NATS/1.0 503\\r\\n...` -> b"503"), or None."""
    if not headers:
        return None
    line = headers[: headers.find(b"\r\n")] if b"\r\n" in headers else headers
    parts = line.split(None, 2)
    return parts[1] if len(parts) > 1 else None


class FrameParser:
    """Server-to-client frames from a byte stream, in pieces of any size.

    `MSG`/`HMSG` go to the handler of their subscription id (frames for an unknown id are dropped: a
    subscription just ended); a handler's answer and the PONG owed for a server PING are appended to
    `out`, which the connection writes once per read. Other frames go to the callbacks.
    """

    def __init__(
        self,
        handlers: dict[bytes, Handler],
        out: list[bytes],
        *,
        on_info: Callable[[dict[str, Any]], None] = lambda info: None,
        on_pong: Callable[[], None] = lambda: None,
        on_err: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.handlers = handlers
        self.out = out
        self.on_info = on_info
        self.on_pong = on_pong
        self.on_err = on_err
        self._rest = b""

    def feed(self, data: bytes) -> None:
        """Take what the socket gave; keep an incomplete last frame for the next call."""
        if self._rest:
            data = self._rest + data
            self._rest = b""
        pos = 0
        size = len(data)
        find = data.find
        handlers = self.handlers
        out = self.out
        while pos < size:
            eol = find(b"\r\n", pos)
            if eol < 0:
                if size - pos > MAX_CONTROL_LINE:
                    raise ProtocolError("control line too long")
                break
            if data.startswith(b"MSG ", pos):
                args = data[pos + 4 : eol].split()
                try:
                    if len(args) == 4:
                        subject, sid, reply, length = args
                    else:
                        subject, sid, length = args
                        reply = b""
                    start = eol + 2
                    end = start + int(length)
                except ValueError:
                    raise ProtocolError("malformed MSG") from None
                if end + 2 > size:
                    break  # the payload is not all here yet
                payload = data[start:end]
                headers = None
            elif data.startswith(b"HMSG ", pos):
                args = data[pos + 5 : eol].split()
                try:
                    if len(args) == 5:
                        subject, sid, reply, header_len, total_len = args
                    else:
                        subject, sid, header_len, total_len = args
                        reply = b""
                    start = eol + 2
                    split = start + int(header_len)
                    end = start + int(total_len)
                except ValueError:
                    raise ProtocolError("malformed HMSG") from None
                if end + 2 > size:
                    break
                headers = data[start:split]
                payload = data[split:end]
            else:
                self._control(data[pos:eol])
                pos = eol + 2
                continue
            pos = end + 2
            handler = handlers.get(sid)
            if handler is None:
                continue
            try:
                answer = handler(subject, reply, payload, headers)
            except Exception:
                # One bad message must not take the connection (and every caller on it) down.
                log.exception("handler for %s failed", subject.decode(errors="replace"))
                continue
            if answer is not None and reply:
                out.append(b"PUB %b %d\r\n%b\r\n" % (reply, len(answer), answer))
        if pos < size:
            self._rest = data[pos:]

    def _control(self, line: bytes) -> None:
        op = line[:4].upper()
        if op == b"PING":
            self.out.append(PONG)
        elif op == b"PONG":
            self.on_pong()
        elif op == b"+OK":
            pass
        elif op == b"-ERR":
            self.on_err(line[4:].strip().strip(b"'").decode(errors="replace"))
        elif op == b"INFO":
            try:
                info = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                raise ProtocolError("malformed INFO") from None
            self.on_info(info)
        else:
            raise ProtocolError(f"unexpected frame {line[:16]!r}")


@dataclass(frozen=True)
class Endpoint:
    """A NATS URL taken apart: `nats://[user:password@|token@]host[:port]` or `tls://...`."""

    host: str
    port: int
    tls: bool
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    # The name a TLS certificate is checked against, when not `host`: a server the cluster advertised
    # by IP address is checked against the name of the server that advertised it (as nats-py does).
    tls_name: str | None = None

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        if "://" not in url:
            url = f"nats://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls"):
            raise ValueError(f"the lean NATS connection speaks nats:// and tls://, not {parts.scheme}://")
        if not parts.hostname:
            raise ValueError("the NATS URL names no host")
        # As nats-py does: the userinfo is taken as written (not percent-decoded), so one URL
        # means the same credentials to both connections.
        return cls(
            host=parts.hostname,
            port=parts.port or DEFAULT_PORT,
            tls=parts.scheme == "tls",
            user=parts.username,
            password=parts.password,
        )

    @property
    def address(self) -> str:
        """host:port, for log lines: never the credentials."""
        return f"{self.host}:{self.port}"

    @property
    def server_hostname(self) -> str:
        return self.tls_name or self.host

    def advertised(self, connect_url: str) -> Endpoint | None:
        """A server the cluster advertised in INFO `connect_urls` (`host:port`), reached as this one is:
        the same scheme and the same credentials. None when the entry is not an address."""
        try:
            parts = urlsplit(f"nats://{connect_url}")
            host, port = parts.hostname, parts.port or DEFAULT_PORT
        except ValueError:
            return None
        if not host:
            return None
        tls_name = None
        if self.tls and _is_ip(host) and not _is_ip(self.host):
            tls_name = self.host
        return Endpoint(host, port, self.tls, self.user, self.password, tls_name)

    def credentials(self) -> dict[str, str]:
        """CONNECT fields: user and pass, or a lone user name as the token (nats-py's reading)."""
        if self.user is None:
            return {}
        if self.password is None:
            return {"auth_token": self.user}
        return {"user": self.user, "pass": self.password}


@dataclass
class _Subscription:
    subject: str
    queue: str
    handler: Handler


class _WireProtocol(asyncio.Protocol):
    """One TCP (or TLS) connection: parse what arrives, write what the handlers answered, once."""

    def __init__(self, client: WireClient) -> None:
        self.client = client
        self.out: list[bytes] = []
        self.parser = FrameParser(
            client.handlers, self.out, on_info=self._on_info, on_pong=self._on_pong, on_err=self._on_err
        )
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.info: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        # One future per PING we sent, resolved in order by the PONGs.
        self.pongs: deque[asyncio.Future[None]] = deque()
        self._in_read = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self._in_read = True
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            log.warning("NATS protocol error from %s: %s; reconnecting", self.client.endpoint.address, exc)
            self.out.clear()
            self.abort()
            return
        finally:
            self._in_read = False
        self.flush()

    def send(self, frame: bytes) -> None:
        """Queue a frame; inside a read it leaves with that read's answers, otherwise at once."""
        self.out.append(frame)
        if not self._in_read:
            self.flush()

    def flush(self) -> None:
        out = self.out
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def ping(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pongs.append(future)
        self.send(PING)
        return future

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # Flow control: while the socket cannot take our answers, stop reading requests.
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        gone = ConnectionError("connection lost")
        waiting: list[asyncio.Future[Any]] = [self.info, *self.pongs]
        for future in waiting:
            if not future.done():
                future.set_exception(gone)
        self.pongs.clear()
        if self.client._protocol is self:
            self.client.connected = False  # publish drops at once rather than write to a dead socket
        if not self.lost.done():
            self.lost.set_result(None)

    def _on_info(self, info: dict[str, Any]) -> None:
        # The first INFO and every later one (servers joining the cluster) name the servers to know.
        self.client.learn(info)
        if not self.info.done():
            self.info.set_result(info)
        elif info.get("ldm"):
            log.info("NATS server %s is entering lame duck mode", self.client.endpoint.address)

    def _on_pong(self) -> None:
        if self.pongs:
            future = self.pongs.popleft()
            if not future.done():
                future.set_result(None)

    def _on_err(self, message: str) -> None:
        # The server closes the connection after most errors; before it is up, an error fails it.
        error = ProtocolError(f"server error: {message}")
        if not self.info.done():
            self.info.set_exception(error)
        elif self.pongs and not self.client.connected:
            future = self.pongs.popleft()
            if not future.done():
                future.set_exception(error)
        else:
            log.warning("NATS server %s: %s", self.client.endpoint.address, message)


class WireClient:
    """A connection of its own to serve subscriptions with synchronous handlers, re-made when it drops.

    It knows a pool of servers: the URLs it is given, in random order, and every server the cluster
    advertises in an INFO (`connect_urls`). When the connection drops (or the server stops answering
    PINGs) it connects to the next server of the pool, then the next, a round at a time with a growing
    pause between rounds, and re-sends its subscriptions there.

    `subscribe` before or after `start`; `publish` returns False (and counts a drop) while there is no
    connection: a reply that cannot leave now is of no use to a caller once its request has timed out.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        name: str,
        connect_timeout: float = 5.0,
        ping_interval: float = 20.0,
        max_pings_out: int = 2,
        reconnect_wait: tuple[float, float] = (0.05, 1.0),
        ssl_context: ssl.SSLContext | None = None,
        credentials: ConnectCredentials | None = None,
        tls: bool = False,
        tls_first: bool = False,
        randomize: bool = True,
    ) -> None:
        """`urls`: one URL, a comma-separated list or a sequence. `credentials` go with a URL's own (if
        any) to a server that asks; `tls` makes the connection upgrade whatever the server's INFO says
        (a plaintext INFO is then refused, not believed), and `tls_first` starts TLS before the server
        says anything."""
        if isinstance(urls, str):
            urls = [u.strip() for u in urls.split(",") if u.strip()]
        endpoints = [Endpoint.parse(url) for url in urls]
        if not endpoints:
            raise ValueError("the lean NATS connection needs a server URL")
        self.credentials = credentials
        self.tls = tls or tls_first or any(e.tls for e in endpoints)
        # Credentials written in one URL are the connection's identity on every server of the cluster.
        with_user = next((e for e in endpoints if e.user is not None), None)
        self.pool = [
            Endpoint(
                e.host,
                e.port,
                self.tls,
                e.user if e.user is not None else (with_user.user if with_user else None),
                e.password if e.user is not None else (with_user.password if with_user else None),
            )
            for e in endpoints
        ]
        self.randomize = randomize
        if randomize:
            random.shuffle(self.pool)  # the replicas of a deployment spread over the servers
        self.endpoint = self.pool[0]  # the server connected to (or tried last)
        self.tls_first = tls_first
        self.name = name
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.max_pings_out = max_pings_out
        self.reconnect_wait = reconnect_wait
        self._ssl_context = ssl_context
        self.handlers: dict[bytes, Handler] = {}
        self._subs: dict[bytes, _Subscription] = {}
        self._next_sid = 0
        self._protocol: _WireProtocol | None = None
        self.connected = False
        self.reconnects = 0
        self.dropped = 0
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None

    # -- the server pool ---------------------------------------------------------------------------
    def learn(self, info: dict[str, Any]) -> None:
        """Add the servers an INFO advertises (`connect_urls`) that the pool does not hold yet."""
        urls = info.get("connect_urls")
        if not isinstance(urls, list):
            return
        known = {e.address for e in self.pool}
        found: list[Endpoint] = []
        for url in urls:
            endpoint = self.endpoint.advertised(str(url))
            if endpoint is not None and endpoint.address not in known:
                known.add(endpoint.address)
                found.append(endpoint)
        if found:
            if self.randomize:
                random.shuffle(found)
            self.pool.extend(found)
            log.info(
                "lean NATS connection %s: the cluster advertises %s",
                self.name,
                ", ".join(e.address for e in found),
            )

    def _candidates(self) -> list[Endpoint]:
        """The pool in the order to try: the servers after the current one first, the current last
        (it has just failed, or it is the one the connection is being moved away from)."""
        try:
            at = self.pool.index(self.endpoint)
        except ValueError:
            return list(self.pool)
        return self.pool[at + 1 :] + self.pool[: at + 1]

    # -- subscriptions and publishing ---------------------------------------------------------------
    def subscribe(self, subject: str, handler: Handler, *, queue: str = "") -> bytes:
        self._next_sid += 1
        sid = str(self._next_sid).encode()
        self._subs[sid] = _Subscription(subject, queue, handler)
        self.handlers[sid] = handler
        if self.connected and self._protocol is not None:
            self._protocol.send(_sub_frame(sid, self._subs[sid]))
        return sid

    async def drain_subscription(self, sid: bytes) -> None:
        """Unsubscribe, and still answer what the server sent before it saw that: the PONG to a PING
        sent after the UNSUB comes after every message it delivered for the subscription."""
        if self._subs.pop(sid, None) is None:
            return
        try:
            if self.connected and self._protocol is not None:
                self._protocol.send(b"UNSUB %b\r\n" % sid)
                await asyncio.wait_for(self._protocol.ping(), self.connect_timeout)
        except (ConnectionError, TimeoutError):
            pass  # the connection is gone: nothing more arrives for this subscription either
        finally:
            self.handlers.pop(sid, None)

    def publish(self, subject: bytes, payload: bytes, reply: bytes = b"") -> bool:
        protocol = self._protocol
        if protocol is None or not self.connected:
            self.dropped += 1
            return False
        if reply:
            protocol.send(b"PUB %b %b %d\r\n%b\r\n" % (subject, reply, len(payload), payload))
        else:
            protocol.send(b"PUB %b %d\r\n%b\r\n" % (subject, len(payload), payload))
        return True

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to a server of the pool (raising if none can be reached, as nats-py's connect does),
        then keep a connection up in the background."""
        await self._connect_any(list(self.pool))
        self._supervisor = asyncio.create_task(self._supervise(), name=f"natswire-{self.name}")

    async def close(self) -> None:
        """Flush what is queued and close; no reconnect after this."""
        self._closing = True
        protocol = self._protocol
        if protocol is not None and self.connected:
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(protocol.ping(), self.connect_timeout)
        self.connected = False
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the server has seen everything sent so far (a PING answered)."""
        protocol = self._protocol
        if protocol is None or not self.connected:
            raise ConnectionError("not connected")
        await asyncio.wait_for(protocol.ping(), timeout or self.connect_timeout)

    async def _connect_any(self, candidates: list[Endpoint]) -> None:
        """One try at each candidate in turn; the last failure is raised when none took us."""
        failure: BaseException | None = None
        for endpoint in candidates:
            if self._closing:
                raise ConnectionError("closing")
            self.endpoint = endpoint
            try:
                await self._connect(endpoint)
            except (OSError, TimeoutError, ProtocolError, ssl.SSLError) as exc:
                failure = exc
                continue
            return
        assert failure is not None
        raise failure

    async def _connect(self, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout
        if self.tls_first:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _WireProtocol(self),
                    endpoint.host,
                    endpoint.port,
                    ssl=self._tls_context(),
                    server_hostname=endpoint.server_hostname,
                ),
                timeout,
            )
        else:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _WireProtocol(self), endpoint.host, endpoint.port), timeout
            )
        try:
            info = await asyncio.wait_for(protocol.info, timeout)
            tls = self.tls or bool(info.get("tls_required"))
            if tls and not self.tls_first:
                upgraded = await asyncio.wait_for(
                    loop.start_tls(
                        transport, protocol, self._tls_context(), server_hostname=endpoint.server_hostname
                    ),
                    timeout,
                )
                protocol.transport = cast(asyncio.Transport, upgraded)
            frames = [self._connect_frame(info, endpoint, tls=tls)]
            frames += [_sub_frame(sid, sub) for sid, sub in self._subs.items()]
            protocol.send(b"".join(frames))
            # The PONG to this PING says the server took CONNECT and every SUB (or it sent -ERR).
            await asyncio.wait_for(protocol.ping(), timeout)
        except BaseException:
            protocol.abort()
            raise
        self._protocol = protocol
        self.connected = True

    def _connect_frame(
        self, info: dict[str, Any], endpoint: Endpoint | None = None, *, tls: bool = False
    ) -> bytes:
        endpoint = endpoint or self.endpoint
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "tls_required": tls,
            "name": self.name,
            "lang": "python-natswire",
            "version": "1",
            "protocol": 1,
            "echo": False,
            "headers": True,
            "no_responders": True,
        }
        if info.get("auth_required"):
            # Sent only to a server that asks: a token is not handed to one that does not need it.
            options.update(endpoint.credentials())
            if self.credentials is not None:
                options.update(self.credentials.connect_fields(info.get("nonce")))
        return b"CONNECT " + orjson.dumps(options) + b"\r\n"

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _supervise(self) -> None:
        """Ping the live connection; when it drops, connect to the next live server of the pool, a round
        of the pool at a time, waiting longer after each round that found none."""
        first, longest = self.reconnect_wait
        while not self._closing:
            protocol = self._protocol
            if protocol is not None and self.connected:
                await self._watch(protocol)
                self.connected = False
                if self._closing:
                    return
                log.warning("lean NATS connection to %s lost; reconnecting", self.endpoint.address)
            wait = first
            lost_at = time.monotonic()
            said: set[str] = set()
            while not self._closing:
                try:
                    # At once to the other servers: a cluster has a live one unless it is all down.
                    await self._connect_any(self._candidates())
                except (OSError, TimeoutError, ProtocolError, ssl.SSLError) as exc:
                    # OSError and ProtocolError texts name no credentials (the server's -ERR does not).
                    # Each kind of failure once per outage, not every round.
                    described = _describe(exc)
                    if type(exc).__name__ not in said:
                        said.add(type(exc).__name__)
                        log.info(
                            "lean NATS connection: no server of %d took it: %s", len(self.pool), described
                        )
                    await asyncio.sleep(wait * random.uniform(0.5, 1.0))
                    wait = min(longest, wait * 2)
                    continue
                self.reconnects += 1
                log.info(
                    "lean NATS connection re-made to %s after %.1f s",
                    self.endpoint.address,
                    time.monotonic() - lost_at,
                )
                break

    async def _watch(self, protocol: _WireProtocol) -> None:
        """Until the connection is lost: PING it now and then; too many unanswered means a dead peer
        (a server paused or cut off keeps the socket open), and the connection moves elsewhere."""
        while not protocol.lost.done():
            done, _ = await asyncio.wait({protocol.lost}, timeout=self.ping_interval)
            if done:
                return
            if len(protocol.pongs) >= self.max_pings_out:
                log.warning("NATS server %s stopped answering PINGs", self.endpoint.address)
                protocol.abort()
                await protocol.lost
                return
            protocol.ping().add_done_callback(_ignore_result)


def _sub_frame(sid: bytes, sub: _Subscription) -> bytes:
    if sub.queue:
        return f"SUB {sub.subject} {sub.queue} ".encode() + sid + b"\r\n"
    return f"SUB {sub.subject} ".encode() + sid + b"\r\n"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _ignore_result(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved
