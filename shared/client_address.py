"""Which address a request came from, believing `X-Forwarded-For` only from the operator's own proxies.

Pure functions (no framework): the peer address of the connection and the header text go in, the
client address comes out. The header is believed only when the peer is one of `CNX_TRUSTED_PROXIES`;
then it is walked right to left (each proxy appends the address it saw) past every hop that is one of
our proxies too, and the first hop that is not is the client. Anything to the left of that hop was
written by the client and is never read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """`CNX_TRUSTED_PROXIES` as networks (the settings already refused a bad one)."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def parse_address(text: str | None) -> Address | None:
    """An address, or None when the text is not one. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`,
    what a dual-stack socket reports for an IPv4 peer) is taken as the IPv4 address it carries."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: Address | None, networks: Sequence[Network]) -> bool:
    # `in` is False across versions: an IPv4 address is in no IPv6 network.
    return address is not None and any(address in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str | None:
    """The client's address: the peer's, or the X-Forwarded-For client when the peer is a trusted proxy.

    `forwarded_for` is every X-Forwarded-For header of the request joined with commas, in order. A hop
    that is not an address is returned as it is (it matches no allowlist, so it is refused there)."""
    if not peer:
        return None
    if not forwarded_for or not trusted or not in_networks(parse_address(peer), trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not in_networks(parse_address(hop), trusted):
            return hop
    # Every hop is one of our proxies: the leftmost is as close to the client as we can tell.
    return hops[0] if hops else peer
