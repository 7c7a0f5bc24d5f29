"""The forward-auth route table: method + path pattern -> required scope (and optionally environment).

Set as `CNX_ROUTE_SCOPES`, comma-separated entries `METHOD PATH=SCOPE[@ENV]`, for example
`GET /v2/instances=compute:read,POST /v2/instances=compute:write,* /v2/instances/{id}/**=compute:admin@prod`.
The first entry that matches wins, so put specific paths before general ones. The table fails closed:
a request no entry matches is refused (`NO_ROUTE`) unless the auth URL's own `scope` parameter covers
it; end the table with a catch-all (`* /**=compute:admin`, or `* /**=-` for "any valid key") to
require something everywhere instead.

Patterns: `*` as the method matches any method (several: `GET|HEAD`); in the path, `*` or `{name}` is
exactly one segment, `**` is the rest of the path (zero or more segments, only last); anything else
matches literally. A trailing slash and the query string are ignored.

Paths an upstream could read as another path are refused, never matched (`REFUSED`): a later entry,
a catch-all above all, must not grant what an upstream that normalises would route to a stricter one.
Refused: no leading `/`; empty segments (`//`); segments ending in `.` (`.`, `..`, `instances.`), also
when percent-encoded (`%2e%2e`); encoded `/`, `\\` or `%` (`%2F`, `%5C`, `%25`: a second decoding
elsewhere); a raw `\\`, `;` (path parameters), `#`, control characters or a segment with leading or
trailing white space; invalid percent-encoding or UTF-8; and a path or method that would match another
entry if case were ignored (`/V2/Instances`, `delete`). Other percent-encoding is decoded first, as
upstreams do (`/v2/%69nstances` is `/v2/instances`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from shared import scopes as scope_rules

ENVIRONMENTS = ("prod", "stg", "dev")


class RouteError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Route:
    methods: frozenset[str] | None  # None = any method
    pattern: re.Pattern[str]
    folded: re.Pattern[str]  # the same pattern ignoring case, to refuse paths that differ only in case
    scope: str | None
    environment: str | None
    text: str


# The answer for a path (or method) the table will not read: refused, whatever the entries say.
REFUSED = Route(frozenset(), re.compile(r"(?!)"), re.compile(r"(?!)"), None, None, "(ambiguous request)")

# Bytes that, once decoded, would make the path another path for some upstream (see the docstring).
_BAD_DECODED = frozenset(b"/\\%;#") | frozenset(range(0x20)) | {0x7F}
_BAD_RAW = ("\\", ";", "#")


def canonical_path(uri: str) -> str | None:
    """The path of `uri` (query dropped) as an upstream would route it, or None when it is ambiguous."""
    path = uri.split("?", 1)[0]
    if not path.startswith("/") or any(c in path for c in _BAD_RAW):
        return None
    if "%" in path:
        try:
            raw = unquote_to_bytes(path)
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        # unquote leaves a malformed escape as it is: a `%` still there is malformed or was `%25`.
        encoded = re.findall(r"%([0-9A-Fa-f]{2})", path)
        if "%" in decoded or any(int(h, 16) in _BAD_DECODED for h in encoded):
            return None
        path = decoded
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return None
    if path == "/":
        return path
    segments = path[1:].split("/")
    if segments[-1] == "":
        segments.pop()  # one trailing slash is the same resource
    for segment in segments:
        if not segment or segment.endswith(".") or segment != segment.strip():
            return None
    return path


def _compile_path(path: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
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
    source = "".join(parts) + "/?" if parts else "/?"
    return re.compile(source), re.compile(source, re.IGNORECASE)


def parse_route(text: str) -> Route:
    head, sep, target = text.strip().rpartition("=")
    if not sep or not head.strip() or not target.strip():
        raise RouteError(f"route {text!r} is not 'METHOD /path=scope'")
    method, _, path = head.strip().partition(" ")
    path = path.strip()
    if not path:
        raise RouteError(f"route {text!r} has no path")
    scope_text, _, environment_text = target.strip().partition("@")
    scope = scope_text.strip() or None
    if scope in ("-", "none"):
        scope = None
    if scope is not None:
        try:
            scope_rules.parse(scope)
        except scope_rules.UnknownScope as exc:
            raise RouteError(f"route {text!r}: unknown scope {scope!r}") from exc
    environment = environment_text.strip() or None
    if environment is not None and environment not in ENVIRONMENTS:
        raise RouteError(f"route {text!r}: environment must be one of {', '.join(ENVIRONMENTS)}")
    methods = None if method in ("*", "ANY") else frozenset(m.upper() for m in method.split("|") if m)
    pattern, folded = _compile_path(path)
    return Route(methods, pattern, folded, scope, environment, text.strip())


class RouteTable:
    def __init__(self, entries: list[str] | None = None) -> None:
        self.routes = [parse_route(e) for e in entries or [] if e.strip()]
        # Keyed by (method, path without query): a few hundred distinct paths in practice; bounded.
        self.match = lru_cache(maxsize=4096)(self._match)

    def __bool__(self) -> bool:
        return bool(self.routes)

    def _first(self, method: str, path: str, folded: bool) -> Route | None:
        for route in self.routes:
            pattern = route.folded if folded else route.pattern
            if (route.methods is None or method in route.methods) and pattern.fullmatch(path):
                return route
        return None

    def _match(self, method: str, uri_path: str) -> Route | None:
        path = canonical_path(uri_path)
        if path is None or not method or method != method.upper():
            # HTTP methods are case-sensitive and nginx accepts only upper case: `delete` is not DELETE,
            # and must not fall through to a catch-all either.
            return REFUSED
        route = self._first(method, path, folded=False)
        if route is not self._first(method, path, folded=True):
            return REFUSED  # an upstream that ignores case would route it elsewhere
        return route

    def lookup(self, method: str, uri: str) -> Route | None:
        """The route of a request: the first entry that matches, None when none does, or `REFUSED`
        when the path is ambiguous (see the module docstring)."""
        return self.match(method, uri.split("?", 1)[0])
