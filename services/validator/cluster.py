"""This validator replica among its peers: membership, the `keys.validate` subscriptions, forwarding.

`keys.validate` is answered on a lean connection of its own (natswire.py) in the `validators` queue
group: it is the hot path, and a general client's per-message machinery (nats-py's Msg objects,
subscription queue and task per callback; FastStream's decoding, middlewares and pydantic on top)
costs more than the validation itself. There each request is decided synchronously as its frame is
parsed, and the answers of one socket read leave in one write. Membership, plan changes and requests
passed on by peers use the service's nats-py connection.

Rate limits across replicas: each key's bucket lives on one replica, its owner (ownership.py). The
replica a request reaches checks it (throttle, key, scope, IP, environment); a valid request for a key
it does not own is passed on to `keys.validate.owner.<owner>` with a reply subject of its own
(`keys.validate.back.<me>.<n>`, subscribed on the lean connection too, which also receives the
server's "no responders" status for what it published), and the owner's answer is relayed to the
caller: nothing waits here, and if the owner is gone ("no responders") or silent for
`forward_timeout`, this replica answers from a bucket of its own instead of leaving the caller without
an answer. Replicas announce themselves on `keys.validate.members`. `platform.plans.changed` reaches
every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError

from shared.events import SUBJECT_VALIDATE
from shared.validation import SUBJECT_PLANS_CHANGED, Code, PlansChanged

from .freshness import NotFoundHold
from .natswire import WireClient, header_status
from .ownership import Ownership, subject_token
from .service import ValidatorService

log = logging.getLogger("validator")
QUEUE_GROUP = "validators"
SUBJECT_MEMBERS = f"{SUBJECT_VALIDATE}.members"
OWNER_PREFIX = f"{SUBJECT_VALIDATE}.owner"
BACK_PREFIX = f"{SUBJECT_VALIDATE}.back"
NO_RESPONDERS = b"503"
_MALFORMED = str(Code.MALFORMED)
_NOT_FOUND = Code.NOT_FOUND
_BAD_REQUEST = orjson.dumps({"valid": False, "code": Code.MALFORMED, "error": "request is not a JSON object"})
_BAD_INPUT = (orjson.JSONDecodeError, TypeError, AttributeError)


def owner_subject(instance: str) -> str:
    return f"{OWNER_PREFIX}.{subject_token(instance)}"


class Cluster:
    """This replica among its peers: membership, the validate subscriptions, and forwarding to owners.

    `nc` (nats-py) carries membership, plan changes and requests passed on by peers; `wire` (the lean
    connection) carries `keys.validate`, the requests this replica passes on, and their answers.
    """

    def __init__(
        self,
        nc: NatsClient | None,
        service: ValidatorService,
        me: str,
        *,
        wire: WireClient | None = None,
        heartbeat: float = 0.5,
        forward_timeout: float = 1.0,
    ) -> None:
        self.nc = nc
        self.wire = wire
        self.service = service
        self.me = subject_token(me)
        self.heartbeat = heartbeat
        self.forward_timeout = forward_timeout
        self.ownership = Ownership(self.me, ttl=4 * heartbeat)
        self.forwarded = 0
        self.forward_failures = 0
        # Answers this replica decided, by how the request reached it: each request is counted once, by
        # the replica that answered it (a request passed on to its key's owner counts there, as "peer").
        # Plain dicts of ints on the hot path; metrics.py turns them into a Prometheus counter.
        self.answers: dict[str, dict[str, int]] = {"nats": {}, "http": {}, "peer": {}}
        self._nats_answers = self.answers["nats"]
        self._http_answers = self.answers["http"]
        # Requests passed on and not answered yet: n -> (caller's reply subject, request, owner, when).
        self._pending: dict[bytes, tuple[bytes, bytes, str, float]] = {}
        self._next = 0
        self._back = f"{BACK_PREFIX}.{self.me}."
        self._back_bytes = self._back.encode()
        self._owner_subjects: dict[str, bytes] = {}
        self._subs: list[Subscription] = []
        self._validate_sid: bytes | None = None
        self._back_sid: bytes | None = None
        self._beat: asyncio.Task[None] | None = None
        self._settled: asyncio.Event | None = None
        # Read-your-writes (freshness.py): where a NOT_FOUND waits for this replica to catch up. None
        # (tests, or the setting at 0): answered at once.
        self.hold: NotFoundHold | None = None

    async def start(self) -> None:
        """Join: learn the peers first (they answer a hello at once), then take requests."""
        assert self.nc is not None and self.wire is not None
        self._subs.append(await self.nc.subscribe(SUBJECT_MEMBERS, cb=self._on_member))
        self._subs.append(await self.nc.subscribe(owner_subject(self.me), cb=self._on_owned))
        self._subs.append(await self.nc.subscribe(SUBJECT_PLANS_CHANGED, cb=self._on_plan))
        self._back_sid = self.wire.subscribe(self._back + "*", self._on_back)
        await self._announce("hello")
        await self.nc.flush()
        # Peers answer a new member's hello at once; give them one heartbeat before owning anything.
        await asyncio.sleep(self.heartbeat)
        self._validate_sid = self.wire.subscribe(SUBJECT_VALIDATE, self._on_request, queue=QUEUE_GROUP)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self.wire.flush()  # the server has the subscription when start returns
        self._beat = asyncio.create_task(self._beat_forever(), name="validator-heartbeat")

    async def stop(self) -> None:
        """Leave: stop taking requests, tell the peers (they take over our keys at once), settle what
        was passed on, drain."""
        if self.wire is not None and self._validate_sid is not None:
            await self.wire.drain_subscription(self._validate_sid)
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        with contextlib.suppress(Exception):
            await self._announce("bye")
        await self._settle_forwarded()
        if self.wire is not None and self._back_sid is not None:
            await self.wire.drain_subscription(self._back_sid)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.drain()

    async def _settle_forwarded(self) -> None:
        """Give owners their usual time to answer what we passed on, then answer the rest here."""
        if self._pending:
            self._settled = asyncio.Event()  # set by _on_back when the last one is answered
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self.forward_timeout)
        for n in list(self._pending):
            reply, data, _, _ = self._pending.pop(n)
            self._answer_here(reply, data)

    async def _announce(self, op: str) -> None:
        if self.nc is not None and self.nc.is_connected:
            await self.nc.publish(SUBJECT_MEMBERS, orjson.dumps({"id": self.me, "op": op}))

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                now = time.monotonic()
                gone = self.ownership.expire(now)
                if gone:
                    log.warning("validator replicas gone silent, taking over their keys: %s", gone)
                await self._announce("beat")
                timeout = self.forward_timeout
                late = [n for n, (_, _, _, sent) in self._pending.items() if now - sent > timeout]
                for n in late:
                    reply, data, owner, _ = self._pending.pop(n)
                    self.forward_failures += 1
                    log.warning("owner %s did not answer a passed-on request; answering here", owner)
                    self._answer_here(reply, data)
            except Exception:
                log.exception("heartbeat failed")

    async def _on_member(self, msg: Msg) -> None:
        try:
            body = orjson.loads(msg.data)
            member, op = str(body["id"]), body.get("op")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if member == self.me:
            return
        if op == "bye":
            if self.ownership.left(member):
                log.info("validator %s left; members now %s", member, self.ownership.members)
        elif self.ownership.heard(member, time.monotonic()):
            log.info("validator %s joined; members now %s", member, self.ownership.members)
            await self._announce("beat")

    def _on_request(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bytes | None:
        """`keys.validate`: the answer (the lean connection publishes it to `reply`), or None when a
        valid request was passed on to the key's owner."""
        service = self.service
        try:
            body = orjson.loads(data)
            if not isinstance(body, dict):
                raise TypeError
            now = service.clock()
            answer, entry = service.check(
                body.get("key"), body.get("scope"), body.get("ip"), body.get("environment"), now
            )
            if entry is not None and answer["valid"]:
                # Alone, this replica owns every key: no ownership hashing on the hot path.
                if len(self.ownership.members) > 1 and self._passed_on(entry.key_id, reply, data):
                    return None
                answer = service.admit(answer, entry, now)
            elif self.hold is not None and answer["code"] is _NOT_FOUND and reply:
                # Off the hot path: answered later, once this replica has caught up (or at once if full).
                if self.hold.hold(lambda final: self._settle_held(reply, data, body, final)):
                    return None
            counts, code = self._nats_answers, answer["code"]
            counts[code] = counts.get(code, 0) + 1
            return orjson.dumps(answer)
        except _BAD_INPUT:
            counts = self._nats_answers
            counts[_MALFORMED] = counts.get(_MALFORMED, 0) + 1
            return _BAD_REQUEST

    def _settle_held(self, reply: bytes, data: bytes, body: dict[str, Any], final: bool) -> bool:
        """A held `keys.validate` NOT_FOUND, decided again (freshness.Settle): answered, passed on to the
        key's owner, or left held (False) while the key is still unknown and the wait not over."""
        service = self.service
        now = service.clock()
        ip = body.get("ip")
        answer, entry = service.check(
            body.get("key"), body.get("scope"), ip, body.get("environment"), now, throttle=False
        )
        if answer["code"] == _NOT_FOUND:
            if not final:
                return False
        elif ip:
            service.throttle.forgive(ip, now)  # not a guess after all: a key younger than its request
        if entry is not None and answer["valid"]:
            if len(self.ownership.members) > 1 and self._passed_on(entry.key_id, reply, data):
                return True
            answer = service.admit(answer, entry, now)
        counts, code = self._nats_answers, answer["code"]
        counts[code] = counts.get(code, 0) + 1
        if self.wire is not None:
            self.wire.publish(reply, orjson.dumps(answer))
        return True

    def _passed_on(self, key_id: str, reply: bytes, data: bytes) -> bool:
        """Pass the request on to the key's owner, unless that is this replica (False)."""
        owner = self.ownership.owner(key_id)
        if owner == self.me:
            return False
        self._forward(owner, reply, data)
        return True

    def _forward(self, owner: str, reply: bytes, data: bytes) -> None:
        if not reply or self.wire is None:
            return  # nobody to relay an answer to
        subject = self._owner_subjects.get(owner)
        if subject is None:
            subject = self._owner_subjects[owner] = owner_subject(owner).encode()
        self.forwarded += 1
        self._next += 1
        n = b"%d" % self._next
        self._pending[n] = (reply, data, owner, time.monotonic())
        self.wire.publish(subject, data, reply=self._back_bytes + n)

    def _on_back(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """The owner's answer to a request we passed on: relay it to the caller. "No responders" means
        the owner is gone: forget it at once (its keys move) and answer here."""
        pending = self._pending.pop(subject[len(self._back_bytes) :], None)
        if pending is None or self.wire is None:
            return  # answered here already, after the owner was too slow
        caller, request, owner, _ = pending
        if self._settled is not None and not self._pending:
            self._settled.set()
        if header_status(headers) == NO_RESPONDERS:
            self.forward_failures += 1
            if self.ownership.left(owner):
                log.warning("validator %s has no subscription any more; taking over its keys", owner)
            self._answer_here(caller, request)
            return
        self.wire.publish(caller, data)

    def _answer_here(self, reply: bytes, data: bytes) -> None:
        if self.wire is not None:
            self.wire.publish(reply, self._answer_owned(data, self._nats_answers))

    def _answer_owned(self, data: bytes, counts: dict[str, int]) -> bytes:
        answer, code = self._decide_owned(data)
        counts[code] = counts.get(code, 0) + 1
        return answer

    def _decide_owned(self, data: bytes) -> tuple[bytes, str]:
        """Validate with this replica's own bucket, without the address throttle (the replica the
        request reached first applied it already): the answer and its code."""
        try:
            body = orjson.loads(data)
            if not isinstance(body, dict):
                raise TypeError
            answer = self.service.validate(
                body.get("key"), body.get("scope"), body.get("ip"), body.get("environment"), throttle=False
            )
            return orjson.dumps(answer), answer["code"]
        except _BAD_INPUT:
            return _BAD_REQUEST, _MALFORMED

    async def _on_owned(self, msg: Msg) -> None:
        """A request passed on by a peer: we own the key, so answer it here whatever we think of ownership
        (never pass it on again), without the address throttle the first replica already applied. The
        peer knew the key; if this replica does not yet, it waits until it has caught up."""
        if not msg.reply or self.nc is None:
            return
        answer, code = self._decide_owned(msg.data)
        if code == _NOT_FOUND and self.hold is not None:
            decided: list[tuple[bytes, str]] = []

            def settle(final: bool) -> bool:
                again = self._decide_owned(msg.data)
                if again[1] == _NOT_FOUND and not final:
                    return False
                decided.append(again)
                return True

            if await self.hold.held(settle):
                answer, code = decided[0]
        counts = self.answers["peer"]
        counts[code] = counts.get(code, 0) + 1
        await self.nc.publish(msg.reply, answer)

    async def _on_plan(self, msg: Msg) -> None:
        """`platform.plans.changed` {account_id, plan, rate_limit?}: new limits for the account's keys."""
        try:
            change = PlansChanged.model_validate_json(msg.data)
        except ValueError as exc:
            log.warning("ignoring a malformed plans.changed: %s", exc.__class__.__name__)
            if msg.reply and self.nc is not None:
                await self.nc.publish(msg.reply, b'{"ok":false,"error":"invalid"}')
            return
        applied = await self.service.change_plan(change)
        log.info("account %s moved to plan %s (applied=%s)", change.account_id, change.plan, applied)
        if msg.reply and self.nc is not None:
            answer = {"ok": True, "applied": applied, "instance": self.me}
            await self.nc.publish(msg.reply, orjson.dumps(answer))

    def validate_now(
        self, key: str | None, scope: str | None, ip: str | None, environment: str | None
    ) -> dict[str, Any] | None:
        """`validate`'s answer when it needs no waiting, else None with nothing changed: a NOT_FOUND
        this replica holds for read-your-writes, or a valid key another replica owns (its bucket)."""
        service = self.service
        now = service.clock()
        reply, entry = service.peek(key, scope, ip, environment, now)
        counts = self._http_answers
        if not reply["valid"]:
            code = reply["code"]
            if code == _NOT_FOUND and self.hold is not None:
                return None
            service.record_refusal(reply, entry, ip, now)
            counts[code] = counts.get(code, 0) + 1
            return reply
        if entry is None:  # never: a valid answer has its entry
            return None
        nc = self.nc
        if nc is not None and nc.is_connected and self.ownership.owner(entry.key_id) != self.me:
            return None
        reply = service.admit(reply, entry, now)
        code = reply["code"]
        counts[code] = counts.get(code, 0) + 1
        return reply

    async def validate(
        self, key: str | None, scope: str | None, ip: str | None, environment: str | None
    ) -> dict[str, Any]:
        """The same, for HTTP forward-auth: here we must wait for the owner's answer. If the owner does
        not answer in time, answer from a local bucket rather than fail the ingress."""
        service = self.service
        now = service.clock()
        counts = self._http_answers
        reply, entry = service.check(key, scope, ip, environment, now)
        if self.hold is not None and reply["code"] == _NOT_FOUND:
            reply, entry = await self._held_check(key, scope, ip, environment, reply)
            now = service.clock()
        if entry is None or not reply["valid"]:
            code = reply["code"]
            counts[code] = counts.get(code, 0) + 1
            return reply
        owner = self.ownership.owner(entry.key_id)
        if owner == self.me or self.nc is None or not self.nc.is_connected:
            reply = service.admit(reply, entry, now)
            code = reply["code"]
            counts[code] = counts.get(code, 0) + 1
            return reply
        body = {"key": key, "scope": scope, "ip": ip, "environment": environment}
        try:
            self.forwarded += 1
            answer = await self.nc.request(
                owner_subject(owner), orjson.dumps(body), timeout=self.forward_timeout
            )
            result: dict[str, Any] = orjson.loads(answer.data)
            return result
        except Exception as exc:
            self.forward_failures += 1
            if isinstance(exc, NoRespondersError) and self.ownership.left(owner):
                log.warning("validator %s has no subscription any more; taking over its keys", owner)
            else:
                log.warning("owner %s of key %s did not answer; using a local bucket", owner, entry.key_id)
            reply = service.admit(reply, entry, service.clock())
            code = reply["code"]
            counts[code] = counts.get(code, 0) + 1
            return reply

    async def _held_check(
        self,
        key: str | None,
        scope: str | None,
        ip: str | None,
        environment: str | None,
        first: dict[str, Any],
    ) -> tuple[dict[str, Any], Any]:
        """`check` again once this replica has caught up with the events stream (read-your-writes)."""
        assert self.hold is not None
        service = self.service
        decided: list[tuple[dict[str, Any], Any]] = []

        def settle(final: bool) -> bool:
            now = service.clock()
            again = service.check(key, scope, ip, environment, now, throttle=False)
            if again[0]["code"] == _NOT_FOUND:
                if not final:
                    return False
            elif ip:
                service.throttle.forgive(ip, now)
            decided.append(again)
            return True

        if await self.hold.held(settle):
            return decided[0]
        return first, None
