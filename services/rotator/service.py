"""Rotator use cases: keep each key's schedules in step with its events, and act when one fires.

No NATS and no HTTP here: schedules go out through a `Scheduler`, commands to the issuer through
`Commands`, events through the store's outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from shared.events import Event, GraceEnded, KeyEvent, KeyExpiring
from shared.timeutil import Clock, utcnow

from . import domain
from .store import RotatorKey, RotatorSchedule, RotatorStore

log = logging.getLogger("rotator")


class Scheduler(Protocol):
    async def publish(self, subject: str, at: str, target: str, payload: bytes) -> None: ...

    async def cancel(self, subject: str) -> None: ...


class Commands(Protocol):
    async def request(self, command: str, body: dict[str, Any]) -> dict[str, Any]: ...


class CommandFailed(RuntimeError):
    """The issuer did not carry out a command; the fired schedule is redelivered."""


@dataclass(frozen=True, slots=True)
class Fired:
    """The body of a fired schedule."""

    key_id: str
    purpose: str
    due: datetime
    expires_at: datetime | None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "key_id": self.key_id,
                "purpose": self.purpose,
                "due": self.due.isoformat(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            }
        ).encode()

    @classmethod
    def decode(cls, body: dict[str, Any]) -> Fired:
        expires = body.get("expires_at")
        return cls(
            key_id=str(body["key_id"]),
            purpose=str(body["purpose"]),
            due=datetime.fromisoformat(body["due"]),
            expires_at=datetime.fromisoformat(expires) if expires else None,
        )


# Events the rotator reacts to; its own (KeyExpiring, GraceEnded) carry no new revision.
CONSUMED = ("KeyCreated", "KeyUpdated", "KeyRotated", "KeyRenewed", "KeyRevoked", "KeyExpired")


class RotatorService:
    def __init__(
        self,
        store: RotatorStore,
        scheduler: Scheduler,
        commands: Commands,
        *,
        notices: Sequence[timedelta],
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.commands = commands
        self.notices = list(notices)
        self.clock = clock
        self.published = 0
        self.cancelled = 0

    async def on_key_event(self, event: KeyEvent) -> bool:
        """Apply a key event (newer revisions only), then push its schedule changes to NATS.

        The sync runs even for a stale or duplicate event: it finishes what a crash interrupted.
        """
        if event.type not in CONSUMED:
            return False
        view = event.key
        reference = min(event.occurred_at, self.clock())
        wanted = domain.plan(view, self.notices, reference)
        applied, rows = await self.store.apply_key(view, lambda existing: domain.diff(existing, wanted))
        if not applied:
            rows = await self.store.unsynced(view.key_id)
        await self._push_all(rows)
        return applied

    async def sync(self) -> int:
        """Publish pending schedules and purge cancelled ones, left over by a crash between our commit
        and NATS; returns how many changes went out."""
        done = 0
        while rows := await self.store.unsynced():
            await self._push_all(rows)
            done += len(rows)
        return done

    async def _push_all(self, rows: Sequence[RotatorSchedule]) -> None:
        if not rows:
            return
        await asyncio.gather(*(self._push(row) for row in rows))
        await self.store.mark_synced(rows)

    async def _push(self, row: RotatorSchedule) -> None:
        subject = domain.schedule_subject(row.purpose, row.key_id)
        if row.state == domain.PENDING:
            fired = Fired(row.key_id, row.purpose, row.due_at, row.expires_at)
            await self.scheduler.publish(
                subject,
                domain.at_header(row.due_at),
                domain.fired_subject(row.purpose, row.key_id),
                fired.encode(),
            )
            self.published += 1
        else:
            await self.scheduler.cancel(subject)
            self.cancelled += 1

    async def on_fired(self, fired: Fired) -> domain.Decision:
        """Act on one fired schedule (see `on_fired_many`). Raises CommandFailed to be redelivered."""
        (outcome,) = await self.on_fired_many([fired])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def on_fired_many(self, fireds: Sequence[Fired]) -> list[domain.Decision | BaseException]:
        """Act on fired schedules after re-checking each key against the current state.

        Work is done per batch (one read, the issuer commands concurrently, one write), because many
        keys may expire in the same second. An item whose command failed comes back as its exception
        and is not recorded, so that it is redelivered; the others are recorded with their events.
        """
        now = self.clock()
        contexts = await self.store.fired_contexts([(f.key_id, f.purpose) for f in fireds])
        decisions: list[domain.Decision] = []
        for fired in fireds:
            key, schedule = contexts.get((fired.key_id, fired.purpose), (None, None))
            decisions.append(
                domain.decide(
                    fired.purpose,
                    fired.due,
                    fired.expires_at,
                    key.state() if key else None,
                    schedule.due_at if schedule else None,
                    bool(schedule and schedule.last_notice),
                    now,
                )
            )
        acted = await asyncio.gather(
            *(
                self._act(f, d, contexts.get((f.key_id, f.purpose), (None, None))[0])
                for f, d in zip(fireds, decisions, strict=True)
            ),
            return_exceptions=True,
        )
        records: list[tuple[str, str, datetime, list[Event]]] = []
        outcomes: list[domain.Decision | BaseException] = []
        for fired, decision, result in zip(fireds, decisions, acted, strict=True):
            if isinstance(result, BaseException):
                log.warning("schedule %s for %s failed: %s", fired.purpose, fired.key_id, result)
                outcomes.append(result)
                continue
            outcomes.append(decision)
            if decision.action == domain.EARLY:
                continue
            if decision.action == domain.IGNORE:
                log.info("schedule %s for %s ignored: %s", fired.purpose, fired.key_id, decision.reason)
            records.append((fired.key_id, fired.purpose, fired.due, result))
        if records:
            duplicates = await self.store.mark_fired_many(records)
            for event_id in duplicates:
                log.info("event %s was already emitted (a redelivered schedule)", event_id)
        return outcomes

    async def _act(self, fired: Fired, decision: domain.Decision, key: RotatorKey | None) -> list[Event]:
        """Carry out a decision; returns the events to record with it."""
        if decision.action in (domain.EARLY, domain.IGNORE):
            return []
        assert key is not None
        view = key.view()
        if decision.action == domain.END_GRACE:
            await self._command("end_grace", fired.key_id)
            return [
                GraceEnded(
                    event_id=domain.notice_event_id(fired.key_id, fired.purpose, view.grace_until),
                    account_id=view.account_id,
                    key_id=view.key_id,
                    key=view,
                )
            ]
        if decision.action == domain.EXPIRE_KEY:
            await self._command("expire", fired.key_id)
            return []
        if decision.action == domain.RENEW:
            await self._command("renew", fired.key_id)
            return []
        # The event that changed the key (a revocation, a renewal) may still be on its way to us after an
        # outage: ask the system of record before telling the owner the key is about to expire.
        current = await self.commands.request("status", {"key_id": fired.key_id})
        if not domain.notice_still_wanted(current, fired.expires_at):
            log.info("notice %s for %s dropped: the issuer has it %s", fired.purpose, fired.key_id, current)
            return []
        return [
            KeyExpiring(
                event_id=domain.notice_event_id(fired.key_id, fired.purpose, fired.expires_at),
                account_id=view.account_id,
                key_id=view.key_id,
                key=view,
                notice=fired.purpose.removeprefix(domain.NOTICE_PREFIX),
            )
        ]

    async def _command(self, command: str, key_id: str) -> dict[str, Any]:
        answer = await self.commands.request(command, {"key_id": key_id})
        if not answer.get("ok"):
            # not_found: the issuer does not know the key; nothing will change that, so no retry.
            if answer.get("error") == "not_found":
                log.warning("issuer does not know key %s (%s)", key_id, command)
                return answer
            raise CommandFailed(f"issuer refused {command} for {key_id}: {answer}")
        return answer
