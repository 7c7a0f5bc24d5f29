"""NATS entrypoints of the issuer: commands from the rotator and batched usage from validators.

Commands (shared/commands.py) are request-reply in the `issuer` queue group; a handler validates the
body, calls one use case and answers with the key's status, or with an error reply when the body does not
fit the command. Any other exception is not swallowed: the requester sees no answer and retries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from faststream import AckPolicy
from faststream.nats import DeliverPolicy, JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from pydantic import ValidationError

from shared.commands import (
    NOT_FOUND,
    Command,
    CommandError,
    EndGrace,
    ExpireKey,
    KeyAnswer,
    KeyStatusQuery,
    RenewKey,
    Reply,
    RevokeKey,
    WebhookSecrets,
    WebhookSecretsQuery,
    bad_request,
)
from shared.events import DEAD_LETTER_PREFIX, STREAM_EVENTS, SUBJECT_USAGE, KeyUsed, parse_event
from shared.messaging import STREAM_DEAD_LETTERS
from shared.platform import (
    STREAM_PLATFORM,
    SUBJECT_ACCOUNT_DELETED,
    SUBJECT_ACCOUNT_RESUMED,
    SUBJECT_ACCOUNT_SUSPENDED,
    SUBJECT_SECRET_LEAKED,
    AccountEvent,
    SecretLeaked,
)
from shared.tokens import redact
from shared.validation import SUBJECT_PLANS_CHANGED, PlansChanged

from .domain import Key
from .service import IssuerService

log = logging.getLogger("issuer")

C = TypeVar("C", bound=Command)


def _answer(key: Key | None, service: IssuerService) -> KeyAnswer | CommandError:
    if key is None:
        return NOT_FOUND
    return KeyAnswer(
        key_id=key.id,
        status=service.status_of(key),
        revision=key.revision,
        expires_at=key.expires_at,
    )


async def _command(msg: NatsMessage, model: type[C], run: Callable[[C], Awaitable[Reply]]) -> dict[str, Any]:
    """Validate the body as `model`, run the use case, answer with its reply; a body that does not fit
    is answered with a `bad_request` error and changes nothing. Other errors are not swallowed."""
    try:
        command = model.model_validate_json(msg.body)
    except ValidationError as exc:
        refusal = bad_request(exc)
        log.warning("%s refused: %s", model.subject, refusal.detail)
        return refusal.wire()
    return (await run(command)).wire()


def register(broker: NatsBroker, service: IssuerService) -> None:
    async def revoke_key(command: RevokeKey) -> Reply:
        return _answer(await service.revoke_by_command(command.key_id, command.reason), service)

    async def end_grace_of(command: EndGrace) -> Reply:
        return _answer(await service.end_grace(command.key_id), service)

    async def expire_key(command: ExpireKey) -> Reply:
        return _answer(await service.expire(command.key_id), service)

    async def renew_key(command: RenewKey) -> Reply:
        return _answer(await service.renew(command.key_id, command.extend_days), service)

    async def status_of(command: KeyStatusQuery) -> Reply:
        return _answer(await service.key_by_id(command.key_id), service)

    async def secrets_of(command: WebhookSecretsQuery) -> Reply:
        current, *previous = await service.webhook_secrets(command.account_id)
        return WebhookSecrets(
            sealed=service.seal_for_transport(current),
            previous=[service.seal_for_transport(secret) for secret in previous],
        )

    @broker.subscriber(RevokeKey.subject, queue="issuer")
    async def revoke(msg: NatsMessage) -> dict[str, Any]:
        """Revoke a key (an operator's tool): RevokeKey in, KeyAnswer or CommandError out."""
        return await _command(msg, RevokeKey, revoke_key)

    @broker.subscriber(EndGrace.subject, queue="issuer")
    async def end_grace(msg: NatsMessage) -> dict[str, Any]:
        """A rotation's grace period is over: revoke the old key if it is still rotating."""
        return await _command(msg, EndGrace, end_grace_of)

    @broker.subscriber(ExpireKey.subject, queue="issuer")
    async def expire(msg: NatsMessage) -> dict[str, Any]:
        """A key's expiry is due: record it unless the key was renewed meanwhile."""
        return await _command(msg, ExpireKey, expire_key)

    @broker.subscriber(RenewKey.subject, queue="issuer")
    async def renew(msg: NatsMessage) -> dict[str, Any]:
        """Auto-renew: extend an active key by its own lifetime (or `extend_days`)."""
        return await _command(msg, RenewKey, renew_key)

    @broker.subscriber(KeyStatusQuery.subject, queue="issuer")
    async def status(msg: NatsMessage) -> dict[str, Any]:
        """The key's status now, from the system of record: a schedule that fires after an outage checks
        here before acting, since the event that changed the key may still be on its way."""
        return await _command(msg, KeyStatusQuery, status_of)

    @broker.subscriber(WebhookSecretsQuery.subject, queue="issuer")
    async def webhook_secret(msg: NatsMessage) -> dict[str, Any]:
        """The account's webhook signing secrets, for the notifier, each sealed for transport: `sealed`
        the current one (made now if the account had none), `previous` those still in their overlap."""
        return await _command(msg, WebhookSecretsQuery, secrets_of)

    @broker.subscriber(
        SUBJECT_USAGE,
        stream=JStream(STREAM_EVENTS, declare=False),
        durable="issuer-usage",
        deliver_policy=DeliverPolicy.ALL,
        pull_sub=PullSub(batch_size=100, timeout=1.0),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def key_used(body: dict[str, Any]) -> None:
        """Batched KeyUsed from validators: keep the latest use and add up the counts, once per event."""
        event = parse_event(body)
        if isinstance(event, KeyUsed):
            allowed, refused = event.outcomes
            await service.record_usage(
                event.event_id,
                event.key_id,
                event.last_used_at,
                event.count,
                allowed=allowed,
                refused=refused,
            )


async def handle_platform_event(service: IssuerService, subject: str, data: bytes) -> str:
    """Apply one platform event; returns what happened. Raises ValidationError for a bad payload."""
    if subject == SUBJECT_SECRET_LEAKED:
        leak = SecretLeaked.model_validate_json(data)
        key = await service.report_leak(leak.token, leak.digest, leak.source, leak.url)
        return f"revoked {key.id}" if key else "no such key"
    event = AccountEvent.model_validate_json(data)
    if subject == SUBJECT_ACCOUNT_DELETED:
        return f"revoked {await service.delete_account(event.account_id, event.reason)} keys"
    if subject in (SUBJECT_ACCOUNT_SUSPENDED, SUBJECT_ACCOUNT_RESUMED):
        changed = await service.set_account_suspended(event.account_id, subject == SUBJECT_ACCOUNT_SUSPENDED)
        return f"changed {changed} keys"
    raise ValueError(f"no handler for subject {subject}")


def dead_letter(subject: str, reason: str, data: bytes) -> tuple[str, bytes]:
    """The dead-letter subject and body: the reason and the payload, any token in it cut to its prefix."""
    body = {
        "subject": subject,
        "reason": redact(reason)[:1000],
        "payload": redact(data.decode("utf-8", "replace")),
    }
    return f"{DEAD_LETTER_PREFIX}.{subject}", orjson.dumps(body)


async def erase_leak_report(broker: NatsBroker, msg: NatsMessage) -> None:
    """A leak report may carry the plaintext token (publishers cannot compute our digest: it needs the
    pepper), so once applied it is acknowledged and erased from PLATFORM_EVENTS (a secure delete: the
    server overwrites the bytes). A failure is logged, not retried: the report itself was applied."""
    await msg.ack()
    sequence = msg.raw_message.metadata.sequence.stream
    try:
        await broker.connection.jetstream().delete_msg(STREAM_PLATFORM, sequence)
    except Exception as exc:  # any NATS failure: the report stands; say what was left behind
        log.error("leak report %d not erased from %s (%s): delete it by hand", sequence, STREAM_PLATFORM, exc)


def register_platform(broker: NatsBroker, service: IssuerService) -> None:
    @broker.subscriber(
        "platform.>",
        stream=JStream(STREAM_PLATFORM, declare=False),
        durable="issuer-platform",
        deliver_policy=DeliverPolicy.ALL,
        pull_sub=PullSub(batch_size=50, timeout=1.0),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def platform_event(msg: NatsMessage) -> None:
        """platform.accounts.deleted|suspended|resumed and platform.secrets.leaked. A payload that can
        never succeed goes to keys.dlq.<subject> with the reason and is acknowledged; a store or NATS
        failure raises, so the event is redelivered."""
        subject = msg.raw_message.subject
        try:
            outcome = await handle_platform_event(service, subject, msg.body)
        except (ValidationError, ValueError) as exc:
            dlq_subject, body = dead_letter(subject, str(exc), msg.body)
            await broker.publish(body, dlq_subject, stream=STREAM_DEAD_LETTERS)
            log.warning("platform event on %s refused: sent to %s", subject, dlq_subject)
            outcome = None
        if subject == SUBJECT_SECRET_LEAKED:
            await erase_leak_report(broker, msg)
        if outcome is not None:
            log.info("platform event on %s: %s", subject, outcome)

    # platform.plans.changed is not in PLATFORM_EVENTS (see shared/platform.py): it arrives over core
    # NATS, so an issuer that is down when it is published misses it (the validators still enforce it).
    # `no_reply`: publishers send it as a request and the validators answer; FastStream would otherwise
    # answer too (with an empty body, for a handler returning None), and might answer first.
    @broker.subscriber(SUBJECT_PLANS_CHANGED, queue="issuer", no_reply=True)
    async def plan_changed(msg: NatsMessage) -> None:
        """platform.plans.changed: the account's plan and its keys' plan and limits, in the catalog. A
        payload that does not validate goes to keys.dlq.platform.plans.changed with the reason."""
        try:
            change = PlansChanged.model_validate_json(msg.body)
        except ValidationError as exc:
            dlq_subject, body = dead_letter(SUBJECT_PLANS_CHANGED, str(exc), msg.body)
            await broker.publish(body, dlq_subject, stream=STREAM_DEAD_LETTERS)
            log.warning("platform event on %s refused: sent to %s", SUBJECT_PLANS_CHANGED, dlq_subject)
            return
        changed = await service.change_plan(change)
        if changed is None:
            log.info("plans.changed for %s ignored: older than the last one applied", change.account_id)
        else:
            log.info("account %s moved to plan %s: changed %d keys", change.account_id, change.plan, changed)
