"""Which validator replica owns (holds the rate-limit bucket of) which key.

Replicas announce themselves on `keys.validate.members` every heartbeat; a replica not heard for
`ttl` seconds is gone, and one that stops cleanly says goodbye at once. The owner of a key is chosen by
rendezvous hashing (highest hash of member + key id) over the live members: every replica computes
the same owner from the same member list, and a member joining or leaving moves only ~1/n of the keys.
Pure: given `now`, no I/O.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def subject_token(instance: str) -> str:
    """An instance name usable as one NATS subject token."""
    return _UNSAFE.sub("-", instance) or "validator"


def _weight(member: str, key_id: str) -> bytes:
    return hashlib.blake2b(f"{member}\x00{key_id}".encode(), digest_size=8).digest()


class Ownership:
    CACHE_MAX = 200_000

    def __init__(self, me: str, ttl: float = 2.0) -> None:
        self.me = me
        self.ttl = ttl
        self._seen: dict[str, float] = {}
        self.members: tuple[str, ...] = (me,)
        self._owner_of: dict[str, str] = {}

    def _recompute(self) -> None:
        self.members = tuple(sorted({self.me, *self._seen}))
        self._owner_of = {}

    def heard(self, member: str, now: float) -> bool:
        """A heartbeat from `member`; True if it is new (the member list changed)."""
        if member == self.me:
            return False
        new = member not in self._seen
        self._seen[member] = now
        if new:
            self._recompute()
        return new

    def left(self, member: str) -> bool:
        if self._seen.pop(member, None) is None:
            return False
        self._recompute()
        return True

    def expire(self, now: float) -> list[str]:
        gone = [m for m, seen in self._seen.items() if now - seen > self.ttl]
        for member in gone:
            del self._seen[member]
        if gone:
            self._recompute()
        return gone

    def owner(self, key_id: str) -> str:
        members = self.members
        if len(members) == 1:
            return members[0]
        owner = self._owner_of.get(key_id)
        if owner is None:
            owner = max(members, key=lambda m: _weight(m, key_id))
            if len(self._owner_of) >= self.CACHE_MAX:
                self._owner_of = {}
            self._owner_of[key_id] = owner
        return owner

    def mine(self, key_id: str) -> bool:
        return self.owner(key_id) == self.me
