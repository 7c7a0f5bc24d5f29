"""A real nginx (Debian's package) shaped like ingress-nginx's external auth in front of protected
services, with the validator's forward-auth (CNX_FORWARD_AUTH_PROXY=nginx, the default):

- the auth location passes every client header on (as ingress-nginx does) and sets `X-Original-URL`
  and `X-Original-Method` itself, overwriting whatever the client sent under those names;
- nginx's `return` runs before `auth_request`, so the protected locations proxy to real upstreams: an
  echo service that answers 200 to anything and records what reached it (a request forward-auth should
  have refused shows up there), the demo API, and the validator's own /healthz;
- server A's auth URL has no `scope`: the route table of issue 12 decides, fail closed; server B's
  auth URL carries `?scope=compute:read`, which the route table's requirements join.

Issue 12's attacks (headers naming a weaker requirement or another request, a path no route names,
paths an upstream could read as another) are all refused, the legitimate requests still pass; plus
401 without a key and 429 with Retry-After when the key's bucket is empty (nginx itself only passes
401/403 on, see the `@cnx_denied` mapping).

nginx is found at /usr/sbin/nginx, on PATH, or at $CNX_TEST_NGINX; without one the test is skipped
(.ci/apt-packages.txt has CI install it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.demo_api import create_app as create_demo
from shared.childprocess import ChildProcess
from shared.natsserver import free_port
from tests.support.asgi import served

from . import forward_auth_proxies as proxies
from .forward_auth_proxies import EchoUpstream, bearer, raw_request
from .stack import Stack


def nginx_binary() -> str | None:
    for candidate in (os.environ.get("CNX_TEST_NGINX"), "/usr/sbin/nginx", shutil.which("nginx")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (see .ci/apt-packages.txt)")

# One auth location per server; {auth_query} is what the operator wrote into the auth URL.
AUTH_LOCATION = """
        location = /_cnx_auth {{
            internal;
            proxy_pass http://127.0.0.1:{validator_port}/v2/auth/verify?rate_limit_status=403{auth_query};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            # As ingress-nginx does: every client header goes on (proxy_pass_request_headers is on), and
            # these two are set here, replacing a client's own X-Original-URL / X-Original-Method.
            proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}

        # auth_request passes only 401 and 403 on; the validator answers a rate limit as 403 with
        # X-Cnx-Code: RATE_LIMITED here, and this turns it back into 429 with Retry-After.
        location @cnx_denied {{
            add_header X-Cnx-Code $cnx_code always;
            if ($cnx_code = RATE_LIMITED) {{
                add_header Retry-After $cnx_retry_after always;
                return 429 '{{"error":{{"code":"RATE_LIMITED"}}}}';
            }}
            return 403 '{{"error":{{"code":"$cnx_code"}}}}';
        }}
"""

PROTECT = """
            auth_request /_cnx_auth;
            auth_request_set $cnx_key_id $upstream_http_x_key_id;
            auth_request_set $cnx_code $upstream_http_x_cnx_code;
            auth_request_set $cnx_retry_after $upstream_http_retry_after;
            error_page 403 = @cnx_denied;
            proxy_set_header X-Key-Id $cnx_key_id;
"""

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

    # Server A: the route table alone decides; the upstream answers 200 to anything.
    server {{
        listen 127.0.0.1:{port_a};
        {auth_a}
        location / {{
            {protect}
            proxy_pass http://127.0.0.1:{echo_port};
        }}
    }}

    # Server B: the auth URL requires compute:read as well; the demo API and the validator's /healthz.
    server {{
        listen 127.0.0.1:{port_b};
        {auth_b}
        location / {{
            {protect}
            proxy_pass http://127.0.0.1:{demo_port};
        }}
        location /health-behind-auth {{
            {protect}
            proxy_pass http://127.0.0.1:{validator_port}/healthz;
        }}
    }}
}}
"""


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running_nginx(
    tmp: Path, validator_port: int, echo_port: int, demo_port: int
) -> Iterator[tuple[int, int]]:
    assert NGINX is not None
    port_a, port_b = free_port(), free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=tmp,
            port_a=port_a,
            port_b=port_b,
            echo_port=echo_port,
            demo_port=demo_port,
            validator_port=validator_port,
            protect=PROTECT,
            auth_a=AUTH_LOCATION.format(validator_port=validator_port, auth_query=""),
            auth_b=AUTH_LOCATION.format(validator_port=validator_port, auth_query="&scope=compute:read"),
        )
    )
    checked = subprocess.run(
        [NGINX, "-t", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    process = ChildProcess(
        "nginx",
        tmp / "nginx.out",
        argv=[NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
    )
    process.spawn()
    try:
        deadline = time.monotonic() + 10
        while not (port_open(port_a) and port_open(port_b)):
            assert process.running, process.log_text() or "nginx exited"
            assert time.monotonic() < deadline, "nginx did not listen within 10 s"
            time.sleep(0.02)
        yield port_a, port_b
    finally:
        process.stop()


@pytest.fixture
async def stack(nats_server: Any, make_database_url: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with proxies.route_table_stack(
        nats_server.url, make_database_url, tmp_path, trusted_proxies=["127.0.0.1/32"]
    ) as running:
        yield running


async def test_ingress_nginx_shaped_auth_refuses_what_the_operator_did_not_allow(
    stack: Stack, tmp_path: Path
) -> None:
    reader = await stack.create_key(scopes=["compute:read"])
    admin = await stack.create_key(scopes=["compute:admin"])
    dev = await stack.create_key(scopes=["compute:admin"], environment="dev")
    storage = await stack.create_key(scopes=["storage:admin"])
    starter = await stack.create_key(scopes=["compute:read"], plan="starter")

    await proxies.until_known(stack, reader, admin, dev, storage, starter)
    validator_port, echo_port, demo_port = free_port(), free_port(), free_port()
    echo = EchoUpstream()
    nginx_tmp = tmp_path / "nginx"
    nginx_tmp.mkdir()
    async with (
        served(stack.validator.app, validator_port, respond=stack.validator.respond),
        served(echo, echo_port),
        served(create_demo(stack.settings), demo_port),
    ):
        with running_nginx(nginx_tmp, validator_port, echo_port, demo_port) as (port_a, port_b):
            # Server A, route table only. The legitimate requests pass, with the key's id upstream.
            allowed = [
                (reader, "GET", "/v2/instances"),
                (reader, "GET", "/v2/instances?page=2"),
                (reader, "HEAD", "/v2/instances"),
                (admin, "GET", "/v2/instances/"),
                (admin, "DELETE", "/v2/instances/i-1"),
            ]
            # The attacks: refused by forward-auth, and nothing of them reached the upstream.
            missing = await proxies.refuses_what_the_table_does_not_allow(
                port_a, echo, allowed, reader, admin, dev
            )
            assert "invalid_token" in missing.headers.get("www-authenticate", "")

            # Server B: ?scope=compute:read on the auth URL, the demo API behind it.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_b}", timeout=10) as http:
                good = await http.get("/v2/instances", headers=stack.auth(reader["key"]))
                assert good.status_code == 200, good.text
                assert good.json()["account_id"] == "default"
                wrong_scope = await http.get("/v2/instances", headers=stack.auth(storage["key"]))
                assert wrong_scope.status_code == 403 and "SCOPE_DENIED" in wrong_scope.text
                # A path no route names is covered by the URL's scope here (server A: NO_ROUTE).
                covered = await http.get("/health-behind-auth", headers=stack.auth(reader["key"]))
                assert covered.status_code == 200, covered.text
                assert (
                    await http.get("/health-behind-auth", headers=stack.auth(storage["key"]))
                ).status_code == 403
                uncovered = await raw_request(port_a, "GET", "/health-behind-auth", bearer(reader["key"]))
                assert uncovered.status == 403 and uncovered.headers["x-cnx-code"] == "NO_ROUTE"
                # The route's environment still applies beside the URL's scope.
                assert (await http.get("/v2/instances", headers=stack.auth(dev["key"]))).status_code == 403
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
