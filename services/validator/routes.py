"""The forward-auth route table: method + path pattern -> required scope (and optionally environment).

Set as `CNX_ROUTE_SCOPES`, comma-separated entries `METHOD PATH=SCOPE[@ENV]`, for example
`GET /v2/instances=compute:read,POST /v2/instances=compute:write,* /v2/instances/{id}/**=compute:admin@prod`.
Used when the ingress sends no `X-Required-Scope`. The first entry that matches wins, so put specific
paths before general ones; a path no entry matches needs only a valid key (add `* /**=...` as a
catch-all to require a scope everywhere).

Patterns: `*` as the method matches any method (several: `GET|HEAD`); in the path, `*` or `{name}` is
exactly one segment, `**` is the rest of the path (zero or more segments, only last); anything else
matches literally. A trailing slash and the query string are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from shared import scopes as scope_rules

ENVIRONMENTS = ("prod", "stg", "dev")


class RouteError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Route:
    methods: frozenset[str] | None  # None = any method
    pattern: re.Pattern[str]
    scope: str | None
    environment: str | None
    text: str


def _compile_path(path: str) -> re.Pattern[str]:
    if not path.startswith("/"):
        raise RouteError(f"route path {path!r} must start with /")
    segments = [s for s in path.strip("/").split("/") if s]
    parts: list[str] = []
    for i, segment in enumerate(segments):
        if segment == "**":
            if i != len(segments) - 1:
                raise RouteError(f"** must be the last segment in {path!r}")
            parts.append("(?:/.*)?")
        elif segment == "*" or (segment.startswith("{") and segment.endswith("}")):
            parts.append("/[^/]+")
        else:
            parts.append("/" + re.escape(segment))
    return re.compile("".join(parts) + "/?" if parts else "/?")


def parse_route(text: str) -> Route:
    head, sep, target = text.strip().rpartition("=")
    if not sep or not head.strip() or not target.strip():
        raise RouteError(f"route {text!r} is not 'METHOD /path=scope'")
    method, _, path = head.strip().partition(" ")
    path = path.strip()
    if not path:
        raise RouteError(f"route {text!r} has no path")
    scope, _, environment = target.strip().partition("@")
    scope = scope.strip() or None
    if scope in ("-", "none"):
        scope = None
    if scope is not None:
        try:
            scope_rules.parse(scope)
        except scope_rules.UnknownScope as exc:
            raise RouteError(f"route {text!r}: unknown scope {scope!r}") from exc
    environment = environment.strip() or None
    if environment is not None and environment not in ENVIRONMENTS:
        raise RouteError(f"route {text!r}: environment must be one of {', '.join(ENVIRONMENTS)}")
    methods = None if method in ("*", "ANY") else frozenset(m.upper() for m in method.split("|") if m)
    return Route(methods, _compile_path(path), scope, environment, text.strip())


class RouteTable:
    def __init__(self, entries: list[str] | None = None) -> None:
        self.routes = [parse_route(e) for e in entries or [] if e.strip()]
        self.match = lru_cache(maxsize=4096)(self._match)

    def __bool__(self) -> bool:
        return bool(self.routes)

    def _match(self, method: str, path: str) -> Route | None:
        method = method.upper()
        for route in self.routes:
            if (route.methods is None or method in route.methods) and route.pattern.fullmatch(path):
                return route
        return None

    def lookup(self, method: str, uri: str) -> tuple[str | None, str | None]:
        """(scope, environment) the route needs; (None, None) when no route matches."""
        path = uri.split("?", 1)[0].split("#", 1)[0] or "/"
        route = self.match(method, path)
        return (route.scope, route.environment) if route else (None, None)
