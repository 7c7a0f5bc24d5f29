"""NATS entrypoints of the issuer: commands from the rotator and batched usage from validators.

Commands are request-reply in the `issuer` queue group; a handler calls one use case and answers with
the key's status. An exception is not swallowed: the requester sees no answer and retries.
"""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy
from faststream.nats import DeliverPolicy, JStream, NatsBroker, PullSub

from shared.events import CMD_PREFIX, STREAM_EVENTS, SUBJECT_USAGE, KeyUsed, parse_event

from .service import IssuerService
from .store import IssuerKey


def _answer(key: IssuerKey | None, service: IssuerService) -> dict[str, Any]:
    if key is None:
        return {"ok": False, "error": "not_found"}
    return {
        "ok": True,
        "key_id": key.id,
        "status": service.status_of(key),
        "revision": key.revision,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
    }


def register(broker: NatsBroker, service: IssuerService) -> None:
    @broker.subscriber(f"{CMD_PREFIX}.revoke", queue="issuer")
    async def revoke(body: dict[str, Any]) -> dict[str, Any]:
        """Revoke a key (platform events, leaked secrets): `{key_id, reason}`."""
        return _answer(
            await service.revoke(str(body["key_id"]), str(body.get("reason") or "revoked")), service
        )

    @broker.subscriber(f"{CMD_PREFIX}.end_grace", queue="issuer")
    async def end_grace(body: dict[str, Any]) -> dict[str, Any]:
        """A rotation's grace period is over: revoke the old key if it is still rotating."""
        return _answer(await service.end_grace(str(body["key_id"])), service)

    @broker.subscriber(f"{CMD_PREFIX}.expire", queue="issuer")
    async def expire(body: dict[str, Any]) -> dict[str, Any]:
        """A key's expiry is due: record it unless the key was renewed meanwhile."""
        return _answer(await service.expire(str(body["key_id"])), service)

    @broker.subscriber(f"{CMD_PREFIX}.renew", queue="issuer")
    async def renew(body: dict[str, Any]) -> dict[str, Any]:
        """Auto-renew: extend an active key by its own lifetime."""
        return _answer(await service.renew(str(body["key_id"]), body.get("extend_days")), service)

    @broker.subscriber(f"{CMD_PREFIX}.webhook_secret", queue="issuer")
    async def webhook_secret(body: dict[str, Any]) -> dict[str, Any]:
        """The account's webhook signing secret, for the notifier (inbox replies stay on the cluster)."""
        secret = await service.webhook_secret(str(body["account_id"]))
        return {"ok": True, "sealed": service.seal_for_transport(secret) if secret else None}

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
            await service.record_usage(event.event_id, event.key_id, event.last_used_at, event.count)
