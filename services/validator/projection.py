"""The validator's in-memory projection of every key: what `decide` reads. Pure, no I/O, no clock.

Every replica holds every key (1,000,000 and more), so a key costs a few hundred bytes, not the
kilobytes of a pydantic view or a slotted object per key. The projection is column-shaped: the 32-byte
digest maps to a row number; per-row fields live in typed arrays (expiry, revision, account, profile), a
key's profile being an interned tuple that a million keys share a few hundred of (status, environment,
scopes and grants, IP networks, plan and bucket shape, and what `decide` derives from them: the allowed
scopes as a set, the networks as integers, the VALID reply as a template); key ids are packed in one
byte string, grace ends in a sparse map (only rotated keys have one). `Entry` is a light view of one
row, a tuple made on demand. About 270 bytes a key in all, most of it the digest dict.

Memory follows the live keys: each row knows when its key ended for good (`ends`: expiry, a rotated
key's grace end, a revocation; see `ends_at`), and `prune` takes a key out `retention` after that end,
so it answers NOT_FOUND rather than REVOKED/EXPIRED from then on. A pruned row's slot goes to the next
key created (rows of live keys never move, so an `Entry` held across an await stays right); the digest
dict is rebuilt once it holds more deleted slots than keys (a dict never shrinks by itself). A view
that is already past its end plus retention when it arrives (a replay from the start of the stream, a
store written before pruning existed) is never inserted.
"""

from __future__ import annotations

import ipaddress
import math
from array import array
from collections.abc import Container, Hashable, Iterable
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


def ends_at(status: str, expires: float, grace: float | None, at: float) -> float:
    """When a key stopped (or will stop) being usable for good, as a timestamp; INF for never (an active
    key without expiry). `expires` is its expiry (INF: none), `grace` a rotated key's grace end, `at` the
    time of the event that carries this state (INF: unknown). Expiry is final (only an active key can
    be renewed) and so is a revocation; a suspension is not an end (`status` is the key's own status,
    not the "revoked" a suspended account's keys answer). Pure: the same view and event give the same
    end on every replica and on a replay."""
    if status == "rotating" and grace is not None:
        return min(expires, grace)
    if status == "revoked" or status == "expired":
        return min(expires, at)
    return expires


def prunable(end: float, now: float, retention: float) -> bool:
    """A key that ended at `end` leaves memory and store `retention` seconds later (NOT_FOUND from then)."""
    return end + retention <= now


def view_ends_at(view: KeyView, at: float = INF) -> float:
    """`ends_at` of a view, carried by an event that occurred at `at`."""
    return ends_at(
        view.status,
        _timestamp(view.expires_at),
        None if view.grace_until is None else view.grace_until.timestamp(),
        at,
    )


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
    """digest -> row for every key seen, revoked and expired ones too (they answer REVOKED/EXPIRED, not
    NOT_FOUND) until `prune` takes them out, `retention` after their end."""

    def __init__(self) -> None:
        self.rows: dict[bytes, int] = {}
        self._key_ids = bytearray()
        self._key_id_end = array("I")
        self.expires = array("d")
        # When each key ended for good (`ends_at`; INF: not yet, or a free slot): what `prune` reads.
        self.ends = array("d")
        # row -> its digest (the dict's own key object, so a pointer a row), None for a free slot.
        self.digests: list[bytes | None] = []
        # Free slots by the length of the key id they held: a new key id of that length takes one over.
        self._free: dict[int, list[int]] = {}
        # Keys deleted from `rows` since it was last rebuilt.
        self._deleted = 0
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
        """The keys held (free slots are not keys)."""
        return len(self.rows)

    @property
    def slots(self) -> int:
        """Rows in the columns, keys and free slots: what the memory is sized by."""
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
            digests = self.digests
            self._by_key_id = {
                self.key_id_at(row): row for row in range(self.slots) if digests[row] is not None
            }
        return self._by_key_id.get(key_id)

    def revision_of(self, key_id: str) -> int:
        row = self._row_of(key_id)
        return 0 if row is None else self.revision[row]

    def entry(self, key_id: str) -> Entry | None:
        row = self._row_of(key_id)
        return None if row is None else Entry.of(self, row)

    def apply(self, view: KeyView, at: float = INF, cutoff: float = -INF) -> bool:
        """Take the view if it is newer than what we hold; False for a duplicate or stale event. `at`: when
        the event carrying it occurred (a revocation's time). A view that ended at or before `cutoff`
        (now - retention) is not taken in, and takes its key out if held."""
        rate_limit = view.rate_limit
        return self._put(
            view.key_id,
            view.digest,
            view.revision,
            view.account_id,
            view.expires_at,
            view.grace_until,
            view_ends_at(view, at),
            cutoff,
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

    def apply_dict(self, view: dict[str, Any], at: float = INF, cutoff: float = -INF) -> bool:
        """The same for a view decoded from JSON (hydration: no pydantic per key, the store wrote it
        from a validated KeyView)."""
        rate_limit = view.get("rate_limit")
        grace_until = view.get("grace_until")
        end = ends_at(
            view["status"],
            _timestamp(view.get("expires_at")),
            None if grace_until is None else _timestamp(grace_until),
            at,
        )
        return self._put(
            view["key_id"],
            view["digest"],
            view["revision"],
            view["account_id"],
            view.get("expires_at"),
            grace_until,
            end,
            cutoff,
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

    def load_json(self, stored: Iterable[tuple[str | bytes, float | None]], cutoff: float = -INF) -> int:
        """Hydration: `apply_dict` for many stored views at once, the same rules inlined (a million
        keys in a few seconds). Each comes with the end the store keeps beside it (`ends_at`; None:
        none); one that ended at or before `cutoff` is not taken in. Returns how many were taken."""
        loads = orjson.loads
        fromhex = bytes.fromhex
        fromisoformat = datetime.fromisoformat
        rows = self.rows
        revisions, expires, accounts, profiles = self.revision, self.expires, self.account, self.profile
        ends, digests = self.ends, self.digests
        key_ids, key_id_end = self._key_ids, self._key_id_end
        # The interning of `_Interned.add`, inlined: a million calls of it were a tenth of hydration.
        profile_index, account_index = self.profiles.index, self.accounts.index
        taken = 0
        for text, stored_end in stored:
            end = INF if stored_end is None else stored_end
            view = loads(text)
            try:
                digest_key = fromhex(view["digest"])
            except ValueError:
                digest_key = _digest_key(view["digest"])
            row = rows.get(digest_key)
            revision = view["revision"]
            if row is not None and revision <= revisions[row]:
                continue
            if end <= cutoff:
                if row is not None:
                    self._remove(row)
                    taken += 1
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
            if row is not None or self._free:
                # An update, or a new key while free slots wait (not at a start's hydration): the
                # general path.
                if row is None:
                    row = self._new_row(digest_key, view["key_id"])
                expires[row] = expiry
                ends[row] = end
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
            digests.append(digest_key)
            if grace_until is not None:
                self.grace[row] = _timestamp(grace_until)
            key_ids += view["key_id"].encode()
            key_id_end.append(len(key_ids))
            expires.append(expiry)
            ends.append(end)
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
        end: float,
        cutoff: float,
        profile: ProfileKey,
    ) -> bool:
        # A key's digest never changes (a rotation makes a new key), so the digest finds its row.
        digest_key = _digest_key(digest)
        row = self.rows.get(digest_key)
        if row is not None and revision <= self.revision[row]:
            return False
        if end <= cutoff:
            # Past its end and the retention already: out of memory (and never in).
            if row is None:
                return False
            self._remove(row)
            return True
        profile_n = self.profiles.add(profile, _profile)
        account_n = self.accounts.add(account_id)
        if row is None:
            row = self._new_row(digest_key, key_id)
        self.expires[row] = _timestamp(expires_at)
        self.ends[row] = end
        if grace_until is None:
            self.grace.pop(row, None)
        else:
            self.grace[row] = _timestamp(grace_until)
        self.revision[row] = revision
        self.account[row] = account_n
        self.profile[row] = profile_n
        return True

    def _new_row(self, digest_key: bytes, key_id: str) -> int:
        """A row for a new key: a free slot whose key id had the same length, or a new one at the end.
        Its fields are the caller's to set."""
        encoded = key_id.encode()
        free = self._free.get(len(encoded))
        if free:
            row = free.pop()
            start = self._key_id_end[row - 1] if row else 0
            self._key_ids[start : start + len(encoded)] = encoded
            self.digests[row] = digest_key
        else:
            row = len(self.revision)
            self._key_ids += encoded
            self._key_id_end.append(len(self._key_ids))
            self.expires.append(INF)
            self.ends.append(INF)
            self.revision.append(0)
            self.account.append(0)
            self.profile.append(0)
            self.digests.append(digest_key)
        self.rows[digest_key] = row
        if self._by_key_id is not None:
            self._by_key_id[key_id] = row
        return row

    def _remove(self, row: int) -> None:
        """Take a key out: its digest finds nothing from now on (NOT_FOUND), its slot is free."""
        digest_key = self.digests[row]
        if digest_key is None:
            return
        del self.rows[digest_key]
        self.digests[row] = None
        self._deleted += 1
        self.grace.pop(row, None)
        self.ends[row] = INF
        start = self._key_id_end[row - 1] if row else 0
        length = self._key_id_end[row] - start
        if self._by_key_id is not None:
            self._by_key_id.pop(self.key_id_at(row), None)
        self._free.setdefault(length, []).append(row)

    def prune(
        self, now: float, retention: float, start: int = 0, stop: int | None = None, keep: Container[int] = ()
    ) -> int:
        """Take out the keys of rows [start, stop) that ended `retention` or more before `now`
        (`prunable`), except rows in `keep` (usage not yet reported); how many were taken out. The
        caller walks the rows in slices, so no call holds the event loop for long."""
        cutoff = now - retention
        ends = self.ends
        stop = len(ends) if stop is None else min(stop, len(ends))
        removed = 0
        for offset, end in enumerate(ends[start:stop]):
            # Free slots have INF: only keys that ended pass.
            if end <= cutoff:
                row = start + offset
                if row not in keep:
                    self._remove(row)
                    removed += 1
        return removed

    def compact_index(self) -> bool:
        """Rebuild the digest dict once it holds more deleted entries than keys: a dict keeps its size
        after deletions until it next grows. One C-level copy (about 20 ms a million keys)."""
        if self._deleted <= len(self.rows):
            return False
        self.rows = dict(self.rows)
        self._deleted = 0
        return True
