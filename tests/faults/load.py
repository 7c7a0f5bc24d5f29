"""The fault cases' load: creates, rotations and revocations through the issuer API, and its record of
what the answers imply."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.e2e.stack import poll


@dataclass
class LoadRecord:
    secrets: dict[str, str] = field(default_factory=dict)  # key id -> secret, for acknowledged keys
    expected: dict[str, str] = field(default_factory=dict)  # key id -> status the 2xx answers imply
    uncertain: set[str] = field(default_factory=set)  # keys whose last change got no clear answer
    committed: Counter[str] = field(default_factory=Counter)  # op -> 2xx count
    failed: Counter[str] = field(default_factory=Counter)  # "op status" -> count
    unexpected: list[str] = field(default_factory=list)  # 5xx other than 503, or a 4xx on a sure key
    unanswered_creates: int = 0  # creates and rotations without an answer: may have committed
    slowest_s: float = 0.0

    @property
    def attempts(self) -> int:
        return sum(self.committed.values()) + sum(self.failed.values())


class MixedLoad:
    """Creates, rotations (1 h grace) and revocations through the issuer API from a thread, paced.

    Mix: creates until 10 keys are active, then 50% create, 25% rotate, 25% revoke; with `verify_share`
    that share of calls is a `POST /v2/keys/verify` of a known key instead (it goes through NATS).
    """

    def __init__(
        self,
        issuer_url: str,
        admin_key: str,
        *,
        rate: float = 40.0,
        timeout: float = 5.0,
        seed: int = 7,
        create_body: Mapping[str, object] | None = None,
        verify_share: float = 0.0,
    ) -> None:
        self.verify_share = verify_share
        self.url = issuer_url
        self.headers = {"Authorization": f"Bearer {admin_key}"}
        self.interval = 1.0 / rate
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.create_body = dict(create_body or {})
        self.record = LoadRecord()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mixed-load", daemon=True)
        self._lock = threading.Lock()

    @property
    def attempts(self) -> int:
        with self._lock:
            return self.record.attempts

    def start(self) -> MixedLoad:
        self._thread.start()
        return self

    def stop(self) -> LoadRecord:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the load did not stop"
        return self.record

    def wait_attempts(self, more: int, timeout: float = 30.0) -> None:
        target = self.attempts + more
        poll(lambda: self.attempts >= target, timeout, what=f"{more} more load operations")

    def _active(self) -> list[str]:
        r = self.record
        return [k for k, s in r.expected.items() if s == "active" and k not in r.uncertain]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                active = self._active()
                if active and self.rng.random() < self.verify_share:
                    self._verify(client, self.rng.choice(active))
                    self._stop.wait(self.interval)
                    continue
                roll = self.rng.random()
                if len(active) < 10 or roll < 0.5:
                    self._create(client, n)
                elif roll < 0.75:
                    self._rotate(client, self.rng.choice(active))
                else:
                    self._revoke(client, self.rng.choice(active))
                self._stop.wait(self.interval)  # pacing of the load, not synchronisation

    def _call(
        self, client: httpx.Client, op: str, method: str, path: str, **kw: Any
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = client.request(method, path, **kw)
        except httpx.TransportError as exc:
            with self._lock:
                self.record.failed[f"{op} {type(exc).__name__}"] += 1
            return None
        finally:
            self.record.slowest_s = max(self.record.slowest_s, time.monotonic() - started)
        if response.is_success:
            with self._lock:
                self.record.committed[op] += 1
            return response
        with self._lock:
            self.record.failed[f"{op} {response.status_code}"] += 1
            if response.status_code >= 500 and response.status_code != 503:
                self.record.unexpected.append(f"{op} {response.status_code} {response.text[:200]}")
        return response

    def _create(self, client: httpx.Client, n: int) -> None:
        body = {"name": f"load {n}", "environment": "prod", "scopes": ["compute:read"], **self.create_body}
        response = self._call(client, "create", "POST", "/v2/keys", json=body)
        if response is None or response.status_code == 503:
            self.record.unanswered_creates += 1
        elif response.is_success:
            data = response.json()
            self.record.secrets[data["id"]] = data["key"]
            self.record.expected[data["id"]] = "active"

    def _rotate(self, client: httpx.Client, key_id: str) -> None:
        response = self._call(
            client, "rotate", "POST", "/v2/keys/rotate", json={"key_id": key_id, "grace_period_hours": 1}
        )
        if response is None or response.status_code == 503:
            self.record.uncertain.add(key_id)
            self.record.unanswered_creates += 1
        elif response.is_success:
            data = response.json()
            self.record.secrets[data["id"]] = data["key"]
            self.record.expected[data["id"]] = "active"
            self.record.expected[key_id] = "rotating"
        else:
            self.record.unexpected.append(f"rotate {key_id}: {response.status_code} {response.text[:200]}")

    def _verify(self, client: httpx.Client, key_id: str) -> None:
        self._call(client, "verify", "POST", "/v2/keys/verify", json={"key": self.record.secrets[key_id]})

    def _revoke(self, client: httpx.Client, key_id: str) -> None:
        response = self._call(client, "revoke", "POST", f"/v2/keys/{key_id}/revoke")
        if response is None or response.status_code == 503:
            self.record.uncertain.add(key_id)
        elif response.is_success:
            self.record.expected[key_id] = "revoked"
        else:
            self.record.unexpected.append(f"revoke {key_id}: {response.status_code} {response.text[:200]}")


def load_figures(record: LoadRecord) -> dict[str, object]:
    return {
        "ops_committed": sum(record.committed.values()),
        "committed": dict(record.committed),
        "ops_failed": sum(record.failed.values()),
        "failed": dict(record.failed),
        "unanswered_creates": record.unanswered_creates,
        "slowest_call_s": round(record.slowest_s, 2),
    }
