"""The lifecycle under test: a real nats-server, the issuer, rotator and notifier apps in-process, a real
SMTP server (aiosmtpd) and a real HTTP webhook receiver, all on free ports of 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiosmtpd.controller import Controller
from fastapi import FastAPI, Request, Response

from services.issuer.app import create_app as create_issuer
from services.notifier import domain as notifier_domain
from services.notifier.app import create_app as create_notifier
from services.rotator.app import create_app as create_rotator
from shared.natsserver import EmbeddedNats, free_port
from shared.settings import Settings

# A deadline that also covers one JetStream redelivery (the notifier's ack wait is 30 s): a message
# lost client-side is redelivered, and the test should see the system recover rather than fail.
SETTLE = 45.0


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> float:
    """Poll until `check` holds; return how long it took. Fails at the deadline (no sleeping to sync)."""
    start = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class Mailbox:
    """A real SMTP server; `reply` can be set to a failure such as "451 4.3.0 try later"."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[Message] = []
        self.reply: str | None = None
        self.refused = 0
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd hook name
        if self.reply:
            self.refused += 1
            return self.reply
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def for_key(self, key_id: str) -> list[Message]:
        return [m for m in self.messages if m["X-CloudNexus-Key-Id"] == key_id]


@dataclass
class Hook:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> dict[str, Any]:
        import json

        return json.loads(self.body)  # type: ignore[no-any-return]


class WebhookReceiver:
    """A real HTTP server on a free port; `statuses` are answered in turn, then 204."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hooks: list[Hook] = []
        self.statuses: list[int] = []
        self.retry_after: str | None = None
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            status = self.statuses.pop(0) if self.statuses else 204
            self.hooks.append(Hook(dict(request.headers), await request.body(), status))
            headers = {"Retry-After": self.retry_after} if status == 429 and self.retry_after else {}
            return Response(status_code=status, headers=headers)

        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="off"
            )
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        await eventually(lambda: self._server.started, timeout=5)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task:
            await self._task

    def for_key(self, key_id: str) -> list[Hook]:
        return [h for h in self.hooks if h.json["key_id"] == key_id]

    def delivered(self, key_id: str, type_: str | None = None) -> list[Hook]:
        return [
            h
            for h in self.hooks
            if 200 <= h.status < 300
            and h.json["key_id"] == key_id
            and (type_ is None or h.json["type"] == type_)
        ]


def verify_hook(hook: Hook, secret: str) -> bool:
    return notifier_domain.verify(
        secret,
        hook.headers["webhook-id"],
        int(hook.headers["webhook-timestamp"]),
        hook.body,
        hook.headers["webhook-signature"],
    )


@dataclass
class Lifecycle:
    settings: Settings
    nats: EmbeddedNats
    mailbox: Mailbox
    webhooks: WebhookReceiver
    issuer: httpx.AsyncClient
    admin_key: str
    apps: dict[str, Any]
    _stacks: dict[str, AsyncExitStack] = field(default_factory=dict)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    async def create_key(self, **body: Any) -> dict[str, Any]:
        body.setdefault("name", "lifecycle key")
        body.setdefault("environment", "prod")
        body.setdefault("scopes", ["compute:read"])
        response = await self.issuer.post("/v2/keys", json=body, headers=self.auth())
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    async def key(self, key_id: str) -> dict[str, Any]:
        response = await self.issuer.get(f"/v2/keys/{key_id}", headers=self.auth())
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def stored_status(self, key_id: str) -> str:
        """The status the issuer recorded (not the one computed from the clock)."""
        key = await self.apps["issuer"].state.service.store.get_key_by_id(key_id)
        return str(key.status)

    async def webhook_secret(self) -> str:
        response = await self.issuer.post("/v2/account/webhook-secret", headers=self.auth())
        assert response.status_code == 201, response.text
        return str(response.json()["secret"])

    async def start(self, name: str) -> Any:
        factory = {"rotator": create_rotator, "notifier": create_notifier}[name]
        kwargs: dict[str, Any] = {}
        if name == "notifier":
            kwargs["retry_policy"] = notifier_domain.RetryPolicy(
                base=timedelta(seconds=0.5), cap=timedelta(seconds=2)
            )
        app = factory(self.settings, **kwargs)
        stack = AsyncExitStack()
        await stack.enter_async_context(app.router.lifespan_context(app))
        self.apps[name] = app
        self._stacks[name] = stack
        return app

    async def stop(self, name: str) -> None:
        await self._stacks.pop(name).aclose()


async def diagnose(life: Lifecycle) -> None:
    """On a failure: where each consumer stands and what the streams hold (shown by pytest)."""
    try:
        js = life.apps["issuer"].state.broker.connection.jetstream()
        for stream, durable in (
            ("KEYS_EVENTS", "rotator"),
            ("KEYS_EVENTS", "notifier"),
            ("KEYS_SCHEDULES", "rotator-fired"),
        ):
            try:
                info = await js.consumer_info(stream, durable)
            except Exception as exc:
                print(f"consumer {durable}: {exc!r}")
                continue
            print(
                f"consumer {durable}: pending={info.num_pending} ack_pending={info.num_ack_pending} "
                f"redelivered={info.num_redelivered} waiting={info.num_waiting} delivered={info.delivered}"
            )
        for stream in ("KEYS_EVENTS", "KEYS_SCHEDULES"):
            state = (await js.stream_info(stream, subjects_filter=">")).state
            print(f"stream {stream}: {state.messages} messages, subjects {state.subjects}")
        print(f"issuer outbox pending: {await life.apps['issuer'].state.service.store.pending_count()}")
    except Exception as exc:
        print(f"diagnosis failed: {exc!r}")


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@asynccontextmanager
async def lifecycle(
    tmp: Path, *, services: tuple[str, ...] = ("rotator", "notifier"), **overrides: Any
) -> AsyncIterator[Lifecycle]:
    nats = EmbeddedNats(tmp / "nats")
    nats.start()
    mailbox = Mailbox()
    mailbox.start()
    webhooks = WebhookReceiver()
    await webhooks.start()
    settings = Settings(
        nats_url=nats.url,
        data_dir=tmp,
        bootstrap_admin_key_file=tmp / "bootstrap-admin-key",
        smtp_host="127.0.0.1",
        smtp_port=mailbox.port,
        **overrides,
    )
    async with AsyncExitStack() as stack:
        stack.callback(nats.stop)
        stack.callback(mailbox.stop)
        stack.push_async_callback(webhooks.stop)
        issuer_app = create_issuer(settings)
        await stack.enter_async_context(issuer_app.router.lifespan_context(issuer_app))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=issuer_app), base_url="http://issuer")
        await stack.enter_async_context(client)
        admin = (tmp / "bootstrap-admin-key").read_text().strip()
        life = Lifecycle(settings, nats, mailbox, webhooks, client, admin, {"issuer": issuer_app})
        for name in services:
            await life.start(name)
        try:
            yield life
        except BaseException:
            await diagnose(life)
            raise
        finally:
            for name in list(life._stacks):
                await life.stop(name)
