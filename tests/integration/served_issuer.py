"""The issuer as it is served: uvicorn on a free port, a real nats-server and SQLite store, no DNS (every
webhook host is unresolved, which the API accepts), no management rate limit. Yields an httpx client
holding the bootstrap admin key, with the app at `client.app`."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from services.issuer.app import create_app as create_issuer
from shared.natsserver import free_port
from shared.settings import Settings
from tests.support.asgi import served


async def no_dns(host: str, port: int) -> Sequence[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@asynccontextmanager
async def served_issuer(nats_url: str, database_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    settings = Settings(
        nats_url=nats_url,
        data_dir=tmp_path,
        issuer_database_url=database_url,
        bootstrap_admin_key_file=tmp_path / "bootstrap-admin-key",
        instance_id=f"served-{uuid.uuid4().hex[:8]}",
        management_rate_limit=0,
    )
    app = create_issuer(settings, resolver=no_dns)
    port = free_port()
    async with served(app, port):
        admin = (tmp_path / "bootstrap-admin-key").read_text().strip()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {admin}"}
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            client.admin_key = admin  # type: ignore[attr-defined]
            yield client
