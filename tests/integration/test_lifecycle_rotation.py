"""Rotation grace and expiry driven by NATS message schedules, end to end on a real nats-server."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.integration.lifecycle_harness import SETTLE, eventually, in_seconds, lifecycle


async def test_rotated_key_is_revoked_when_its_grace_ends(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, rotation_grace=timedelta(seconds=2), expiry_notices=[]) as life:
        old = await life.create_key()
        response = await life.issuer.post("/v2/keys/rotate", json={"key_id": old["id"]}, headers=life.auth())
        assert response.status_code == 201, response.text
        assert response.json()["previous"]["status"] == "rotating"
        assert await life.stored_status(old["id"]) == "rotating"

        async def revoked() -> bool:
            return await life.stored_status(old["id"]) == "revoked"

        await eventually(revoked, timeout=SETTLE)
        assert (await life.key(old["id"]))["status"] == "revoked"
        assert (await life.key(response.json()["id"]))["status"] == "active"


async def test_key_is_marked_expired_by_its_schedule(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, expiry_notices=[]) as life:
        key = await life.create_key(expires_at=in_seconds(2))

        async def expired() -> bool:
            return await life.stored_status(key["id"]) == "expired"

        await eventually(expired, timeout=SETTLE)


async def test_revocation_cancels_every_schedule(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, expiry_notices=[timedelta(seconds=10)]) as life:
        key = await life.create_key(expires_at=in_seconds(30), notify={"email": "owner@example.com"})
        store = life.apps["rotator"].state.service.store

        async def planned() -> bool:
            return [r.state for r in await store.schedules(key["id"])] == ["scheduled", "scheduled"]

        await eventually(planned)
        response = await life.issuer.post(f"/v2/keys/{key['id']}/revoke", headers=life.auth())
        assert response.status_code == 200, response.text

        async def cancelled() -> bool:
            return not await store.schedules(key["id"])

        await eventually(cancelled)
        # Nothing is left in NATS for this key: the schedule subjects were purged.
        js = life.apps["rotator"].state.broker.connection.jetstream()
        info = await js.stream_info("KEYS_SCHEDULES", subjects_filter=f"keys.schedule.*.{key['id']}")
        assert not info.state.subjects
