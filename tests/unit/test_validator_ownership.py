"""Which replica owns a key's bucket: every replica agrees, and membership changes move few keys."""

from __future__ import annotations

from collections import Counter

from services.validator.ownership import Ownership, subject_token

KEYS = [f"key_{i:05d}" for i in range(3000)]


def three(me: str) -> Ownership:
    ownership = Ownership(me, ttl=2.0)
    for member in ("v-a", "v-b", "v-c"):
        ownership.heard(member, 0.0)
    return ownership


def test_alone_owns_everything() -> None:
    assert all(Ownership("v-a").mine(k) for k in KEYS[:50])


def test_replicas_agree_and_share_evenly() -> None:
    views = [three(m) for m in ("v-a", "v-b", "v-c")]
    owners = [tuple(v.owner(k) for v in views) for k in KEYS]
    assert all(len(set(o)) == 1 for o in owners)
    counts = Counter(o[0] for o in owners)
    assert set(counts) == {"v-a", "v-b", "v-c"} and min(counts.values()) > 850


def test_a_member_leaving_moves_only_its_keys() -> None:
    ownership = three("v-a")
    before = {k: ownership.owner(k) for k in KEYS}
    assert ownership.left("v-c") and ownership.members == ("v-a", "v-b")
    moved = [k for k in KEYS if ownership.owner(k) != before[k]]
    assert moved and all(before[k] == "v-c" for k in moved)


def test_silent_members_expire() -> None:
    ownership = Ownership("v-a", ttl=2.0)
    assert ownership.heard("v-b", 0.0) and not ownership.heard("v-b", 1.0)
    assert ownership.expire(2.5) == [] and ownership.members == ("v-a", "v-b")
    assert ownership.expire(3.5) == ["v-b"] and ownership.members == ("v-a",)
    assert not ownership.heard("v-a", 4.0), "our own heartbeat is not a peer"


def test_subject_token() -> None:
    assert subject_token("pod.ns.svc>*") == "pod-ns-svc--"
    assert subject_token("") == "validator"
