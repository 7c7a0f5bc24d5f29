"""Which webhook targets may be called: the SSRF rule shared by the issuer (when a URL is given) and the
notifier (again, at send time).

A webhook URL is chosen by whoever holds an `admin:write` key, and the notifier POSTs to it from inside
the platform. Unless private targets are allowed (local stacks), a URL is refused when its scheme is not
http/https, when it carries userinfo, or when its host is, or resolves to, an address that is not on the
public Internet: loopback, private, link-local, unique-local, multicast, unspecified, reserved,
documentation, shared (100.64/10), and the IPv4-mapped, IPv4-compatible, 6to4 and NAT64 forms of those.
A host name that resolves to several addresses is refused if any of them is refused: the connection
could pick any of them.

`refusal_reason` and `parse_target` are pure; `TargetPolicy.check` adds the DNS lookup (in a thread, so
the event loop never blocks, and bounded in time). The notifier connects to the addresses this check
returned, never looking the name up again (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as strings.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

DEFAULT_RESOLVE_TIMEOUT = 2.0


class TargetRefused(ValueError):
    """The URL may never be called (until the rule or the DNS answer changes). The message names the
    host (for the caller who gave it); `reason` says why without it (for logs)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class TargetUnresolved(Exception):
    """The host name did not resolve (no such name, resolver down, or too slow): possibly temporary."""


def _nets(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


# Explicit, rather than only `is_global`: its tables differ across Python patch releases, and these are
# the ranges the rule promises (IANA special-purpose registries).
_V4_REFUSED: list[tuple[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]]] = [
    ("unspecified", _nets("0.0.0.0/8")),
    ("loopback", _nets("127.0.0.0/8")),
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("shared (carrier-grade NAT)", _nets("100.64.0.0/10")),
    ("link-local", _nets("169.254.0.0/16")),
    ("multicast", _nets("224.0.0.0/4")),
    (
        "reserved",
        _nets(
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
        ),
    ),
]
_V6_REFUSED: list[tuple[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]]] = [
    ("unspecified", _nets("::/128")),
    ("loopback", _nets("::1/128")),
    ("unique-local", _nets("fc00::/7")),
    ("link-local", _nets("fe80::/10")),
    ("site-local", _nets("fec0::/10")),
    ("multicast", _nets("ff00::/8")),
    ("local-use NAT64", _nets("64:ff9b:1::/48")),
    (
        "reserved",
        # ::/8 (includes the deprecated IPv4-compatible ::/96), discard-only, IETF protocol assignments
        # (Teredo among them), documentation, SRv6 SIDs.
        _nets("::/8", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16"),
    ),
]
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def refusal_reason(address: IPAddress) -> str | None:
    """Why a webhook may not connect to `address`, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = None
        form = ""
        if address in _MAPPED:
            embedded, form = address.ipv4_mapped, "IPv4-mapped"
        elif address in _NAT64:
            embedded, form = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
        elif address in _SIX_TO_FOUR:
            embedded, form = address.sixtofour, "6to4"
        if embedded is not None:
            inner = refusal_reason(embedded)
            return f"{form} form of a {inner} address" if inner else None
        table = _V6_REFUSED
    else:
        table = _V4_REFUSED
    for reason, networks in table:
        if any(address in network for network in networks):
            return reason
    if not address.is_global:
        return "not globally routable"
    return None


# Host parsing, as browsers (WHATWG URL) and getaddrinfo read it: `0x7f000001`, `2130706433`,
# `0177.0.0.1` and `127.1` all mean 127.0.0.1, so they are decoded before the rule is applied.


def _ends_in_number(label: str) -> bool:
    if label.isdigit():
        return True
    return label.startswith(("0x", "0X")) and all(c in "0123456789abcdefABCDEF" for c in label[2:])


def _ipv4_number(part: str) -> int:
    if part == "":
        raise TargetRefused("the host is not a valid IPv4 address")
    base = 10
    if part[:2] in ("0x", "0X"):
        part, base = part[2:] or "0", 16
    elif len(part) > 1 and part.startswith("0"):
        part, base = part[1:], 8
    try:
        return int(part, base)
    except ValueError as exc:
        raise TargetRefused("the host is not a valid IPv4 address") from exc


def _whatwg_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a host written as numbers stands for; None for a name."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts = parts[:-1]
    if not _ends_in_number(parts[-1]):
        return None
    if len(parts) > 4:
        raise TargetRefused("the host is not a valid IPv4 address")
    numbers = [_ipv4_number(p) for p in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise TargetRefused("the host is not a valid IPv4 address")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A URL taken apart: what to dial (`addresses`, once checked) and what to say (`host_header`,
    the TLS server name `host`, `target` the path and query)."""

    url: str
    scheme: str
    host: str  # lower case, no brackets, no trailing dot: the TLS server name and the DNS query
    port: int
    target: str  # path and query, as sent on the request line
    literal: IPAddress | None  # the host, when it is an address
    addresses: tuple[IPAddress, ...] = field(default=())

    @property
    def host_header(self) -> str:
        shown = f"[{self.host}]" if isinstance(self.literal, ipaddress.IPv6Address) else self.host
        default = 443 if self.scheme == "https" else 80
        return shown if self.port == default else f"{shown}:{self.port}"


def parse_target(url: str) -> WebhookTarget:
    """Scheme, userinfo and host form: the checks that need no DNS. Raises TargetRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused("the URL cannot be parsed") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TargetRefused("only http and https URLs are accepted")
    # Credentials in a URL end up in proxies' and receivers' logs; and `a@b` hides the real host.
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise TargetRefused("the URL must not carry a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TargetRefused("the URL has no host")
    literal: IPAddress | None
    if parts.netloc.split("@")[-1].startswith("["):
        if "%" in host:
            raise TargetRefused("an IPv6 zone is not accepted in a webhook URL")
        try:
            literal = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise TargetRefused("the host is not a valid IPv6 address") from exc
    else:
        literal = _whatwg_ipv4(host)
        if literal is not None:
            host = str(literal)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return WebhookTarget(
        url=url,
        scheme=scheme,
        host=host,
        port=port if port is not None else (443 if scheme == "https" else 80),
        target=target,
        literal=literal,
    )


def _refuse_address(host: str, address: IPAddress) -> None:
    reason = refusal_reason(address)
    if reason is not None:
        what = f"a {reason} address" if str(address) == host else f"resolves to a {reason} address"
        shown = host if str(address) == host else f"{host} resolves to {address}, which"
        raise TargetRefused(f"{shown} is a {reason} address; webhooks go to public addresses only", what)


async def system_resolver(host: str, port: int) -> list[str]:
    """getaddrinfo in the loop's thread pool (never blocking the loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """The rule with its setting (`CNX_WEBHOOK_ALLOW_PRIVATE`) and a resolver (injectable for tests)."""

    allow_private: bool
    resolver: Resolver = system_resolver
    resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT

    def check_literal(self, url: str) -> WebhookTarget:
        """The checks that need no DNS: scheme, userinfo, an address host, `localhost`."""
        parsed = parse_target(url)
        if not self.allow_private:
            if parsed.literal is not None:
                _refuse_address(parsed.host, parsed.literal)
            elif parsed.host == "localhost" or parsed.host.endswith(".localhost"):
                # RFC 6761: always loopback, whatever a resolver says.
                raise TargetRefused(
                    f"{parsed.host} is a loopback name; webhooks go to public addresses only",
                    "a loopback name",
                )
        return parsed

    async def check(self, url: str) -> WebhookTarget:
        """The target with the addresses to dial, every one of them checked. Raises TargetRefused, or
        TargetUnresolved when the name does not resolve within `resolve_timeout`."""
        parsed = self.check_literal(url)
        if parsed.literal is not None:
            return _with_addresses(parsed, [parsed.literal])
        try:
            async with asyncio.timeout(self.resolve_timeout):
                answers = await self.resolver(parsed.host, parsed.port)
        except TimeoutError as exc:
            raise TargetUnresolved(f"{parsed.host} did not resolve within {self.resolve_timeout}s") from exc
        except OSError as exc:  # socket.gaierror and the like
            raise TargetUnresolved(f"{parsed.host} did not resolve ({exc})") from exc
        addresses: list[IPAddress] = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer.split("%")[0])
            except ValueError as exc:
                raise TargetRefused(f"{parsed.host} resolves to something that is not an address") from exc
            if not self.allow_private:
                _refuse_address(parsed.host, address)
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise TargetUnresolved(f"{parsed.host} resolves to no address")
        return _with_addresses(parsed, addresses)


def _with_addresses(parsed: WebhookTarget, addresses: Sequence[IPAddress]) -> WebhookTarget:
    # An IPv4-mapped answer is dialled as the IPv4 address it stands for (it was checked as that).
    dial = tuple(
        a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a for a in addresses
    )
    return WebhookTarget(
        url=parsed.url,
        scheme=parsed.scheme,
        host=parsed.host,
        port=parsed.port,
        target=parsed.target,
        literal=parsed.literal,
        addresses=dial,
    )
