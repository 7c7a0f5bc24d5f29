"""kill -9 the rotator and the notifier between scheduling and firing: every notice still arrives once.

The services run as real processes (`python -m services.rotator|notifier`); the schedules live in NATS,
so they fire while both are dead and wait in the stream until the services come back.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from services.notifier.store import NotifierStore
from shared.db import create_engine
from shared.natsserver import free_port
from tests.integration.lifecycle_harness import (
    SETTLE,
    Lifecycle,
    eventually,
    in_seconds,
    lifecycle,
    verify_hook,
)


class Service:
    def __init__(self, name: str, life: Lifecycle, tmp: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = tmp / f"{name}.log"
        self.env = {
            **os.environ,
            "CNX_NATS_URL": life.settings.nats_url,
            "CNX_DATA_DIR": str(tmp),
            "CNX_SMTP_HOST": "127.0.0.1",
            "CNX_SMTP_PORT": str(life.mailbox.port),
            "CNX_EXPIRY_NOTICES": ",".join(f"{n.total_seconds():g}s" for n in life.settings.expiry_notices),
            f"CNX_{name.upper()}_PORT": str(self.port),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        self.spawn()

        async def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"http://127.0.0.1:{self.port}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=SETTLE)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def test_kill_rotator_and_notifier_before_schedules_fire(tmp_path: Path) -> None:
    notices = [timedelta(seconds=9), timedelta(seconds=7)]
    async with lifecycle(tmp_path, services=(), expiry_notices=notices) as life:
        rotator, notifier = Service("rotator", life, tmp_path), Service("notifier", life, tmp_path)
        try:
            await rotator.start()
            await notifier.start()
            secret = await life.webhook_secret()
            notify = {"email": "owner@example.com", "webhook_url": life.webhooks.url}
            key = await life.create_key(expires_at=in_seconds(11), notify=notify)
            js = life.apps["issuer"].state.broker.connection.jetstream()

            async def scheduled() -> bool:
                info = await js.stream_info("KEYS_SCHEDULES", subjects_filter=f"keys.schedule.*.{key['id']}")
                return len(info.state.subjects or {}) == 3

            await eventually(scheduled)
            rotator.kill()
            notifier.kill()
            expires_at = datetime.fromisoformat(key["expires_at"].replace("Z", "+00:00"))

            # Both notices fire while both services are dead (the expiry comes after the restart: a notice
            # handled after the key expired is dropped as pointless, the expiry notice covers it).
            last_notice = expires_at - notices[-1]
            await eventually(lambda: datetime.now(UTC) > last_notice + timedelta(seconds=0.5), timeout=15)
            assert life.mailbox.for_key(key["id"]) == [] and life.webhooks.for_key(key["id"]) == []

            await asyncio.gather(rotator.start(), notifier.start())

            async def expired() -> bool:
                return await life.stored_status(key["id"]) == "expired"

            await eventually(expired, timeout=SETTLE)
            store = NotifierStore(create_engine(f"sqlite+aiosqlite:///{tmp_path}/notifier.db"))
            try:

                async def all_delivered() -> bool:
                    rows = await store.deliveries(key["id"])
                    return len(rows) == 6 and all(r.status == "delivered" for r in rows)

                await eventually(all_delivered, timeout=SETTLE)
            finally:
                await store.close()
            mails = life.mailbox.for_key(key["id"])
            assert len(mails) == 3
            assert sum("has expired" in str(m["Subject"]) for m in mails) == 1
            hooks = life.webhooks.for_key(key["id"])
            assert sorted(h.json["type"] for h in hooks) == ["key.expired", "key.expiring", "key.expiring"]
            assert all(verify_hook(h, secret) for h in hooks)
        except BaseException:
            for service in (rotator, notifier):
                print(
                    f"--- {service.name} log ---\n"
                    + "\n".join(
                        line
                        for line in service.log.read_text().splitlines()
                        if '"level": "' in line
                        and "callback for" not in line
                        and "Received" not in line
                        and "Processed" not in line
                    )[-6000:]
                )
            raise
        finally:
            rotator.stop()
            notifier.stop()
