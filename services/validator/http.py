"""Forward-auth over HTTP for ingress controllers (nginx auth_request / ingress-nginx auth-url, Traefik
ForwardAuth, Envoy ext_authz HTTP), plus probes and metrics.

A bare ASGI app rather than a framework route: this answers once per request the ingress serves, and
a framework's routing and response objects would cost more than the validation itself.

What a request needs comes only from what the operator configured, never from what the client sent
(every header and query parameter of the client reaches us through the proxy, so all of them are
hostile):
- the route table (`CNX_ROUTE_SCOPES`, routes.py) applied to the original method and path, read only
  from the headers the configured proxy (`CNX_FORWARD_AUTH_PROXY`) overwrites: `X-Original-Method` +
  `X-Original-URL` (nginx, ingress-nginx), `X-Forwarded-Method` + `X-Forwarded-Uri` (Traefik), or the
  request line itself (Envoy ext_authz HTTP: the original method, and the original path and query
  after the configured `path_prefix`, e.g. `/v2/auth/verify/v2/instances?api_key=...`). Every other
  such header is ignored; one of them sent twice makes the original request unknown;
- the auth URL's own `scope` and `environment` parameters (`/v2/auth/verify?scope=compute:read`), which
  the operator writes into the ingress annotation or Traefik middleware. Not with Envoy: there the
  query string is the client's (ext_authz appends the original path and query), so only the route table
  counts.
Route and query requirements apply together. `X-Required-Scope` / `X-Required-Environment` headers may
only add to them (checked against the valid answer), and never cover a request on their own.

Fail closed: a request that no route and no `scope` parameter covers, or whose path the route table
refuses as ambiguous, gets 403 `NO_ROUTE` without a key lookup.

nginx `auth_request` turns any status but 2xx/401/403 into a 500: add `?rate_limit_status=403` to the
auth URL to get 403 (with `X-Cnx-Code: RATE_LIMITED` and `Retry-After`) instead of 429 there.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from shared import scopes as scope_rules
from shared.credentials import AmbiguousCredentials, presented_key
from shared.httpmetrics import HttpMetricsMiddleware, HttpRequestMetrics, counted_responder
from shared.httpserver import Answer, Responder
from shared.validation import HTTP_STATUS, MESSAGES, Code

from .addresses import address_value
from .metrics import http_route
from .openapi import BODY as OPENAPI_BODY
from .openapi import VERIFY_PATH
from .routes import ENVIRONMENTS, REFUSED, RouteTable

log = logging.getLogger(__name__)

Proxy = Literal["nginx", "traefik", "envoy"]
_JSON = [(b"content-type", b"application/json")]
_UNAUTHORIZED = {Code.MISSING, Code.MALFORMED, Code.NOT_FOUND, Code.EXPIRED, Code.REVOKED}
_RATE_LIMITED = Code.RATE_LIMITED
_CHALLENGE = (b"www-authenticate", b'Bearer error="invalid_token"')
_VERIFY_PREFIX = VERIFY_PATH.encode() + b"/"
# Per code, made once: the X-Cnx-Code header and the body of an answer without Retry-After.
_CODE_HEADER = {code: (b"x-cnx-code", str(code).encode()) for code in Code}
_BODY = {
    code: orjson.dumps({"valid": code == Code.VALID, "code": code, "message": MESSAGES[code]})
    for code in Code
}
_NO_ROUTE_HEADERS = [_JSON[0], _CODE_HEADER[Code.NO_ROUTE]]
_UNKNOWN = object()
_PEER_CACHE_MAX = 1024
_QUERY_CACHE_MAX = 256
# The headers each proxy flavor sets (overwriting the client's): the only source of the original request.
ORIGINAL_HEADERS: dict[str, tuple[bytes, ...]] = {
    "nginx": (b"x-original-method", b"x-original-url"),
    "traefik": (b"x-forwarded-method", b"x-forwarded-uri"),
    "envoy": (),
}
Validate = Callable[[str | None, str | None, str | None, str | None], Awaitable[dict[str, Any]]]
# The same answer when it needs no waiting, else None (Cluster.validate_now).
ValidateNow = Callable[[str | None, str | None, str | None, str | None], dict[str, Any] | None]
_VERIFY_PATH_PREFIX = VERIFY_PATH + "/"


@dataclass(frozen=True, slots=True)
class _Check:
    """What one forward-auth request asks of its key: the first required scope and environment go to the
    key check, the others (a route's and the URL's together, or what a header added) are checked after."""

    key: str | None
    scope: str | None
    ip: str | None
    environment: str | None
    more_scopes: list[str]
    more_environments: list[str]
    rate_limit_403: bool


@dataclass(frozen=True, slots=True)
class OperatorQuery:
    """What the auth URL's own query asks for (nginx and Traefik flavors: the operator wrote it)."""

    scopes: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    rate_limit_403: bool = False


_NO_QUERY = OperatorQuery()


def operator_query(query: str) -> OperatorQuery:
    """`scope` (repeatable, or several separated by spaces), `environment`, `rate_limit_status=403`."""
    scopes: list[str] = []
    environments: list[str] = []
    rate_limit_403 = False
    for name, value in parse_qsl(query):
        if name == "scope":
            for scope in value.replace(",", " ").split():
                if scope not in scopes:
                    scopes.append(scope)
        elif name == "environment":
            if value not in environments:
                environments.append(value)
        elif name == "rate_limit_status":
            rate_limit_403 = value == "403"
    for scope in scopes:
        try:
            scope_rules.parse(scope)
        except scope_rules.UnknownScope:
            # No key holds an unknown scope: every request through this URL will be SCOPE_DENIED.
            log.warning("forward-auth URL asks for unknown scope %r: every request is refused", scope)
    for environment in environments:
        if environment not in ENVIRONMENTS:
            log.warning(
                "forward-auth URL asks for unknown environment %r: every request is refused", environment
            )
    return OperatorQuery(tuple(scopes), tuple(environments), rate_limit_403)


def _request_uri(url: str) -> str | None:
    """The path and query of `X-Original-URL`: `scheme://host/path?query` (ingress-nginx), or a bare
    `/path?query`. The path starts at the first `/` after `://`: a Host header cannot hold a `/`."""
    if url.startswith("/"):
        return url
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    slash = url.find("/", scheme_end + 3)
    return url[slash:] if slash >= 0 else None


def original_request(proxy: str, scope: Scope, headers: dict[bytes, bytes]) -> tuple[str, str] | None:
    """The method and URI (path?query) of the request the proxy is asking about, from that proxy
    flavor's own headers only; None when they are missing."""
    if proxy == "envoy":
        raw: bytes = scope.get("raw_path") or scope["path"].encode("latin-1")
        if not raw.startswith(_VERIFY_PREFIX):
            return None
        query: bytes = scope.get("query_string") or b""
        path = raw[len(VERIFY_PATH) :].decode("latin-1")
        return scope["method"], path + "?" + query.decode("latin-1") if query else path
    method_name, uri_name = ORIGINAL_HEADERS[proxy]
    method = headers.get(method_name)
    value = headers.get(uri_name)
    if not method or not value:
        return None
    uri = value.decode("latin-1")
    if proxy == "nginx":
        found = _request_uri(uri)
        if found is None:
            return None
        uri = found
    return method.decode("latin-1"), uri


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
        proxy: Proxy = "nginx",
        validate_now: ValidateNow | None = None,
    ) -> None:
        self.validate = validate
        self.validate_now = validate_now
        self.registry = registry
        # As integers (version, network, mask), matched against the decision's integer address parse:
        # `ipaddress` cost more than the whole key check, and a cache of it missed for every new client.
        networks = [ipaddress.ip_network(c, strict=False) for c in trusted_proxies]
        self._trusted = [(n.version, int(n.network_address), int(n.netmask)) for n in networks]
        self._peer_trust: dict[str, bool | None] = {}
        self._ready = ready
        self.routes = routes or RouteTable()
        if proxy not in ORIGINAL_HEADERS:
            raise ValueError(
                f"forward-auth proxy must be one of {', '.join(ORIGINAL_HEADERS)}, not {proxy!r}"
            )
        self.proxy = proxy
        self._original_headers = ORIGINAL_HEADERS[proxy]
        # The auth URL's query is one of the few the operator configured (nginx, Traefik): parsed once.
        self._queries: dict[bytes, OperatorQuery] = {}
        refusals = Counter(
            "cnx_validator_forward_auth_refusals",
            "Forward-auth refusals decided before or after the key check: no route covers the request "
            "(NO_ROUTE), or a second requirement or an X-Required-* header the key does not meet",
            ["code"],
            registry=registry,
        )
        self._refused = {
            code: refusals.labels(code) for code in (Code.NO_ROUTE, Code.SCOPE_DENIED, Code.ENV_MISMATCH)
        }

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
        if path == VERIFY_PATH or path.startswith(_VERIFY_PATH_PREFIX):
            await self.verify(scope, send)
        elif path == "/healthz":
            await _send(send, 200, b'{"status":"ok"}', _JSON)
        elif path == "/readyz":
            ready = self._ready()
            await _send(send, 200 if ready else 503, orjson.dumps({"ready": ready}), _JSON)
        elif path == "/metrics":
            metrics_type = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
            await _send(send, 200, generate_latest(self.registry), metrics_type)
        elif path == "/openapi.json":
            await _send(send, 200, OPENAPI_BODY, _JSON)
        else:
            await _send(send, 404, b'{"error":{"code":"not_found","message":"no such path"}}', _JSON)

    def _operator_query(self, query_string: bytes) -> OperatorQuery:
        if not query_string or self.proxy == "envoy":
            return _NO_QUERY  # Envoy: the query string is the client's (ext_authz appends it)
        found = self._queries.get(query_string)
        if found is None:
            found = operator_query(query_string.decode("latin-1"))
            # Not kept when it holds a key (a direct caller's ?api_key=), nor past a bound.
            if b"api_key" not in query_string and len(self._queries) < _QUERY_CACHE_MAX:
                self._queries[query_string] = found
        return found

    def _original(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[str, str] | None:
        if len(headers) != len(scope["headers"]):
            # A header sent twice: if it is one the original request is read from, it is unknown.
            names = [name for name, _ in scope["headers"]]
            if any(names.count(name) > 1 for name in self._original_headers):
                return None
        return original_request(self.proxy, scope, headers)

    def _client_key(
        self, scope: Scope, headers: dict[bytes, bytes], original: tuple[str, str] | None
    ) -> str | None:
        """The key the request presents (shared/credentials.py: the Bearer header or `api_key`, from the
        client's query (inside the original URI for nginx and Traefik, the request's own for Envoy) or
        the auth URL's (a direct caller)). Raises AmbiguousCredentials for two Authorization headers or
        keys that disagree: a proxy in front could have checked another one."""
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        query_string: bytes = scope.get("query_string") or b""
        if self.proxy == "envoy":
            return presented_key(raw, query_string)
        if original is None and not self.routes:
            original = self._original(scope, headers)  # not read yet: no route table
        _, _, client_query = original[1].partition("?") if original else ("", "", "")
        return presented_key(raw, client_query, query_string)

    def respond_now(self, scope: Scope) -> Answer | None:
        """The answer to a forward-auth request when it needs no waiting (shared/httpserver.Responder:
        the server writes it without an ASGI cycle), else None, with nothing changed, for `__call__`."""
        path = scope["path"]
        if path != VERIFY_PATH and not path.startswith(_VERIFY_PATH_PREFIX):
            return None  # probes, metrics, OpenAPI: the ASGI app's, and not on the hot path
        check = self._check_of(scope)
        if type(check) is not _Check:
            return check  # type: ignore[return-value]  # refused before any key check
        validate_now = self.validate_now
        if validate_now is None:
            return None
        reply = validate_now(check.key, check.scope, check.ip, check.environment)
        if reply is None:
            return None
        return self._answer(check, reply)

    async def verify(self, scope: Scope, send: Send) -> None:
        check = self._check_of(scope)
        if type(check) is _Check:
            reply = await self.validate(check.key, check.scope, check.ip, check.environment)
            status, headers, body = self._answer(check, reply)
        else:
            status, headers, body = check  # type: ignore[misc]  # refused before any key check
        # _send(), inlined: one coroutine less per request.
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _check_of(self, scope: Scope) -> _Check | Answer:
        """What the request asks to be checked, or the answer when it is refused before any key check
        (no route covers it: NO_ROUTE; two credentials: 400)."""
        headers = dict(scope["headers"])
        query = self._operator_query(scope.get("query_string") or b"")
        # Without a route table the original request matters only for an `api_key` in it (below).
        original = self._original(scope, headers) if self.routes else None
        required_scopes: list[str] = []
        required_envs: list[str] = []
        if self.routes:
            route = self.routes.lookup(*original) if original is not None else REFUSED
            if route is REFUSED or (route is None and not query.scopes):
                return self._no_route()
            if route is not None:
                if route.scope:
                    required_scopes.append(route.scope)
                if route.environment:
                    required_envs.append(route.environment)
        elif not query.scopes:
            return self._no_route()
        for required in query.scopes:
            if required not in required_scopes:
                required_scopes.append(required)
        for environment in query.environments:
            if environment not in required_envs:
                required_envs.append(environment)
        # The client's own headers: they may add a requirement, never replace or lower one.
        extra = headers.get(b"x-required-scope")
        if extra and (added := extra.decode("latin-1").strip()) not in required_scopes:
            required_scopes.append(added)
        extra = headers.get(b"x-required-environment")
        if extra and (added := extra.decode("latin-1").strip()) not in required_envs:
            required_envs.append(added)
        try:
            key = self._client_key(scope, headers, original)
        except AmbiguousCredentials as exc:
            # 400 as on every port; behind nginx's auth_request it becomes a 500: refused either way.
            body = orjson.dumps({"error": {"code": exc.code, "message": exc.message}})
            return 400, [_JSON[0], _CODE_HEADER[Code.MALFORMED]], body
        return _Check(
            key,
            required_scopes[0] if required_scopes else None,
            self.client_ip(scope, headers),
            required_envs[0] if required_envs else None,
            required_scopes[1:],
            required_envs[1:],
            query.rate_limit_403,
        )

    def _answer(self, check: _Check, reply: dict[str, Any]) -> Answer:
        """The response to a checked request: status, headers, body."""
        if (check.more_scopes or check.more_environments) and reply["valid"]:
            reply = self._also_required(reply, check.more_scopes, check.more_environments)
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
        if code == _RATE_LIMITED and check.rate_limit_403:
            status = 403
        retry_after = reply.get("retry_after_s")
        if retry_after is None:
            return status, out, _BODY[code]
        refusal = {
            "valid": reply["valid"],
            "code": code,
            "message": MESSAGES[code],
            "retry_after_s": retry_after,
        }
        return status, out, orjson.dumps(refusal)

    def _also_required(self, reply: dict[str, Any], scopes: list[str], envs: list[str]) -> dict[str, Any]:
        """A valid answer checked against the requirements beyond the first (the key check took one
        scope and one environment): a route's and the URL's together, or what a header added."""
        code = None
        if any(env != reply["environment"] for env in envs):
            code = Code.ENV_MISMATCH
        else:
            granted = scope_rules.grants(reply["scopes"])
            for required in scopes:
                try:
                    held = scope_rules.satisfies(granted, required)
                except scope_rules.UnknownScope:
                    held = False  # no key holds an unknown scope
                if not held:
                    code = Code.SCOPE_DENIED
                    break
        if code is None:
            return reply
        self._refused[code].inc()
        return {"valid": False, "code": code}

    def _no_route(self) -> Answer:
        self._refused[Code.NO_ROUTE].inc()
        return 403, _NO_ROUTE_HEADERS, _BODY[Code.NO_ROUTE]

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


def forward_auth_server(app: ForwardAuthApp, registry: CollectorRegistry) -> tuple[ASGIApp, Responder]:
    """The forward-auth port as the validator serves it (and `make bench` measures it): the app under the
    request metrics, and its `respond_now` for the server to answer with before any ASGI cycle (the
    answers that need no waiting: most of them), counted into the same metrics."""
    metrics = HttpRequestMetrics(registry)
    return (
        HttpMetricsMiddleware(app, metrics=metrics, route_of=http_route),
        counted_responder(app.respond_now, metrics=metrics, route_of=http_route),
    )
