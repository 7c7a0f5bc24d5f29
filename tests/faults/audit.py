"""The catalog-versus-validator audit of the fault cases: the point of every case.

Three sources must agree once the system has settled:
- the load's own record: every 2xx it got (a create, a rotation, a revocation) must be in the catalog;
- the issuer's catalog (its store and `GET /v2/keys`) and its outbox (every event published);
- the validator's projection (its store, key by key and revision by revision) and its answers over
  HTTP forward-auth for every secret the load holds.
"Lost" counts what one side has and the next lacks, "phantom" what the validator has and the catalog
does not, "duplicated" an event id that reached the stream twice or a rotation that made two keys.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import httpx
import orjson

from tests.e2e.stack import ProcessStack, poll
from tests.faults.harness import Stores
from tests.faults.load import LoadRecord
from tests.faults.streams import read_stream

EXPECTED_CODE = {"active": "VALID", "rotating": "VALID", "revoked": "REVOKED", "expired": "EXPIRED"}


def catalog_via_api(issuer_url: str, admin_key: str) -> dict[str, str]:
    """key id -> status, every page of GET /v2/keys."""
    out: dict[str, str] = {}
    cursor: str | None = None
    with httpx.Client(base_url=issuer_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10) as c:
        while True:
            params: dict[str, object] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            response = c.get("/v2/keys", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            out.update({k["id"]: k["status"] for k in page["data"]})
            cursor = page["next_cursor"]
            if not cursor:
                return out


def issuer_rows(stores: Stores) -> dict[str, tuple[str, int]]:
    return {k: (s, r) for k, s, r in stores.query("issuer", "SELECT id, status, revision FROM issuer_keys")}


def validator_rows(stores: Stores, service: str = "validator") -> dict[str, tuple[str, int]]:
    rows = stores.query(service, "SELECT key_id, revision, view FROM validator_keys")
    return {k: (str(orjson.loads(v)["status"]), int(r)) for k, r, v in rows}


def outbox_pending(stores: Stores) -> int:
    return int(stores.query("issuer", "SELECT count(*) FROM issuer_outbox WHERE published_at IS NULL")[0][0])


def validator_code(client: httpx.Client, secret: str) -> str:
    # `scope` on the auth URL: forward-auth refuses (NO_ROUTE) what nothing the operator set covers.
    response = client.get("/v2/auth/verify?scope=compute:read", headers={"Authorization": f"Bearer {secret}"})
    return response.headers.get("x-cnx-code", f"HTTP {response.status_code}")


@dataclass
class Audit:
    keys: int
    events_published: int
    events_in_stream: int
    events_applied: int
    lost: int
    phantom: int
    duplicated: int
    converge_s: float
    problems: list[str]

    def figures(self) -> dict[str, object]:
        return {
            "keys": self.keys,
            "events_published": self.events_published,
            "events_in_stream": self.events_in_stream,
            "events_applied": self.events_applied,
            "lost": self.lost,
            "phantom": self.phantom,
            "duplicated": self.duplicated,
            "converge_s": round(self.converge_s, 2),
        }


def audit(
    stack: ProcessStack,
    stores: Stores,
    nats_url: str,
    record: LoadRecord | None,
    *,
    timeout: float = 60.0,
    validators: tuple[str, ...] = ("validator",),
) -> Audit:
    """Wait until the outbox is empty and every validator store equals the catalog, then check it all."""
    started = time.monotonic()

    def settled() -> bool:
        if outbox_pending(stores):
            return False
        catalog = issuer_rows(stores)
        return all(validator_rows(stores, v) == catalog for v in validators)

    try:
        poll(settled, timeout, interval=0.2, what="validator store equal to the catalog")
    except AssertionError:
        pass  # counted below, with the detail of what differs
    converge_s = time.monotonic() - started
    problems: list[str] = []
    catalog = issuer_rows(stores)
    lost = phantom = duplicated = 0
    for name in validators:
        view = validator_rows(stores, name)
        for key_id, row in catalog.items():
            if view.get(key_id) != row:
                lost += 1
                problems.append(f"{name}: {key_id} catalog {row} validator {view.get(key_id)}")
        for key_id in view.keys() - catalog.keys():
            phantom += 1
            problems.append(f"{name}: phantom {key_id}")

    # The API's view, and the validator's answer for every secret the load holds (memory, not store).
    api = catalog_via_api(stack.url("issuer"), stack.admin_key)
    if set(api) != set(catalog):
        problems.append(f"GET /v2/keys lists {len(api)} keys, the store {len(catalog)}")
    if record is not None:
        for name in validators:
            with httpx.Client(base_url=stack.url(name), timeout=5) as client:
                for key_id, secret in record.secrets.items():
                    want = EXPECTED_CODE[api.get(key_id, "missing")] if key_id in api else "in catalog"
                    got = validator_code(client, secret)
                    if got != want:
                        lost += 1
                        problems.append(f"{name}: {key_id} ({api.get(key_id)}) answered {got}, want {want}")
        # Every 2xx is reflected in the catalog.
        for key_id, status in record.expected.items():
            if key_id in record.uncertain:
                continue
            if api.get(key_id) != status:
                lost += 1
                problems.append(f"acknowledged {status} for {key_id}, catalog says {api.get(key_id)}")
        # Nothing doubled: keys the load did not acknowledge are at most its unanswered creates.
        unacknowledged = len(set(catalog) - set(record.secrets)) - 1  # the bootstrap admin key
        if unacknowledged > record.unanswered_creates:
            duplicated += unacknowledged - record.unanswered_creates
            problems.append(f"{unacknowledged} unacknowledged keys > {record.unanswered_creates} unanswered")
    successors = stores.query(
        "issuer",
        "SELECT rotated_from, count(*) FROM issuer_keys WHERE rotated_from IS NOT NULL "
        "GROUP BY rotated_from HAVING count(*) > 1",
    )
    duplicated += len(successors)
    problems += [f"{old} was rotated into {n} keys" for old, n in successors]

    # The outbox against the stream: every event out once.
    outbox = [row[0] for row in stores.query("issuer", "SELECT event_id FROM issuer_outbox")]
    messages = read_stream(nats_url)
    ids = Counter(m.msg_id for m in messages)
    doubled = [i for i, n in ids.items() if n > 1]
    duplicated += len(doubled)
    problems += [f"event {i} is in the stream {ids[i]} times" for i in doubled[:5]]
    missing = [e for e in outbox if e not in ids]
    lost += len(missing)
    problems += [f"outbox event {e} never reached the stream" for e in missing[:5]]
    last_applied = min(
        int(stores.query(v, "SELECT coalesce(max(last_seq), 0) FROM validator_cursor")[0][0])
        for v in validators
    )
    key_events = [m for m in messages if m.subject != "keys.events.key.used"]
    return Audit(
        keys=len(catalog),
        events_published=len(outbox),
        events_in_stream=len(messages),
        events_applied=sum(1 for m in key_events if m.seq <= last_applied),
        lost=lost,
        phantom=phantom,
        duplicated=duplicated,
        converge_s=converge_s,
        problems=problems,
    )
