"""The validator's decision function: pure, no I/O, no clock.

`decide` runs on every request, so it answers malformed tokens before any digest or lookup, parses
nothing a key shares (a key's profile in the projection holds the allowed scopes as a set, its networks
as integers, its VALID reply as a template), and reads the compact projection of `projection.py`.

The first part of `decide` (the token's shape and checksum, its HMAC-SHA256 under each pepper, the
digest's row) is compiled when the extension was built (`keyring.COMPILED`); the Python path below,
which inlines `token_shape.well_formed` and `keyring.digest_bytes`, is the fallback. Peppers come to
`decide` as a `Keyring`, their HMAC states prepared once. The helpers it reads are bound as this
module's globals: the hot path does no attribute lookup on another module.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from shared import tokens
from shared.validation import Code

from .addresses import address_value
from .keyring import COMPILED, KEYRINGS, Keyring, keyring
from .projection import EXPIRED, INF, REVOKED, ROTATING, Entry, Projection
from .token_shape import PAIR62, SHAPE_FULLMATCH

if COMPILED:
    from ._fastpath import find_row

# The codes as module globals: the hot path reads them without an attribute lookup on the enum.
_MISSING, _MALFORMED, _NOT_FOUND = Code.MISSING, Code.MALFORMED, Code.NOT_FOUND
_REVOKED, _EXPIRED, _IP_NOT_ALLOWED = Code.REVOKED, Code.EXPIRED, Code.IP_NOT_ALLOWED
_ENV_MISMATCH, _SCOPE_DENIED = Code.ENV_MISMATCH, Code.SCOPE_DENIED
_MAX_TOKEN_LEN = tokens.MAX_TOKEN_LEN
_crc32 = zlib.crc32


def decide(
    projection: Projection,
    peppers: Sequence[bytes],
    key: str | None,
    scope: str | None,
    ip: str | None,
    environment: str | None,
    now: float,
) -> tuple[dict[str, Any], Entry | None]:
    """The answer to one validation request, and the entry it concerned (for usage and rate limits).

    The checks run in the order of the codes (DESIGN.md): a malformed token is answered before any
    digest, an unknown one before its row is read, a revoked one before its expiry, and so on."""
    if not key:
        return {"valid": False, "code": _MISSING}, None
    ring = peppers if type(peppers) is Keyring else KEYRINGS.get(tuple(peppers)) or keyring(peppers)
    if COMPILED:
        # Shape, checksum, HMAC per pepper and lookup in one C call: -1 for a malformed token.
        row = find_row(key, ring.hmacs, projection.rows)
        if row is None:
            return {"valid": False, "code": _NOT_FOUND}, None
        if row < 0:
            return {"valid": False, "code": _MALFORMED}, None
    else:
        # well_formed() and digest_bytes(), inlined: this is the hottest code of the service.
        try:
            if len(key) > _MAX_TOKEN_LEN or SHAPE_FULLMATCH(key) is None:
                return {"valid": False, "code": _MALFORMED}, None
        except TypeError:  # not a str (a number in a JSON body): malformed, as find_row answers
            return {"valid": False, "code": _MALFORMED}, None
        data = key.encode()
        if (PAIR62[key[-6:-4]] * 3844 + PAIR62[key[-4:-2]]) * 3844 + PAIR62[key[-2:]] != _crc32(data[:-6]):
            return {"valid": False, "code": _MALFORMED}, None
        row = None
        rows = projection.rows
        for inner, outer in ring.pads:
            inner = inner.copy()
            inner.update(data)
            outer = outer.copy()
            outer.update(inner.digest())
            row = rows.get(outer.digest())
            if row is not None:
                break
        if row is None:
            return {"valid": False, "code": _NOT_FOUND}, None
    profile = projection.profiles.values[projection.profile[row]]
    status, key_environment, _, _, _, _, _, allowed, nets, valid = profile
    ends = projection._key_id_end
    key_id = projection._key_ids[ends[row - 1] if row else 0 : ends[row]].decode()
    account_id = projection.accounts.values[projection.account[row]]
    entry = Entry((row, key_id, account_id, profile, projection))
    if status:  # not ACTIVE: revoked, or a rotated key past its grace, before the expiry check
        if status == REVOKED or (status == ROTATING and now >= projection.grace.get(row, INF)):
            return {"valid": False, "code": _REVOKED, "key_id": key_id, "account_id": account_id}, entry
        if status == EXPIRED:
            return {"valid": False, "code": _EXPIRED, "key_id": key_id, "account_id": account_id}, entry
    if now >= projection.expires[row]:
        return {"valid": False, "code": _EXPIRED, "key_id": key_id, "account_id": account_id}, entry
    if nets:
        address = address_value(ip)
        if address is not None:
            # By version: an IPv4 address is no IPv6 one with the same integer (127.0.0.1 is not
            # ::7f00:1).
            version, value = address
            for net_version, net, mask in nets:
                if net_version == version and value & mask == net:
                    break
            else:
                address = None  # in none of the key's networks
        if address is None:
            return {
                "valid": False,
                "code": _IP_NOT_ALLOWED,
                "key_id": key_id,
                "account_id": account_id,
            }, entry
    if environment and environment != key_environment:
        return {"valid": False, "code": _ENV_MISMATCH, "key_id": key_id, "account_id": account_id}, entry
    # An unknown scope is in no allowed set: SCOPE_DENIED, as for a known scope the key lacks.
    if scope and scope not in allowed:
        return {"valid": False, "code": _SCOPE_DENIED, "key_id": key_id, "account_id": account_id}, entry
    reply = valid.copy()
    reply["key_id"] = key_id
    reply["account_id"] = account_id
    return reply, entry
