"""Issue 2's checks, as a new user would make them: real processes, real NATS, HTTP from outside.

The product page's own curl, Python `requests` and Node `fetch` examples run against the demo API;
afterwards no secret may be found in any log, store file or the NATS store.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import tokens
from shared.natsserver import free_port

from .stack import ProcessStack, poll, process_stack

PYTHON_EXAMPLE = """
import requests

api_key = "{key}"
headers = {{
    "Authorization": f"Bearer {{api_key}}",
    "Content-Type": "application/json"
}}

response = requests.get("{url}/v2/instances", headers=headers)
print(response.status_code)
print(response.json())
"""

NODE_EXAMPLE = """
const apiKey = '{key}';
const response = await fetch('{url}/v2/instances', {{
    headers: {{
        'Authorization': `Bearer ${{apiKey}}`,
        'Content-Type': 'application/json'
    }}
}});
console.log(response.status);
console.log(await response.json());
"""


@pytest.fixture
def stack(make_secured_nats_server: Any, tmp_path: Path) -> Any:
    # With the identities and permissions `make up` runs: each service as itself, the demo API as a
    # platform service.
    nats = make_secured_nats_server()
    with process_stack(nats, tmp_path / "data", ["issuer", "validator", "demo"]) as running:
        running.extra = {"nats": nats}  # type: ignore[attr-defined]
        yield running


def test_a_new_user_walks_through_the_product_page(stack: ProcessStack, tmp_path: Path) -> None:
    secrets: list[str] = []
    created = stack.create_key(name="Production Backend", scopes=["compute:read", "storage:write"])
    key = str(created["key"])
    secrets.append(key)
    demo = stack.url("demo")
    poll(lambda: stack.instances_status(key) == 200)

    curl = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "GET",
            f"{demo}/v2/instances",
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            "Content-Type: application/json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert curl.stdout == "200"
    python = subprocess.run(
        [sys.executable, "-c", PYTHON_EXAMPLE.format(key=key, url=demo)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert python.stdout.splitlines()[0] == "200"
    if shutil.which("node"):
        script = tmp_path / "example.mjs"
        script.write_text(NODE_EXAMPLE.format(key=key, url=demo))
        node = subprocess.run(["node", str(script)], capture_output=True, text=True, check=True)
        assert node.stdout.splitlines()[0] == "200"

    assert httpx.get(f"{demo}/v2/instances", params={"api_key": key}).status_code == 200
    assert stack.instances_status(None) == 401
    assert stack.instances_status("garbage") == 401
    assert stack.instances_status(key[:-1] + ("A" if key[-1] != "A" else "B")) == 401

    storage_only = str(stack.create_key(name="storage", scopes=["storage:write"])["key"])
    secrets.append(storage_only)
    poll(lambda: stack.instances_status(storage_only) == 403)

    unknown = httpx.post(
        f"{stack.url('issuer')}/v2/keys",
        headers=stack.admin(),
        json={"name": "x", "environment": "prod", "scopes": ["compute:launch"]},
    )
    assert unknown.status_code == 422 and "compute:launch" in unknown.text

    listed = httpx.get(f"{stack.url('issuer')}/v2/keys", headers=stack.admin()).text
    assert str(created["prefix"]) in listed and key not in listed

    admin2 = stack.create_key(name="second admin", scopes=["admin:write", "compute:read"])
    secrets.append(str(admin2["key"]))
    poll(lambda: stack.instances_status(str(admin2["key"])) == 200)
    revoke = httpx.post(f"{stack.url('issuer')}/v2/keys/{admin2['id']}/revoke", headers=stack.admin())
    assert revoke.status_code == 200
    took = poll(lambda: stack.instances_status(str(admin2["key"])) == 401, timeout=1.0)
    assert took < 1.0
    assert (
        httpx.get(f"{stack.url('issuer')}/v2/keys", headers=stack.admin(str(admin2["key"]))).status_code
        == 401
    )

    # Graceful stops flush what they buffer, then nothing anywhere may hold a secret.
    for process in stack.processes.values():
        process.stop()
    assert_no_secret_anywhere(secrets, [stack.data_dir, stack.extra["nats"].store_dir])  # type: ignore[attr-defined]


def assert_no_secret_anywhere(secrets: list[str], roots: list[Path]) -> None:
    searched = 0
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or path.name == "bootstrap-admin-key":
                continue
            data = path.read_bytes()
            searched += 1
            for secret in secrets:
                assert secret.encode() not in data, f"a secret was found in {path}"
                assert tokens.TOKEN_SEARCH.search(data.decode("latin-1")) is None, f"a token shape in {path}"
    assert searched >= 5, "logs, stores and the NATS store were searched"


def test_validator_killed_while_100_keys_are_created_validates_all_after_restart(stack: ProcessStack) -> None:
    first = str(stack.create_key()["key"])
    poll(lambda: stack.instances_status(first) == 200)
    validator = stack.processes["validator"]
    validator.kill()
    keys = [str(stack.create_key(name=f"while-down-{i}")["key"]) for i in range(100)]
    validator.start()

    def all_valid() -> bool:
        return all(stack.instances_status(k) == 200 for k in keys)

    poll(all_valid, timeout=30)


def test_a_second_start_keeps_the_keys(make_secured_nats_server: Any, tmp_path: Path) -> None:
    nats = make_secured_nats_server()
    data = tmp_path / "data"
    with process_stack(nats, data, ["issuer", "validator", "demo"]) as running:
        key = str(running.create_key()["key"])
        admin = running.admin_key
        poll(lambda: running.instances_status(key) == 200)
    with process_stack(nats, data, ["issuer", "validator", "demo"], CNX_DEMO_PORT=str(free_port())) as again:
        assert again.admin_key == admin
        poll(lambda: again.instances_status(key) == 200)


def test_x_forwarded_for_counts_only_from_configured_proxies(stack: ProcessStack) -> None:
    """With no CNX_TRUSTED_PROXIES, a client on 127.0.0.1 cannot claim an allowed address in
    X-Forwarded-For: the validator's HTTP server must not believe the header on its own (uvicorn does
    for 127.0.0.1 by default) and bypass the key's IP allowlist."""
    created = stack.create_key(name="office only", ip_allowlist=["10.9.9.0/24"])
    key = str(created["key"])
    verify = f"{stack.url('validator')}/v2/auth/verify?scope=compute:read"
    auth = {"Authorization": f"Bearer {key}"}
    poll(lambda: httpx.get(verify, headers=auth, timeout=10).headers.get("x-cnx-code") == "IP_NOT_ALLOWED")
    spoofed = httpx.get(verify, headers={**auth, "X-Forwarded-For": "10.9.9.9"}, timeout=10)
    assert spoofed.status_code == 403, spoofed.text
    assert spoofed.headers["x-cnx-code"] == "IP_NOT_ALLOWED"
