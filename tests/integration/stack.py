"""An in-process issuer + validator + demo API on a real nats-server and real stores, driven over ASGI."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats

from examples.demo_api import create_app as create_demo
from services.issuer.app import create_app as create_issuer
from services.validator.app import ValidatorRuntime
from shared.settings import Settings


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 5.0, interval: float = 0.02
) -> float:
    """Poll until `check` holds; return how long it took. Fails the test at the deadline."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class Stack:
    settings: Settings
    issuer: httpx.AsyncClient
    demo: httpx.AsyncClient
    forward_auth: httpx.AsyncClient
    validator: ValidatorRuntime
    admin_key: str
    issuer_app: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    async def create_key(self, admin: str | None = None, **body: Any) -> dict[str, Any]:
        body.setdefault("name", "test key")
        body.setdefault("environment", "prod")
        body.setdefault("scopes", ["compute:read"])
        response = await self.issuer.post("/v2/keys", json=body, headers=self.auth(admin))
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    async def demo_status(self, key: str | None, **kwargs: Any) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return (await self.demo.get("/v2/instances", headers=headers, **kwargs)).status_code

    async def wait_demo_status(self, key: str, status: int, timeout: float = 5.0) -> float:
        async def check() -> bool:
            return await self.demo_status(key) == status

        return await eventually(check, timeout=timeout)


def stack_settings(nats_url: str, tmp: Path, issuer_db: str, validator_db: str, instance: str) -> Settings:
    return Settings(
        nats_url=nats_url,
        data_dir=tmp,
        issuer_database_url=issuer_db,
        validator_database_url=validator_db,
        instance_id=instance,
        bootstrap_admin_key_file=tmp / "bootstrap-admin-key",
    )


@asynccontextmanager
async def running_validator(settings: Settings) -> AsyncIterator[ValidatorRuntime]:
    runtime = ValidatorRuntime(settings)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


@asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as stack:
        issuer_app = create_issuer(settings)
        await stack.enter_async_context(issuer_app.router.lifespan_context(issuer_app))
        validator = await stack.enter_async_context(running_validator(settings))
        demo_app = create_demo(settings)
        await stack.enter_async_context(demo_app.router.lifespan_context(demo_app))
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}")
            for name, app in (("issuer", issuer_app), ("demo", demo_app), ("validator", validator.app))
        ]
        for client in clients:
            await stack.enter_async_context(client)
        assert settings.bootstrap_admin_key_file is not None
        admin = settings.bootstrap_admin_key_file.read_text().strip()
        yield Stack(settings, clients[0], clients[1], clients[2], validator, admin, issuer_app)


@asynccontextmanager
async def sqlite_stack_with_client(
    nats_url: str, make_database_url: Callable[..., str], tmp: Path, prefix: str
) -> AsyncIterator[Stack]:
    """A stack on SQLite stores of its own, with a plain NATS connection to publish platform events on
    (`stack.extra["nc"]`)."""
    settings = stack_settings(
        nats_url,
        tmp,
        make_database_url("issuer", "sqlite"),
        make_database_url("validator", "sqlite"),
        f"{prefix}-{uuid.uuid4().hex[:8]}",
    )
    async with running_stack(settings) as running:
        nc = await nats.connect(nats_url)
        running.extra["nc"] = nc
        try:
            yield running
        finally:
            await nc.close()


async def other_account(stack: Stack) -> tuple[str, str]:
    """A new account and an admin key of it."""
    account = f"acct-{uuid.uuid4().hex[:8]}"
    admin = await stack.issuer_app.state.service.bootstrap_admin(account)
    return account, admin
