"""Rotator use cases: keep each key's schedules in step with its events, and act when one fires.

No NATS, no HTTP and no tables here: schedules go out through a `Scheduler`, commands to the issuer
through `Commands`, state and events through a `ports.RotatorStore` (its outbox).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson

from shared.commands import (
    CommandError,
    EndGrace,
    ExpireKey,
    KeyAnswer,
    KeyCommand,
    KeyStatusQuery,
    RenewKey,
)
from shared.events import Event, GraceEnded, KeyEvent, KeyExpiring
from shared.timeutil import Clock, utcnow

from . import domain
from .domain import KeyRecord, OutboxEntry, ScheduleRow
from .ports import FiredRecord, RotatorStore

log = logging.getLogger("rotator")


class Scheduler(Protocol):
    async def publish_many(
        self, schedules: Sequence[tuple[str, str, str, bytes]]
    ) -> Sequence[BaseException | None]:
        """(subject, `@at ...`, target, payload) each; for each, None once NATS has it, or its error."""
        ...

    async def cancel(self, subject: str) -> None: ...


class Commands(Protocol):
    async def request_many(
        self, calls: Sequence[KeyCommand]
    ) -> Sequence[KeyAnswer | CommandError | BaseException]:
        """For each command, the issuer's (validated) answer or the error the request met."""
        ...


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
        return orjson.dumps(
            {
                "key_id": self.key_id,
                "purpose": self.purpose,
                "due": self.due.isoformat(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            }
        )

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
        publish_now: Callable[[Sequence[OutboxEntry]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.commands = commands
        self.notices = list(notices)
        self.clock = clock
        # Publishes events just recorded in the outbox (the relay's `publish_now`); None: the relay's
        # rounds publish them.
        self.publish_now = publish_now
        self.published = 0
        self.cancelled = 0

    async def on_key_event(self, event: KeyEvent) -> bool:
        """Apply a key event (newer revisions only), then push its schedule changes to NATS.

        The sync runs even for a stale or duplicate event: it finishes what a crash interrupted.
        """
        (applied,) = await self.on_key_events([event])
        return applied

    async def on_key_events(self, events: Sequence[KeyEvent]) -> list[bool]:
        """`on_key_event` for a batch, in order: one transaction, the NATS changes sent together, one
        more transaction to mark them synced. Returns whether each event was applied."""
        now = self.clock()
        consumed = [e for e in events if e.type in CONSUMED]
        applied: list[bool] = []
        rows: list[ScheduleRow] = []
        if consumed:
            applied, rows = await self.store.apply_keys([(e.key, self._planner(e, now)) for e in consumed])
        stale = {e.key_id for e, done in zip(consumed, applied, strict=True) if not done}
        if stale:
            rows += await self.store.unsynced(key_ids=sorted(stale))
        await self._push_all(rows)
        verdicts = iter(applied)
        return [next(verdicts) if e.type in CONSUMED else False for e in events]

    def _planner(self, event: KeyEvent, now: datetime) -> domain.PlanFn:
        wanted = domain.plan(event.key, self.notices, min(event.occurred_at, now))
        return lambda existing: domain.diff(existing, wanted)

    async def sync(self) -> int:
        """Publish pending schedules and purge cancelled ones, left over by a crash between our commit
        and NATS; returns how many changes went out."""
        done = 0
        while rows := await self.store.unsynced():
            await self._push_all(rows)
            done += len(rows)
        return done

    async def _push_all(self, rows: Sequence[ScheduleRow]) -> None:
        """Send the changes to NATS together (their acks awaited together, not one round trip each),
        then mark what NATS took; raise if any failed, so that the event is redelivered."""
        if not rows:
            return
        publish = [row for row in rows if row.state == domain.PENDING]
        cancel = [row for row in rows if row.state != domain.PENDING]
        published = await self.scheduler.publish_many(
            [
                (
                    domain.schedule_subject(row.purpose, row.key_id),
                    domain.at_header(row.due_at),
                    domain.fired_subject(row.purpose, row.key_id),
                    Fired(row.key_id, row.purpose, row.due_at, row.expires_at).encode(),
                )
                for row in publish
            ]
        )
        cancelled = await asyncio.gather(
            *(self.scheduler.cancel(domain.schedule_subject(row.purpose, row.key_id)) for row in cancel),
            return_exceptions=True,
        )
        results = [*published, *cancelled]
        self.published += sum(1 for r in published if r is None)
        self.cancelled += sum(1 for r in cancelled if r is None)
        taken = [row for row, result in zip([*publish, *cancel], results, strict=True) if result is None]
        if taken:
            await self.store.mark_synced(taken)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def on_fired(self, fired: Fired) -> domain.Decision:
        """Act on one fired schedule (see `on_fired_many`). Raises CommandFailed to be redelivered."""
        (outcome,) = await self.on_fired_many([fired])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def on_fired_many(self, fireds: Sequence[Fired]) -> list[domain.Decision | BaseException]:
        """Act on fired schedules after re-checking each key against the current state.

        Work is done per batch (one read, the issuer commands sent together, one write), because many
        keys may expire in the same second. An item whose command failed comes back as its exception
        and is not recorded, so that it is redelivered; the others are recorded with their events.
        """
        if not fireds:
            return []
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
        # The issuer commands of the whole batch go out together, their answers awaited together.
        calls = [
            (index, COMMANDS[decision.action](key_id=fired.key_id))
            for index, (fired, decision) in enumerate(zip(fireds, decisions, strict=True))
            if decision.action in COMMANDS
        ]
        answers = await self.commands.request_many([command for _, command in calls]) if calls else []
        answer_of = {index: answer for (index, _), answer in zip(calls, answers, strict=True)}
        acted: list[list[Event] | BaseException] = []
        for index, (fired, decision) in enumerate(zip(fireds, decisions, strict=True)):
            key = contexts.get((fired.key_id, fired.purpose), (None, None))[0]
            try:
                acted.append(self._act(fired, decision, key, answer_of.get(index)))
            except Exception as exc:
                acted.append(exc)
        records: list[FiredRecord] = []
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
            duplicates, added = await self.store.mark_fired_many(records, wake_relay=self.publish_now is None)
            for event_id in duplicates:
                log.info("event %s was already emitted (a redelivered schedule)", event_id)
            if added and self.publish_now is not None:
                # Out at once rather than at the relay's next round; the relay retries what fails.
                await self.publish_now(added)
        return outcomes

    def _act(
        self,
        fired: Fired,
        decision: domain.Decision,
        key: KeyRecord | None,
        answer: KeyAnswer | CommandError | BaseException | None,
    ) -> list[Event]:
        """What the issuer's answer to a decision's command means; returns the events to record with it.
        Raises when the command failed, so that the schedule is redelivered."""
        if decision.action in (domain.EARLY, domain.IGNORE):
            return []
        if isinstance(answer, BaseException):
            raise answer
        assert key is not None and answer is not None
        if decision.action == domain.NOTIFY:
            # The event that changed the key (a revocation, a renewal) may still be on its way to us
            # after an outage: the system of record was asked before telling the owner the key is
            # about to expire.
            if not domain.notice_still_wanted(answer, fired.expires_at):
                log.info(
                    "notice %s for %s dropped: the issuer has it %s", fired.purpose, fired.key_id, answer
                )
                return []
            view = key.view()
            return [
                KeyExpiring(
                    event_id=domain.notice_event_id(fired.key_id, fired.purpose, fired.expires_at),
                    account_id=view.account_id,
                    key_id=view.key_id,
                    key=view,
                    notice=fired.purpose.removeprefix(domain.NOTICE_PREFIX),
                )
            ]
        _check(COMMANDS[decision.action], fired.key_id, answer)
        if decision.action == domain.END_GRACE:
            view = key.view()
            return [
                GraceEnded(
                    event_id=domain.notice_event_id(fired.key_id, fired.purpose, view.grace_until),
                    account_id=view.account_id,
                    key_id=view.key_id,
                    key=view,
                )
            ]
        return []  # EXPIRE_KEY, RENEW: the issuer emits the events


# The issuer command each decision needs (`status`: is the notice still wanted).
COMMANDS: dict[str, type[KeyCommand]] = {
    domain.END_GRACE: EndGrace,
    domain.EXPIRE_KEY: ExpireKey,
    domain.RENEW: RenewKey,
    domain.NOTIFY: KeyStatusQuery,
}


def _check(command: type[KeyCommand], key_id: str, answer: KeyAnswer | CommandError) -> None:
    if isinstance(answer, CommandError):
        # not_found: the issuer does not know the key; nothing will change that, so no retry.
        if answer.error == "not_found":
            log.warning("issuer does not know key %s (%s)", key_id, command.subject)
            return
        raise CommandFailed(f"issuer refused {command.subject} for {key_id}: {answer.wire()}")
