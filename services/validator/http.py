"""Forward-auth over HTTP for ingress controllers (nginx auth_request / ingress-nginx auth-url, Traefik
ForwardAuth, Envoy ext_authz HTTP), plus probes and metrics.

A bare ASGI app rather than a framework route: this answers once per request the ingress serves, and
a framework's routing and response objects would cost more than the validation itself.

The scope a request needs: `X-Required-Scope` if the ingress sends one, else the route table
(`CNX_ROUTE_SCOPES`) applied to the original method and path, taken from `X-Original-Method` with
`X-Original-URI` (nginx) or `X-Original-URL` (ingress-nginx), `X-Forwarded-Method` / `X-Forwarded-Uri`
(Traefik), or the request itself (Envoy ext_authz HTTP sends the original method, and the original
path after the configured `path_prefix`, e.g. `/v2/auth/verify/v2/instances`).

nginx `auth_request` turns any status but 2xx/401/403 into a 500: add `?rate_limit_status=403` to the
auth URL to get 403 (with `X-Cnx-Code: RATE_LIMITED` and `Retry-After`) instead of 429 there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.validation import HTTP_STATUS, MESSAGES, Code

from .domain import address_value
from .routes import RouteTable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]
_UNAUTHORIZED = {Code.MISSING, Code.MALFORMED, Code.NOT_FOUND, Code.EXPIRED, Code.REVOKED}
_RATE_LIMITED = Code.RATE_LIMITED
_CHALLENGE = (b"www-authenticate", b'Bearer error="invalid_token"')
VERIFY_PATH = "/v2/auth/verify"
# Per code, made once: the X-Cnx-Code header and the body of an answer without Retry-After.
_CODE_HEADER = {code: (b"x-cnx-code", str(code).encode()) for code in Code}
_BODY = {
    code: orjson.dumps({"valid": code == Code.VALID, "code": code, "message": MESSAGES[code]})
    for code in Code
}
_UNKNOWN = object()
_PEER_CACHE_MAX = 1024
Validate = Callable[[str | None, str | None, str | None, str | None], Awaitable[dict[str, Any]]]


def original_request(scope: Scope, headers: dict[bytes, bytes]) -> tuple[str, str]:
    """The method and path of the request the ingress is asking about."""
    method = headers.get(b"x-original-method") or headers.get(b"x-forwarded-method")
    uri = headers.get(b"x-original-uri") or headers.get(b"x-forwarded-uri")
    if uri is None and b"x-original-url" in headers:
        # ingress-nginx sends the whole URL (scheme://host/path?query).
        parts = urlsplit(headers[b"x-original-url"].decode("latin-1"))
        uri = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
    if uri is not None:
        return (method or scope["method"].encode()).decode("latin-1"), uri.decode("latin-1")
    path: str = scope["path"]
    rest = path[len(VERIFY_PATH) :] if path.startswith(VERIFY_PATH) else path
    return (method or scope["method"].encode()).decode("latin-1"), rest or "/"


def rate_limit_headers(
    reply: dict[str, Any], out: list[tuple[bytes, bytes]] | None = None
) -> list[tuple[bytes, bytes]]:
    """The RateLimit headers (and Retry-After) of a reply, appended to `out` (a new list by default)."""
    if out is None:
        out = []
    state = reply.get("rate_limit")
    if state:
        reset = state["reset_s"]
        whole = int(reset)  # whole seconds, rounded up, never below 0
        out.append((b"ratelimit-limit", b"%d" % state["limit"]))
        out.append((b"ratelimit-remaining", b"%d" % state["remaining"]))
        out.append((b"ratelimit-reset", b"%d" % (whole + 1 if reset > whole else max(whole, 0))))
    if reply["code"] == _RATE_LIMITED:
        # Whole seconds, rounded up, at least 1: "Retry-After: 0" invites a tight retry loop.
        retry = reply.get("retry_after_s") or 1.0
        out.append((b"retry-after", b"%d" % max(1, -int(-retry // 1))))
    return out


class ForwardAuthApp:
    def __init__(
        self,
        validate: Validate,
        registry: CollectorRegistry,
        *,
        trusted_proxies: list[str],
        ready: Callable[[], bool],
        routes: RouteTable | None = None,
    ) -> None:
        self.validate = validate
        self.registry = registry
        # As integers (version, network, mask), matched against the decision's integer address parse:
        # `ipaddress` cost more than the whole key check, and a cache of it missed for every new client.
        networks = [ipaddress.ip_network(c, strict=False) for c in trusted_proxies]
        self._trusted = [(n.version, int(n.network_address), int(n.netmask)) for n in networks]
        self._peer_trust: dict[str, bool | None] = {}
        self._ready = ready
        self.routes = routes or RouteTable()

    def _trust(self, text: str) -> bool | None:
        """Is this address one of our proxies? None when it is not an address at all."""
        address = address_value(text)
        if address is None:
            return None
        version, value = address
        return any(v == version and value & mask == net for v, net, mask in self._trusted)

    def client_ip(self, scope: Scope, headers: dict[bytes, bytes]) -> str | None:
        """The peer address, or the X-Forwarded-For client when the peer is a trusted proxy."""
        peer = scope.get("client")
        peer_ip = peer[0] if peer else None
        forwarded = headers.get(b"x-forwarded-for")
        if forwarded and peer_ip and self._trusted:
            # The peers are the ingress's few proxies: their verdict is remembered (bounded, for a
            # validator reached directly by many clients).
            trusted = self._peer_trust.get(peer_ip, _UNKNOWN)
            if trusted is _UNKNOWN:
                trusted = self._trust(peer_ip)
                if len(self._peer_trust) < _PEER_CACHE_MAX:
                    self._peer_trust[peer_ip] = trusted
            if trusted is None:
                return peer_ip
            if trusted:
                text = forwarded.decode("latin-1")
                if "," not in text:
                    # One hop (the usual case): the client, whether or not it is a proxy of ours too.
                    return text.strip() or peer_ip
                # Walk right to left past our own proxies: the first untrusted hop is the client.
                hops = [h.strip() for h in text.split(",") if h.strip()]
                for hop in reversed(hops):
                    if not self._trust(hop):
                        return hop
                return hops[0] if hops else peer_ip
        return peer_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == VERIFY_PATH or path.startswith(VERIFY_PATH + "/"):
            await self.verify(scope, send)
        elif path == "/healthz":
            await _send(send, 200, b'{"status":"ok"}', _JSON)
        elif path == "/readyz":
            ready = self._ready()
            await _send(send, 200 if ready else 503, orjson.dumps({"ready": ready}), _JSON)
        elif path == "/metrics":
            metrics_type = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
            await _send(send, 200, generate_latest(self.registry), metrics_type)
        else:
            await _send(send, 404, b'{"error":{"code":"not_found","message":"no such path"}}', _JSON)

    async def verify(self, scope: Scope, send: Send) -> None:
        headers = dict(scope["headers"])
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"))) if scope.get("query_string") else {}
        key = None
        auth = headers.get(b"authorization")
        if auth:
            if auth.startswith(b"Bearer "):  # the usual spelling, without the general parse below
                key = auth[7:].decode("latin-1").strip()
            else:
                scheme, _, value = auth.decode("latin-1").partition(" ")
                key = value.strip() if scheme.lower() == "bearer" else auth.decode("latin-1").strip()
        else:
            key = query.get("api_key")
            if key is None:
                # nginx sends the client's own query string only inside the original URI or URL.
                _, _, original_query = original_request(scope, headers)[1].partition("?")
                key = dict(parse_qsl(original_query)).get("api_key") if original_query else None
        required = headers.get(b"x-required-scope")
        environment = headers.get(b"x-required-environment")
        required_scope = required.decode("latin-1") if required else None
        required_env = environment.decode("latin-1") if environment else None
        if required_scope is None and self.routes:
            route_scope, route_env = self.routes.lookup(*original_request(scope, headers))
            required_scope = route_scope
            required_env = required_env or route_env
        reply = await self.validate(key, required_scope, self.client_ip(scope, headers), required_env)
        code = reply["code"]
        status = HTTP_STATUS[code]
        out = [_JSON[0], _CODE_HEADER[code]]
        if reply["valid"]:
            out.append((b"x-key-id", reply["key_id"].encode()))
            out.append((b"x-account-id", reply["account_id"].encode()))
            out.append((b"x-key-scopes", " ".join(reply["scopes"]).encode()))
            out.append((b"x-key-environment", reply["environment"].encode()))
        elif code in _UNAUTHORIZED:
            out.append(_CHALLENGE)
        rate_limit_headers(reply, out)
        if code == _RATE_LIMITED and query.get("rate_limit_status") == "403":
            status = 403
        retry_after = reply.get("retry_after_s")
        if retry_after is None:
            payload = _BODY[code]
        else:
            body = {
                "valid": reply["valid"],
                "code": code,
                "message": MESSAGES[code],
                "retry_after_s": retry_after,
            }
            payload = orjson.dumps(body)
        # _send(), inlined: one coroutine less per request.
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
