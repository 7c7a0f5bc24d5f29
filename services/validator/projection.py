"""The validator's in-memory projection of every key: what `decide` reads. Pure, no I/O, no clock.

Every replica holds every key (1,000,000 and more), so a key costs a few hundred bytes, not the
kilobytes of a pydantic view or a slotted object per key. The projection is column-shaped: the 32-byte
digest maps to a row number; per-row fields live in typed arrays (expiry, revision, account, profile), a
key's profile being an interned tuple that a million keys share a few hundred of (status, environment,
scopes and grants, IP networks, plan and bucket shape, and what `decide` derives from them: the allowed
scopes as a set, the networks as integers, the VALID reply as a template); key ids are packed in one
byte string, grace ends in a sparse map (only rotated keys have one). `Entry` is a light view of one
row, a tuple made on demand. About 250 bytes a key in all, most of it the digest dict.
"""

from __future__ import annotations

import ipaddress
import math
from array import array
from collections.abc import Hashable, Iterable
from datetime import datetime
from operator import itemgetter
from typing import Any, Final

import orjson

from shared import scopes as scope_rules
from shared.events import KeyView
from shared.validation import Code

from .ratelimit import Shape, shape_of

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
INF = math.inf
# Row status codes (a suspended account's keys are stored as revoked until it is resumed).
ACTIVE, ROTATING, EXPIRED, REVOKED = 0, 1, 2, 3
STATUSES = ("active", "rotating", "expired", "revoked")
_STATUS_CODE = {name: n for n, name in enumerate(STATUSES)}


class _Interned:
    """Values many keys share (accounts, scope sets, allowlists, plans), stored once: value -> small int."""

    __slots__ = ("index", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.index: dict[Hashable, int] = {}

    def add(self, key: Hashable, make: Any = None) -> int:
        n = self.index.get(key)
        if n is None:
            n = self.index[key] = len(self.values)
            self.values.append(key if make is None else make(key))
        return n


def _timestamp(value: datetime | str | None) -> float:
    if value is None:
        return INF
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.timestamp()


def _digest_key(digest: str) -> bytes:
    """The stored hex digest as the 32 bytes `decide` computes; anything else can never match a token."""
    try:
        return bytes.fromhex(digest)
    except ValueError:
        return b"?" + digest.encode()


class Entry(tuple[int, str, str, "Profile", "Projection"]):
    """One key of the projection, as validation needs it: (row, key id, account id, profile, projection).

    A tuple, made by `decide` for every key it finds: building one is a single C call, where a class
    with an `__init__` costs a Python frame per request. The key and account ids, which every answer
    carries, are read once; the rest is read from the row on access."""

    __slots__ = ()

    # C-level getters: handlers read `entry.key_id` on every valid request.
    row = property(itemgetter(0), doc="The key's row in the projection.")
    key_id = property(itemgetter(1), doc="The key id (str).")
    account_id = property(itemgetter(2), doc="The account id (str).")
    profile = property(itemgetter(3), doc="What the key shares with others (see `Profile`).")

    @classmethod
    def of(cls, projection: Projection, row: int) -> Entry:
        return cls(
            (
                row,
                projection.key_id_at(row),
                projection.account_at(row),
                projection.profile_at(row),
                projection,
            )
        )

    @property
    def environment(self) -> str:
        return self[3][P_ENVIRONMENT]

    @property
    def scopes(self) -> list[str]:
        return list(self[3][P_SCOPES])

    @property
    def grants(self) -> dict[str, int]:
        return dict(self[3][P_GRANTS])

    @property
    def status(self) -> str:
        return STATUSES[self[3][P_STATUS]]

    @property
    def expires_at(self) -> float | None:
        value = self[4].expires[self[0]]
        return None if value == INF else value

    @property
    def grace_until(self) -> float | None:
        return self[4].grace.get(self[0])

    @property
    def networks(self) -> tuple[IPNetwork, ...]:
        return self[3][P_NETWORKS]

    @property
    def revision(self) -> int:
        return self[4].revision[self[0]]

    @property
    def plan(self) -> str:
        return self[3][P_PLAN]

    @property
    def shape(self) -> Shape | None:
        """The key's own token bucket (rate per second, capacity); an account's plan change overrides it."""
        return self[3][P_SHAPE]

    def __repr__(self) -> str:
        return f"Entry(key_id={self.key_id!r}, status={self.status!r}, revision={self.revision})"


# What keys share, interned as one tuple per distinct combination (a million keys have a few hundred):
# (status code, environment, scopes, grants, networks, plan, bucket shape, allowed scopes, networks as
# (IP version, network, mask) integers, VALID reply template). The allowed scopes are every
# `resource:action` the grants satisfy (storage:write grants storage:read too): the scope check is one
# set lookup, with no parsing per request.
Profile = tuple[
    int,
    str,
    list[str],
    dict[str, int],
    tuple[IPNetwork, ...],
    str,
    Shape | None,
    frozenset[str],
    tuple[tuple[int, int, int], ...],
    dict[str, Any],
]
# Final literals, so that a type checker knows which field of a Profile each one reads.
P_STATUS: Final = 0
P_ENVIRONMENT: Final = 1
P_SCOPES: Final = 2
P_GRANTS: Final = 3
P_NETWORKS: Final = 4
P_PLAN: Final = 5
P_SHAPE: Final = 6
P_ALLOWED: Final = 7
P_NET_INTS: Final = 8
P_REPLY: Final = 9
ProfileKey = tuple[str, str, tuple[str, ...], tuple[str, ...], str, int | None, int | None]


def _profile(key: ProfileKey) -> Profile:
    status, environment, scopes, cidrs, plan, rpm, burst = key
    rate_limit = None if rpm is None else {"requests_per_minute": rpm, "burst": burst}
    grants = scope_rules.grants(scopes)
    allowed = frozenset(
        f"{resource}:{action}" for resource, level in grants.items() for action in scope_rules.ACTIONS[:level]
    )
    networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
    scope_list = list(scopes)
    reply = {
        "valid": True,
        "code": Code.VALID,
        "key_id": "",
        "account_id": "",
        "scopes": scope_list,
        "environment": environment,
    }
    return (
        _STATUS_CODE[status],
        environment,
        scope_list,
        grants,
        networks,
        plan,
        shape_of(plan, rate_limit),
        allowed,
        tuple((n.version, int(n.network_address), int(n.netmask)) for n in networks),
        reply,
    )


class Projection:
    """digest -> row for every key ever seen (revoked ones too, to answer REVOKED not NOT_FOUND)."""

    def __init__(self) -> None:
        self.rows: dict[bytes, int] = {}
        self._key_ids = bytearray()
        self._key_id_end = array("I")
        self.expires = array("d")
        # Only keys in a rotation's grace period have a grace end: a sparse row -> timestamp map.
        self.grace: dict[int, float] = {}
        self.revision = array("I")
        self.account = array("I")
        self.profile = array("I")
        self.accounts = _Interned()
        self.profiles = _Interned()
        # key id -> row, built only when someone asks by key id (tests, tools): the hot path never does.
        self._by_key_id: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.revision)

    def key_id_at(self, row: int) -> str:
        start = self._key_id_end[row - 1] if row else 0
        return self._key_ids[start : self._key_id_end[row]].decode()

    def account_at(self, row: int) -> str:
        account: str = self.accounts.values[self.account[row]]
        return account

    def profile_at(self, row: int) -> Profile:
        profile: Profile = self.profiles.values[self.profile[row]]
        return profile

    def _row_of(self, key_id: str) -> int | None:
        if self._by_key_id is None:
            self._by_key_id = {self.key_id_at(row): row for row in range(len(self))}
        return self._by_key_id.get(key_id)

    def revision_of(self, key_id: str) -> int:
        row = self._row_of(key_id)
        return 0 if row is None else self.revision[row]

    def entry(self, key_id: str) -> Entry | None:
        row = self._row_of(key_id)
        return None if row is None else Entry.of(self, row)

    def apply(self, view: KeyView) -> bool:
        """Take the view if it is newer than what we hold; False for a duplicate or stale event."""
        rate_limit = view.rate_limit
        return self._put(
            view.key_id,
            view.digest,
            view.revision,
            view.account_id,
            view.expires_at,
            view.grace_until,
            (
                "revoked" if view.suspended else view.status,
                view.environment,
                tuple(view.scopes),
                tuple(view.ip_allowlist),
                view.plan,
                None if rate_limit is None else rate_limit.requests_per_minute,
                None if rate_limit is None else rate_limit.burst,
            ),
        )

    def apply_dict(self, view: dict[str, Any]) -> bool:
        """The same for a view decoded from JSON (hydration: no pydantic per key, the store wrote it
        from a validated KeyView)."""
        rate_limit = view.get("rate_limit")
        return self._put(
            view["key_id"],
            view["digest"],
            view["revision"],
            view["account_id"],
            view.get("expires_at"),
            view.get("grace_until"),
            (
                "revoked" if view.get("suspended") else view["status"],
                view["environment"],
                tuple(view["scopes"]),
                tuple(view.get("ip_allowlist") or ()),
                view["plan"],
                rate_limit["requests_per_minute"] if rate_limit else None,
                rate_limit.get("burst") if rate_limit else None,
            ),
        )

    def load_json(self, texts: Iterable[str | bytes]) -> int:
        """Hydration: `apply_dict` for many stored views at once, the same rules inlined (a million
        keys in a few seconds). Returns how many were taken."""
        loads = orjson.loads
        fromhex = bytes.fromhex
        fromisoformat = datetime.fromisoformat
        rows = self.rows
        revisions, expires, accounts, profiles = self.revision, self.expires, self.account, self.profile
        key_ids, key_id_end = self._key_ids, self._key_id_end
        # The interning of `_Interned.add`, inlined: a million calls of it were a tenth of hydration.
        profile_index, account_index = self.profiles.index, self.accounts.index
        taken = 0
        for text in texts:
            view = loads(text)
            try:
                digest_key = fromhex(view["digest"])
            except ValueError:
                digest_key = _digest_key(view["digest"])
            row = rows.get(digest_key)
            revision = view["revision"]
            if row is not None and revision <= revisions[row]:
                continue
            rate_limit = view.get("rate_limit")
            cidrs = view.get("ip_allowlist")
            profile_key = (
                "revoked" if view.get("suspended") else view["status"],
                view["environment"],
                tuple(view["scopes"]),
                tuple(cidrs) if cidrs else (),
                view["plan"],
                rate_limit["requests_per_minute"] if rate_limit else None,
                rate_limit.get("burst") if rate_limit else None,
            )
            profile_n = profile_index.get(profile_key)
            if profile_n is None:
                profile_n = self.profiles.add(profile_key, _profile)
            account_id = view["account_id"]
            account_n = account_index.get(account_id)
            if account_n is None:
                account_n = self.accounts.add(account_id)
            expires_at = view.get("expires_at")
            expiry = INF if expires_at is None else fromisoformat(expires_at).timestamp()
            grace_until = view.get("grace_until")
            if row is not None:
                expires[row] = expiry
                revisions[row] = revision
                accounts[row] = account_n
                profiles[row] = profile_n
                if grace_until is None:
                    self.grace.pop(row, None)
                else:
                    self.grace[row] = _timestamp(grace_until)
                taken += 1
                continue
            row = len(revisions)
            rows[digest_key] = row
            if grace_until is not None:
                self.grace[row] = _timestamp(grace_until)
            key_ids += view["key_id"].encode()
            key_id_end.append(len(key_ids))
            expires.append(expiry)
            revisions.append(revision)
            accounts.append(account_n)
            profiles.append(profile_n)
            if self._by_key_id is not None:
                self._by_key_id[view["key_id"]] = row
            taken += 1
        return taken

    def _put(
        self,
        key_id: str,
        digest: str,
        revision: int,
        account_id: str,
        expires_at: datetime | str | None,
        grace_until: datetime | str | None,
        profile: ProfileKey,
    ) -> bool:
        # A key's digest never changes (a rotation makes a new key), so the digest finds its row.
        digest_key = _digest_key(digest)
        row = self.rows.get(digest_key)
        if row is not None and revision <= self.revision[row]:
            return False
        profile_n = self.profiles.add(profile, _profile)
        account_n = self.accounts.add(account_id)
        expires = _timestamp(expires_at)
        if row is None:
            row = len(self.revision)
            self.rows[digest_key] = row
            if grace_until is not None:
                self.grace[row] = _timestamp(grace_until)
            self._key_ids += key_id.encode()
            self._key_id_end.append(len(self._key_ids))
            self.expires.append(expires)
            self.revision.append(revision)
            self.account.append(account_n)
            self.profile.append(profile_n)
            if self._by_key_id is not None:
                self._by_key_id[key_id] = row
            return True
        self.expires[row] = expires
        if grace_until is None:
            self.grace.pop(row, None)
        else:
            self.grace[row] = _timestamp(grace_until)
        self.revision[row] = revision
        self.account[row] = account_n
        self.profile[row] = profile_n
        return True
