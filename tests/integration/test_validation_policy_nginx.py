"""A real nginx (Debian's package) with `auth_request` to the validator's forward-auth, in front of the
demo API: 401 without a key, 200 with a good one, 403 for a wrong scope, and 429 with Retry-After when
the key's bucket is empty (nginx itself only passes 401/403 on, see the `@cnx_denied` mapping).

nginx is found at /usr/sbin/nginx, on PATH, or at $CNX_TEST_NGINX; without one the test is skipped
(.ci/apt-packages.txt has CI install it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from examples.demo_api import create_app as create_demo
from shared.natsserver import free_port

from .stack import Stack, eventually, running_stack, stack_settings


def nginx_binary() -> str | None:
    for candidate in (os.environ.get("CNX_TEST_NGINX"), "/usr/sbin/nginx", shutil.which("nginx")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (see .ci/apt-packages.txt)")

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    server {{
        listen 127.0.0.1:{port};

        # The subrequest: no body, the original method and URI for the route table.
        location = /_cnx_auth {{
            internal;
            proxy_pass http://127.0.0.1:{validator_port}/v2/auth/verify?rate_limit_status=403;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}

        # auth_request passes only 401 and 403 on; the validator answers a rate limit as 403 with
        # X-Cnx-Code: RATE_LIMITED here, and this turns it back into 429 with Retry-After.
        location @cnx_denied {{
            if ($cnx_code = RATE_LIMITED) {{
                add_header Retry-After $cnx_retry_after always;
                return 429 '{{"error":{{"code":"RATE_LIMITED"}}}}';
            }}
            return 403 '{{"error":{{"code":"$cnx_code"}}}}';
        }}

        location / {{
            auth_request /_cnx_auth;
            auth_request_set $cnx_key_id $upstream_http_x_key_id;
            auth_request_set $cnx_account_id $upstream_http_x_account_id;
            auth_request_set $cnx_code $upstream_http_x_cnx_code;
            auth_request_set $cnx_retry_after $upstream_http_retry_after;
            error_page 403 = @cnx_denied;
            proxy_set_header X-Key-Id $cnx_key_id;
            proxy_set_header X-Account-Id $cnx_account_id;
            proxy_pass http://127.0.0.1:{demo_port};
        }}

        # A protected location whose upstream does not validate again (the demo API does).
        location /health-behind-auth {{
            auth_request /_cnx_auth;
            auth_request_set $cnx_code $upstream_http_x_cnx_code;
            auth_request_set $cnx_retry_after $upstream_http_retry_after;
            error_page 403 = @cnx_denied;
            proxy_pass http://127.0.0.1:{validator_port}/healthz;
        }}
    }}
}}
"""


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.asynccontextmanager
async def served(app: Any, port: int) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    # Keep the test runner's own signal handling: this server is stopped by should_exit.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
        return bool(server.started)

    await eventually(started, timeout=10.0)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def running_nginx(tmp: Path, **ports: int) -> Iterator[int]:
    assert NGINX is not None
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, **ports))
    checked = subprocess.run(
        [NGINX, "-t", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            assert process.poll() is None, process.stderr.read() if process.stderr else "nginx exited"
            assert time.monotonic() < deadline, "nginx did not listen within 10 s"
            time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def stack(nats_server: Any, make_database_url: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(
        nats_server.url,
        tmp_path,
        make_database_url("issuer", "sqlite"),
        make_database_url("validator", "sqlite"),
        f"ngx-{uuid.uuid4().hex[:8]}",
    ).model_copy(
        update={
            "route_scopes": ["GET /v2/instances=compute:read", "GET /health-behind-auth=compute:read"],
            "trusted_proxies": ["127.0.0.1/32"],
        }
    )
    async with running_stack(settings) as running:
        yield running


async def test_nginx_auth_request_in_front_of_the_demo_api(stack: Stack, tmp_path: Path) -> None:
    reader = await stack.create_key(scopes=["compute:read"])
    storage = await stack.create_key(scopes=["storage:admin"])
    starter = await stack.create_key(scopes=["compute:read"], plan="starter")

    async def known() -> bool:
        projection = stack.validator.service.projection
        return all(projection.entry(k["id"]) is not None for k in (reader, storage, starter))

    await eventually(known, timeout=5.0)
    validator_port, demo_port = free_port(), free_port()
    nginx_tmp = tmp_path / "nginx"
    nginx_tmp.mkdir()
    async with served(stack.validator.app, validator_port), served(create_demo(stack.settings), demo_port):
        with running_nginx(nginx_tmp, validator_port=validator_port, demo_port=demo_port) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                missing = await http.get("/v2/instances")
                assert missing.status_code == 401, missing.text
                assert "invalid_token" in missing.headers.get("www-authenticate", "")

                good = await http.get("/v2/instances", headers=stack.auth(reader["key"]))
                assert good.status_code == 200, good.text
                assert good.json()["account_id"] == "default"

                by_query = await http.get("/v2/instances", params={"api_key": reader["key"]})
                assert by_query.status_code == 200, by_query.text

                wrong_scope = await http.get("/v2/instances", headers=stack.auth(storage["key"]))
                assert wrong_scope.status_code == 403, wrong_scope.text
                assert "SCOPE_DENIED" in wrong_scope.text

                revoked_like = await http.get("/v2/instances", headers=stack.auth("cnx_prod_" + "A" * 36))
                assert revoked_like.status_code == 401

                # A Starter bucket through nginx: 100 pass (plus what refills meanwhile, 1/s), then 429.
                started = time.monotonic()
                answers = [
                    await http.get("/health-behind-auth", headers=stack.auth(starter["key"]))
                    for _ in range(115)
                ]
                elapsed = time.monotonic() - started
                statuses = [a.status_code for a in answers]
                admitted = statuses.count(200)
                assert 100 <= admitted <= 101 + elapsed, (admitted, elapsed)
                assert statuses[:100] == [200] * 100 and set(statuses) == {200, 429}
                limited = next(a for a in answers if a.status_code == 429)
                assert int(limited.headers["retry-after"]) >= 1
