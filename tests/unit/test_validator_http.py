"""Forward-auth over HTTP without NATS: what a request needs (only from the operator's configuration:
the route table and the auth URL's own query), the original method and path per proxy flavor, fail
closed with NO_ROUTE, client address from X-Forwarded-For, and the headers of every answer.

Every test through `client_for` runs twice: through the ASGI app, and through `respond_now` (what the
validator's server answers before any ASGI cycle), which must answer alike."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.validator.http import ForwardAuthApp, original_request
from services.validator.routes import RouteTable
from shared import scopes as scope_rules
from shared.validation import Code
from tests.support.factories import VALID_ANSWER as VALID

VERIFY = "/v2/auth/verify"
SCOPED = VERIFY + "?scope=compute:read"


class Recorder:
    def __init__(self, reply: dict[str, Any] | None = None) -> None:
        self.reply = reply or VALID
        self.calls: list[tuple[Any, ...]] = []

    async def __call__(self, key: Any, scope: Any, ip: Any, environment: Any) -> dict[str, Any]:
        return self.now(key, scope, ip, environment)

    def now(self, key: Any, scope: Any, ip: Any, environment: Any) -> dict[str, Any]:
        """The same answer without waiting (Cluster.validate_now's shape)."""
        self.calls.append((key, scope, ip, environment))
        return dict(self.reply)


class Keys(Recorder):
    """Decides as the validator's domain does, for a few keys: token -> (scopes, environment)."""

    KEYS = {
        "reader": (["compute:read"], "prod"),
        "admin": (["compute:admin"], "prod"),
        "dev-admin": (["compute:admin"], "dev"),
        "storage": (["storage:admin"], "prod"),
    }

    def now(self, key: Any, scope: Any, ip: Any, environment: Any) -> dict[str, Any]:
        self.calls.append((key, scope, ip, environment))
        if key is None:
            return {"valid": False, "code": Code.MISSING}
        if key not in self.KEYS:
            return {"valid": False, "code": Code.NOT_FOUND}
        scopes, env = self.KEYS[key]
        if environment and environment != env:
            return {"valid": False, "code": Code.ENV_MISMATCH}
        if scope:
            try:
                held = scope_rules.satisfies(scope_rules.grants(scopes), scope)
            except scope_rules.UnknownScope:
                held = False
            if not held:
                return {"valid": False, "code": Code.SCOPE_DENIED}
        return {**VALID, "key_id": f"key_{key}", "scopes": scopes, "environment": env}


@pytest.fixture(autouse=True, params=["asgi", "respond_now"])
def answered_by(request: pytest.FixtureRequest) -> Any:
    global ANSWERED_BY
    ANSWERED_BY = request.param
    yield request.param
    ANSWERED_BY = "asgi"


ANSWERED_BY = "asgi"


def respond_now_first(app: ForwardAuthApp) -> Any:
    """`app` as the validator's server runs it: `respond_now` first, the ASGI app when it gives None
    (the test then fails: every answer here needs no waiting)."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        answer = app.respond_now(scope) if scope["type"] == "http" else None
        if answer is None:
            if scope["type"] == "http" and scope["path"].startswith(VERIFY):
                raise AssertionError("respond_now left a forward-auth request to the ASGI app")
            await app(scope, receive, send)
            return
        status, headers, body = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return asgi


def client_for(
    validate: Recorder,
    peer: str = "127.0.0.1",
    trusted: list[str] | None = None,
    routes: list[str] | None = None,
    proxy: Any = "nginx",
) -> httpx.AsyncClient:
    app = ForwardAuthApp(
        validate,
        CollectorRegistry(),
        trusted_proxies=trusted or [],
        ready=lambda: True,
        routes=RouteTable(routes),
        proxy=proxy,
        validate_now=validate.now,
    )
    served = respond_now_first(app) if ANSWERED_BY == "respond_now" else app
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=served, client=(peer, 40000)), base_url="http://v"
    )


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("203.0.113.5", "1.2.3.4", [], "203.0.113.5"),  # no trusted proxies: the peer
        ("203.0.113.5", "1.2.3.4", ["10.0.0.0/8"], "203.0.113.5"),  # peer not trusted: header ignored
        ("10.1.2.3", "198.51.100.9", ["10.0.0.0/8"], "198.51.100.9"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.9, 10.9.9.9", ["10.0.0.0/8"], "198.51.100.9"),  # spoofed left part
        ("10.1.2.3", "10.0.0.7, 10.0.0.8", ["10.0.0.0/8"], "10.0.0.7"),  # all hops trusted: the first
        ("::1", "2001:db8::42", ["::1/128"], "2001:db8::42"),
        ("::1", "2001:db8::42", ["127.0.0.0/8"], "::1"),
    ],
)
async def test_client_ip(peer: str, xff: str, trusted: list[str], expected: str) -> None:
    validate = Recorder()
    async with client_for(validate, peer, trusted) as client:
        await client.get(SCOPED, headers={"Authorization": "Bearer k", "X-Forwarded-For": xff})
    assert validate.calls[-1][2] == expected


async def test_valid_answer_carries_identity_and_rate_limit_headers() -> None:
    validate = Recorder()
    async with client_for(validate) as client:
        response = await client.get(SCOPED, headers={"Authorization": "Bearer abc"})
    assert response.status_code == 200
    assert response.headers["x-key-id"] == "key_1" and response.headers["x-account-id"] == "acct"
    assert response.headers["x-key-scopes"] == "compute:read"
    assert response.headers["x-cnx-code"] == "VALID"
    assert (
        response.headers["ratelimit-limit"],
        response.headers["ratelimit-remaining"],
        response.headers["ratelimit-reset"],
    ) == ("100", "41", "60")
    assert validate.calls == [("abc", "compute:read", "127.0.0.1", None)]


@pytest.mark.parametrize(("retry_after_s", "header"), [(0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
async def test_rate_limited_is_429_with_whole_second_retry_after(retry_after_s: float, header: str) -> None:
    reply = {
        "valid": False,
        "code": Code.RATE_LIMITED,
        "key_id": "key_1",
        "account_id": "acct",
        "rate_limit": {"limit": 100, "remaining": 0, "reset_s": 100.0},
        "retry_after_s": retry_after_s,
    }
    async with client_for(Recorder(reply)) as client:
        response = await client.get(SCOPED, headers={"Authorization": "Bearer abc"})
        as_403 = await client.get(SCOPED + "&rate_limit_status=403", headers={"Authorization": "Bearer abc"})
    assert response.status_code == 429 and response.headers["retry-after"] == header
    assert response.headers["ratelimit-remaining"] == "0" and response.headers["ratelimit-reset"] == "100"
    assert response.json()["code"] == "RATE_LIMITED"
    assert as_403.status_code == 403 and as_403.headers["x-cnx-code"] == "RATE_LIMITED"
    assert as_403.headers["retry-after"] == header


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (Code.MISSING, 401),
        (Code.NOT_FOUND, 401),
        (Code.REVOKED, 401),
        (Code.SCOPE_DENIED, 403),
        (Code.IP_NOT_ALLOWED, 403),
        (Code.ENV_MISMATCH, 403),
    ],
)
async def test_refusals(code: Code, status: int) -> None:
    async with client_for(Recorder({"valid": False, "code": code})) as client:
        response = await client.post(SCOPED)
    assert response.status_code == status
    assert ("www-authenticate" in response.headers) == (status == 401)
    assert "x-key-id" not in response.headers


def scope_of(method: str, path: str, query: bytes = b"", raw_path: bytes | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"method": method, "path": path, "query_string": query}
    if raw_path is not None:
        scope["raw_path"] = raw_path
    return scope


EVERY_HEADER = {
    b"x-original-method": b"GET",
    b"x-original-url": b"https://api.example/v2/a?api_key=k",
    b"x-original-uri": b"/v2/b",
    b"x-forwarded-method": b"POST",
    b"x-forwarded-uri": b"/v2/c?x=1",
}


@pytest.mark.parametrize(
    ("proxy", "scope", "headers", "expected"),
    [
        ("nginx", scope_of("GET", VERIFY), EVERY_HEADER, ("GET", "/v2/a?api_key=k")),
        ("traefik", scope_of("GET", VERIFY), EVERY_HEADER, ("POST", "/v2/c?x=1")),
        # Envoy: the request line, whatever the headers say; the query is the client's.
        (
            "envoy",
            scope_of("PUT", VERIFY + "/v2/d", b"api_key=k", VERIFY.encode() + b"/v2/d"),
            EVERY_HEADER,
            ("PUT", "/v2/d?api_key=k"),
        ),
        # Envoy: the raw path, not the decoded one (routes.py refuses the encoded slash).
        (
            "envoy",
            scope_of("GET", VERIFY + "/v2/d/e", b"", VERIFY.encode() + b"/v2/d%2Fe"),
            {},
            ("GET", "/v2/d%2Fe"),
        ),
        ("envoy", scope_of("GET", VERIFY), {}, None),
        ("nginx", scope_of("GET", VERIFY), {b"x-original-url": b"http://h/v2"}, None),  # no method
        ("nginx", scope_of("GET", VERIFY), {b"x-original-method": b"GET", b"x-original-uri": b"/v2/b"}, None),
        (
            "nginx",
            scope_of("GET", VERIFY),
            {b"x-original-method": b"GET", b"x-original-url": b"/v2/a"},
            ("GET", "/v2/a"),
        ),
        # The path starts at the first / after the scheme: a Host header cannot hold one.
        (
            "nginx",
            scope_of("GET", VERIFY),
            {b"x-original-method": b"DELETE", b"x-original-url": b"http://h?x#y/v2/instances/i-1"},
            ("DELETE", "/v2/instances/i-1"),
        ),
        (
            "nginx",
            scope_of("GET", VERIFY),
            {b"x-original-method": b"GET", b"x-original-url": b"http://h"},
            None,
        ),
        (
            "traefik",
            scope_of("GET", VERIFY),
            {b"x-original-method": b"GET", b"x-original-url": b"/v2/a"},
            None,
        ),
    ],
)
def test_original_request_comes_only_from_the_configured_proxy(
    proxy: str, scope: dict[str, Any], headers: dict[bytes, bytes], expected: tuple[str, str] | None
) -> None:
    assert original_request(proxy, scope, headers) == expected


ISSUE_ROUTES = ["GET|HEAD /v2/instances=compute:read@prod", "DELETE /v2/instances/{id}=compute:admin@prod"]


def nginx(method: str, path: str, **more: str) -> dict[str, str]:
    """The headers an ingress-nginx auth subrequest carries (plus what the client added)."""
    return {"X-Original-Method": method, "X-Original-URL": f"https://api.example{path}", **more}


@pytest.mark.parametrize(
    ("key", "headers", "code"),
    [
        ("reader", nginx("GET", "/v2/instances"), Code.VALID),
        ("reader", nginx("HEAD", "/v2/instances?page=2"), Code.VALID),
        ("admin", nginx("DELETE", "/v2/instances/i-1"), Code.VALID),
        ("reader", nginx("DELETE", "/v2/instances/i-1"), Code.SCOPE_DENIED),
        # The attacks of issue 12: client headers naming a weaker requirement or another request.
        (
            "reader",
            nginx("DELETE", "/v2/instances/i-1", **{"X-Required-Scope": "compute:read"}),
            Code.SCOPE_DENIED,
        ),
        (
            "reader",
            nginx("DELETE", "/v2/instances/i-1", **{"X-Original-URI": "/v2/instances"}),
            Code.SCOPE_DENIED,
        ),
        (
            "reader",
            nginx(
                "DELETE",
                "/v2/instances/i-1",
                **{"X-Forwarded-Uri": "/v2/instances", "X-Forwarded-Method": "GET"},
            ),
            Code.SCOPE_DENIED,
        ),
        ("dev-admin", nginx("GET", "/v2/instances", **{"X-Required-Environment": "dev"}), Code.ENV_MISMATCH),
        ("dev-admin", nginx("GET", "/v2/instances"), Code.ENV_MISMATCH),
        ("reader", nginx("PUT", "/v2/instances/i-1"), Code.NO_ROUTE),
        ("admin", nginx("PUT", "/v2/instances/i-1"), Code.NO_ROUTE),
        ("reader", nginx("GET", "/v2/other", **{"X-Required-Scope": "compute:read"}), Code.NO_ROUTE),
        ("reader", {"X-Required-Scope": "compute:read"}, Code.NO_ROUTE),  # no original request at all
        ("admin", nginx("DELETE", "/v2/instances/../instances/i-1"), Code.NO_ROUTE),
        ("admin", nginx("delete", "/v2/instances/i-1"), Code.NO_ROUTE),
        # Headers may add requirements: a reader asking for more than the route is refused.
        ("reader", nginx("GET", "/v2/instances", **{"X-Required-Scope": "compute:write"}), Code.SCOPE_DENIED),
        ("reader", nginx("GET", "/v2/instances", **{"X-Required-Scope": "storage:read"}), Code.SCOPE_DENIED),
        ("reader", nginx("GET", "/v2/instances", **{"X-Required-Scope": "compute:fly"}), Code.SCOPE_DENIED),
        ("admin", nginx("GET", "/v2/instances", **{"X-Required-Scope": "compute:write"}), Code.VALID),
        ("admin", nginx("GET", "/v2/instances", **{"X-Required-Environment": "prod"}), Code.VALID),
        ("reader", nginx("GET", "/v2/instances", **{"X-Required-Environment": "stg"}), Code.ENV_MISMATCH),
    ],
)
async def test_nginx_decides_from_the_route_table_only(key: str, headers: dict[str, str], code: Code) -> None:
    async with client_for(Keys(), routes=ISSUE_ROUTES) as client:
        response = await client.get(VERIFY, headers={"Authorization": f"Bearer {key}", **headers})
    assert response.headers["x-cnx-code"] == code, response.text
    assert response.status_code == (200 if code == Code.VALID else 403)
    assert ("x-key-id" in response.headers) == (code == Code.VALID)


async def test_a_header_sent_twice_makes_the_original_request_unknown() -> None:
    validate = Keys()
    async with client_for(validate, routes=ISSUE_ROUTES) as client:
        headers = [
            ("Authorization", "Bearer reader"),
            ("X-Original-Method", "GET"),
            ("X-Original-URL", "http://h/v2/instances"),
            ("X-Original-URL", "http://h/v2/instances"),
        ]
        twice = await client.get(VERIFY, headers=headers)
        other_twice = await client.get(VERIFY, headers=[*headers[:3], ("X-Other", "1"), ("X-Other", "2")])
    assert twice.headers["x-cnx-code"] == "NO_ROUTE"
    assert other_twice.headers["x-cnx-code"] == "VALID"


@pytest.mark.parametrize(
    ("key", "url", "headers", "code"),
    [
        ("reader", "?scope=compute:read", {}, Code.VALID),
        ("storage", "?scope=compute:read", {}, Code.SCOPE_DENIED),
        ("storage", "?scope=compute:read", {"X-Required-Scope": "storage:read"}, Code.SCOPE_DENIED),
        ("reader", "?scope=compute:read&environment=prod", {}, Code.VALID),
        (
            "dev-admin",
            "?scope=compute:read&environment=prod",
            {"X-Required-Environment": "dev"},
            Code.ENV_MISMATCH,
        ),
        ("dev-admin", "?scope=compute:read", {}, Code.VALID),
        ("reader", "?scope=compute:read&scope=storage:read", {}, Code.SCOPE_DENIED),
        ("reader", "?scope=compute:read%20storage:read", {}, Code.SCOPE_DENIED),
        ("reader", "?scope=compute:fly", {}, Code.SCOPE_DENIED),
        ("reader", "?environment=prod", {}, Code.NO_ROUTE),  # an environment alone covers nothing
        ("reader", "", {"X-Required-Scope": "compute:read"}, Code.NO_ROUTE),  # a header alone neither
        ("reader", "?rate_limit_status=403", {}, Code.NO_ROUTE),
    ],
)
async def test_the_auth_urls_own_query_without_a_route_table(
    key: str, url: str, headers: dict[str, str], code: Code
) -> None:
    async with client_for(Keys()) as client:
        response = await client.get(VERIFY + url, headers={"Authorization": f"Bearer {key}", **headers})
    assert response.headers["x-cnx-code"] == code, response.text


@pytest.mark.parametrize(
    ("key", "url", "headers", "code"),
    [
        # Route and query apply together.
        ("reader", "?scope=compute:read", nginx("GET", "/v2/instances"), Code.VALID),
        ("reader", "?scope=storage:read", nginx("GET", "/v2/instances"), Code.SCOPE_DENIED),
        ("storage", "?scope=storage:read", nginx("GET", "/v2/instances"), Code.SCOPE_DENIED),
        ("dev-admin", "?scope=compute:read", nginx("GET", "/v2/instances"), Code.ENV_MISMATCH),
        ("admin", "?scope=compute:read&environment=dev", nginx("GET", "/v2/instances"), Code.ENV_MISMATCH),
        # A path no route names is covered by the URL's scope...
        ("reader", "?scope=compute:read", nginx("PUT", "/v2/instances/i-1"), Code.VALID),
        ("storage", "?scope=compute:read", nginx("PUT", "/v2/instances/i-1"), Code.SCOPE_DENIED),
        # ...but an ambiguous one, or none at all, is refused: a route might have needed more.
        ("admin", "?scope=compute:read", nginx("DELETE", "/v2/instances/./i-1"), Code.NO_ROUTE),
        ("admin", "?scope=compute:read", {}, Code.NO_ROUTE),
    ],
)
async def test_route_and_query_together(key: str, url: str, headers: dict[str, str], code: Code) -> None:
    async with client_for(Keys(), routes=ISSUE_ROUTES) as client:
        response = await client.get(VERIFY + url, headers={"Authorization": f"Bearer {key}", **headers})
    assert response.headers["x-cnx-code"] == code, response.text


async def test_a_catch_all_covers_what_no_other_route_names() -> None:
    routes = [*ISSUE_ROUTES, "* /**=compute:admin"]
    async with client_for(Keys(), routes=routes) as client:
        reader = await client.get(VERIFY, headers={"Authorization": "Bearer reader", **nginx("PUT", "/v2/x")})
        admin = await client.get(VERIFY, headers={"Authorization": "Bearer admin", **nginx("PUT", "/v2/x")})
        tricked = await client.get(
            VERIFY, headers={"Authorization": "Bearer reader", **nginx("DELETE", "/V2/instances/i-1")}
        )
    assert reader.headers["x-cnx-code"] == "SCOPE_DENIED"
    assert admin.headers["x-cnx-code"] == "VALID"
    assert tricked.headers["x-cnx-code"] == "NO_ROUTE"


TRAEFIK_ROUTES = ISSUE_ROUTES


def traefik(method: str, uri: str, **more: str) -> dict[str, str]:
    return {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri, **more}


@pytest.mark.parametrize(
    ("key", "headers", "code"),
    [
        ("reader", traefik("GET", "/v2/instances"), Code.VALID),
        ("reader", traefik("DELETE", "/v2/instances/i-1"), Code.SCOPE_DENIED),
        ("admin", traefik("DELETE", "/v2/instances/i-1"), Code.VALID),
        # nginx's headers mean nothing to a Traefik validator.
        (
            "reader",
            traefik("DELETE", "/v2/instances/i-1", **nginx("GET", "/v2/instances")),
            Code.SCOPE_DENIED,
        ),
        ("reader", nginx("GET", "/v2/instances"), Code.NO_ROUTE),
        (
            "reader",
            traefik("DELETE", "/v2/instances/i-1", **{"X-Required-Scope": "compute:read"}),
            Code.SCOPE_DENIED,
        ),
        ("reader", traefik("PUT", "/v2/instances/i-1"), Code.NO_ROUTE),
        ("admin", traefik("DELETE", "/v2/instances/%2e%2e/instances/i-1"), Code.NO_ROUTE),
    ],
)
async def test_traefik_flavor(key: str, headers: dict[str, str], code: Code) -> None:
    async with client_for(Keys(), routes=TRAEFIK_ROUTES, proxy="traefik") as client:
        response = await client.get(VERIFY, headers={"Authorization": f"Bearer {key}", **headers})
    assert response.headers["x-cnx-code"] == code, response.text


@pytest.mark.parametrize(
    ("key", "method", "path", "headers", "code"),
    [
        # ext_authz HTTP: the original method, path_prefix + the original path and query.
        ("reader", "GET", "/v2/instances", {}, Code.VALID),
        ("reader", "HEAD", "/v2/instances?page=2", {}, Code.VALID),
        ("reader", "DELETE", "/v2/instances/i-1", {}, Code.SCOPE_DENIED),
        ("admin", "DELETE", "/v2/instances/i-1", {}, Code.VALID),
        ("reader", "DELETE", "/v2/instances/i-1", nginx("GET", "/v2/instances"), Code.SCOPE_DENIED),
        ("reader", "DELETE", "/v2/instances/i-1", traefik("GET", "/v2/instances"), Code.SCOPE_DENIED),
        ("reader", "DELETE", "/v2/instances/i-1", {"X-Required-Scope": "compute:read"}, Code.SCOPE_DENIED),
        # The query string is the client's here: its scope/environment are not requirements.
        ("reader", "DELETE", "/v2/instances/i-1?scope=compute:read", {}, Code.SCOPE_DENIED),
        ("dev-admin", "GET", "/v2/instances?environment=dev", {}, Code.ENV_MISMATCH),
        ("reader", "PUT", "/v2/instances/i-1?scope=compute:read", {}, Code.NO_ROUTE),
        ("admin", "DELETE", "/v2/instances/%2E%2E/instances/i-1", {}, Code.NO_ROUTE),
    ],
)
async def test_envoy_flavor(key: str, method: str, path: str, headers: dict[str, str], code: Code) -> None:
    async with client_for(Keys(), routes=ISSUE_ROUTES, proxy="envoy") as client:
        response = await client.request(
            method, VERIFY + path, headers={"Authorization": f"Bearer {key}", **headers}
        )
    assert response.headers["x-cnx-code"] == code, response.text


async def test_envoy_without_a_route_table_refuses_everything() -> None:
    validate = Keys()
    async with client_for(validate, proxy="envoy") as client:
        response = await client.get(
            VERIFY + "/v2/instances?scope=compute:read", headers={"Authorization": "Bearer reader"}
        )
    assert response.status_code == 403 and response.headers["x-cnx-code"] == "NO_ROUTE"
    assert validate.calls == [], "refused without a key lookup"


async def test_no_route_refuses_before_the_key_check() -> None:
    validate = Keys()
    async with client_for(validate, routes=ISSUE_ROUTES) as client:
        response = await client.get(VERIFY, headers=nginx("PUT", "/v2/instances/i-1"))
        empty = await client.get(VERIFY)
    for answer in (response, empty):
        assert answer.status_code == 403 and answer.headers["x-cnx-code"] == "NO_ROUTE"
        assert answer.json() == {"valid": False, "code": "NO_ROUTE", "message": answer.json()["message"]}
        assert "route" in answer.json()["message"]
    assert validate.calls == []


async def test_refusals_of_its_own_are_counted() -> None:
    registry = CollectorRegistry()
    app = ForwardAuthApp(
        Keys(), registry, trusted_proxies=[], ready=lambda: True, routes=RouteTable(ISSUE_ROUTES)
    )
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://v") as client:
        await client.get(VERIFY, headers=nginx("PUT", "/v2/x"))
        await client.get(
            VERIFY,
            headers={
                "Authorization": "Bearer reader",
                **nginx("GET", "/v2/instances", **{"X-Required-Scope": "storage:read"}),
            },
        )
        text = (await client.get("/metrics")).text
    assert 'cnx_validator_forward_auth_refusals_total{code="NO_ROUTE"} 1.0' in text
    assert 'cnx_validator_forward_auth_refusals_total{code="SCOPE_DENIED"} 1.0' in text


async def test_key_from_the_clients_query() -> None:
    validate = Recorder()
    async with client_for(validate) as client:
        await client.get(SCOPED + "&api_key=from-query")
        await client.get(SCOPED, headers=nginx("GET", "/v2/x?a=1&api_key=from-ingress"))
        await client.get(SCOPED, headers={"Authorization": "Bearer from-header"})
    async with client_for(validate, proxy="traefik") as client:
        await client.get(SCOPED, headers=traefik("GET", "/v2/x?api_key=from-traefik"))
    async with client_for(validate, routes=["* /**=-"], proxy="envoy") as client:
        await client.get(VERIFY + "/v2/x?api_key=from-envoy")
    assert [c[0] for c in validate.calls] == [
        "from-query",
        "from-ingress",
        "from-header",
        "from-traefik",
        "from-envoy",
    ]


def test_an_unknown_proxy_flavor_is_refused() -> None:
    with pytest.raises(ValueError, match="nginx"):
        ForwardAuthApp(
            Recorder(), CollectorRegistry(), trusted_proxies=[], ready=lambda: True, proxy="haproxy"
        )  # type: ignore[arg-type]


async def test_probes_and_unknown_paths() -> None:
    async with client_for(Recorder()) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json() == {"ready": True}
        assert (await client.get("/nope")).status_code == 404


def test_the_proxy_flavor_is_a_typed_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from shared.settings import Settings

    assert Settings().forward_auth_proxy == "nginx"
    monkeypatch.setenv("CNX_FORWARD_AUTH_PROXY", "traefik")
    assert Settings().forward_auth_proxy == "traefik"
    monkeypatch.setenv("CNX_FORWARD_AUTH_PROXY", "haproxy")
    with pytest.raises(ValidationError, match="forward_auth_proxy"):
        Settings()


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        # Two Authorization headers: nginx passes the first on, a dict keeps the last.
        (SCOPED, [("Authorization", "Bearer reader"), ("Authorization", "Bearer admin")]),
        (SCOPED, [("Authorization", "Bearer reader"), ("Authorization", "Bearer reader")]),
        # A header and an api_key in the client's own query (inside X-Original-URL) that disagree.
        (SCOPED, [("Authorization", "Bearer reader"), *nginx("GET", "/v2/x?api_key=admin").items()]),
        # A header and an api_key on the auth URL itself.
        (SCOPED + "&api_key=admin", [("Authorization", "Bearer reader")]),
    ],
)
async def test_two_credentials_that_may_differ_are_400_and_never_validated(
    url: str, headers: list[tuple[str, str]]
) -> None:
    validate = Keys()
    async with client_for(validate) as client:
        answer = await client.get(url, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "ambiguous_credentials"
    assert "reader" not in answer.text and "admin" not in answer.text.replace("ambiguous", "")
    assert validate.calls == [], "an ambiguous request never reaches the key check"


async def test_the_same_key_in_the_header_and_the_query_is_one_credential() -> None:
    validate = Keys()
    async with client_for(validate) as client:
        headers = {"Authorization": "Bearer reader", **nginx("GET", "/v2/x?api_key=reader")}
        assert (await client.get(SCOPED, headers=headers)).status_code == 200
