"""Forward-auth over HTTP for ingress controllers (nginx auth_request / ingress-nginx auth-url, Traefik
ForwardAuth, Envoy ext_authz HTTP), plus probes and metrics.

A bare ASGI app rather than a framework route: this answers once per request the ingress serves, and
a framework's routing and response objects would cost more than the validation itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.validation import HTTP_STATUS, MESSAGES, Code

from .service import ValidatorService

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]
_UNAUTHORIZED = {Code.MISSING, Code.MALFORMED, Code.NOT_FOUND, Code.EXPIRED, Code.REVOKED}


class ForwardAuthApp:
    def __init__(
        self,
        service: ValidatorService,
        registry: CollectorRegistry,
        *,
        trusted_proxies: list[str],
        ready: Callable[[], bool],
    ) -> None:
        self.service = service
        self.registry = registry
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in trusted_proxies]
        self._ready = ready

    def client_ip(self, scope: Scope, headers: dict[bytes, bytes]) -> str | None:
        """The peer address, or the X-Forwarded-For client when the peer is a trusted proxy."""
        peer = scope.get("client")
        peer_ip = peer[0] if peer else None
        forwarded = headers.get(b"x-forwarded-for")
        if forwarded and peer_ip and self._trusted:
            try:
                address = ipaddress.ip_address(peer_ip)
            except ValueError:
                return peer_ip
            if any(address in net for net in self._trusted):
                # Walk right to left past our own proxies: the first untrusted hop is the client.
                hops = [h.strip() for h in forwarded.decode("latin-1").split(",") if h.strip()]
                for hop in reversed(hops):
                    try:
                        hop_address = ipaddress.ip_address(hop)
                    except ValueError:
                        return hop
                    if not any(hop_address in net for net in self._trusted):
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
        if path == "/v2/auth/verify":
            await self.verify(scope, send)
        elif path == "/healthz":
            await _send(send, 200, b'{"status":"ok"}', _JSON)
        elif path == "/readyz":
            ready = self._ready()
            await _send(send, 200 if ready else 503, orjson.dumps({"ready": ready}), _JSON)
        elif path == "/metrics":
            await _send(send, 200, generate_latest(self.registry), [(b"content-type", CONTENT_TYPE_LATEST.encode())])
        else:
            await _send(send, 404, b'{"error":{"code":"not_found","message":"no such path"}}', _JSON)

    async def verify(self, scope: Scope, send: Send) -> None:
        headers = dict(scope["headers"])
        key = None
        auth = headers.get(b"authorization")
        if auth:
            scheme, _, value = auth.decode("latin-1").partition(" ")
            key = value.strip() if scheme.lower() == "bearer" else auth.decode("latin-1").strip()
        elif scope.get("query_string"):
            key = dict(parse_qsl(scope["query_string"].decode("latin-1"))).get("api_key")
        required = headers.get(b"x-required-scope")
        environment = headers.get(b"x-required-environment")
        reply = self.service.validate(
            key,
            required.decode("latin-1") if required else None,
            self.client_ip(scope, headers),
            environment.decode("latin-1") if environment else None,
        )
        code = reply["code"]
        out = list(_JSON)
        if reply["valid"]:
            out.append((b"x-key-id", reply["key_id"].encode()))
            out.append((b"x-account-id", reply["account_id"].encode()))
            out.append((b"x-key-scopes", " ".join(reply["scopes"]).encode()))
            out.append((b"x-key-environment", reply["environment"].encode()))
        elif code in _UNAUTHORIZED:
            out.append((b"www-authenticate", b'Bearer error="invalid_token"'))
        body = orjson.dumps({"valid": reply["valid"], "code": code, "message": MESSAGES[code]})
        await _send(send, HTTP_STATUS[code], body, out)

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
