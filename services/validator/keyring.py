"""The peppers `decide` tries and their HMAC-SHA256, prepared once per pepper (pure, no I/O).

The compiled extension (`_fastpath.c`: token shape, checksum, HMAC per pepper and digest lookup in one
call, 0.5 us a request instead of 2.1 us with a million keys) is used when the package was built with a
C compiler and OpenSSL's headers; `COMPILED` says whether it was. The Python code here and in
`token_shape` stays as the fallback and the reference: the two give the same answers for every input
(the unit tests hold them to it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

try:
    from ._fastpath import Hmac
except ImportError:  # installed without a compiler or libssl-dev (setup.py's optional=True)
    COMPILED = False
else:
    COMPILED = True


# HMAC-SHA256 (RFC 2104) with the key pads hashed once per pepper: copying two hash states per request
# is about half the cost of `hmac.new`, and a third of `hmac.digest` (OpenSSL 3 looks the MAC up on every
# call). `digest_with` equals `tokens.digest` (checked by the unit tests). A plain dict, not an
# lru_cache: a bytes argument would cost the cache a key tuple per request.
_PADS: dict[bytes, tuple[Any, Any]] = {}


def _pads_of(pepper: bytes) -> tuple[Any, Any]:
    key = pepper if len(pepper) <= 64 else hashlib.sha256(pepper).digest()
    key = key.ljust(64, b"\0")
    return hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key))


def hmac_pads(pepper: bytes) -> tuple[Any, Any]:
    pads = _PADS.get(pepper)
    if pads is None:
        pads = _pads_of(pepper)
        if len(_PADS) < 16:  # a handful of peppers (the current one and those being rotated out)
            _PADS[pepper] = pads
    return pads


def digest_bytes(pepper: bytes, key: str) -> bytes:
    """HMAC-SHA256(pepper, key), raw: the projection's row key (`decide` inlines it)."""
    inner, outer = hmac_pads(pepper)
    inner = inner.copy()
    inner.update(key.encode())
    outer = outer.copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def digest_with(pepper: bytes, key: str) -> str:
    return digest_bytes(pepper, key).hex()


class Keyring(tuple[bytes, ...]):
    """The peppers `decide` tries, in order (the current one, then those being rotated out), with each
    one's HMAC prepared once: the compiled states (`hmacs`, empty without the extension) and the Python
    pads (`pads`). A service builds its keyring once; `decide` takes any sequence of peppers too, and
    looks its keyring up (`keyring`). Its repr names no pepper: it ends up in logs and tracebacks."""

    hmacs: tuple[Hmac, ...]
    pads: tuple[tuple[Any, Any], ...]

    def __new__(cls, peppers: Iterable[bytes] = ()) -> Keyring:
        ring = super().__new__(cls, peppers)
        ring.pads = tuple(_pads_of(pepper) for pepper in ring)
        ring.hmacs = tuple(Hmac(pepper) for pepper in ring) if COMPILED else ()
        return ring

    def __repr__(self) -> str:
        return f"Keyring(<{len(self)} peppers>)"

    def __reduce__(self) -> tuple[type[Keyring], tuple[tuple[bytes, ...]]]:
        # The prepared states are not picklable (they are as good as the peppers); they are rebuilt.
        return Keyring, (tuple(self),)


# Keyrings of the plain sequences `decide` was given (tests, benchmarks), by their peppers: a handful.
KEYRINGS: dict[tuple[bytes, ...], Keyring] = {}


def keyring(peppers: Iterable[bytes]) -> Keyring:
    """The keyring of these peppers, built on first use."""
    key = tuple(peppers)
    ring = KEYRINGS.get(key)
    if ring is None:
        ring = Keyring(key)
        if len(KEYRINGS) < 16:
            KEYRINGS[key] = ring
    return ring
