"""The services as real processes on free ports, sharing one data directory, driven over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import orjson

from shared.natsserver import EmbeddedNats, free_port
from shared.validation import SUBJECT_PLANS_CHANGED
from tests.support.nats import SecuredNats
from tests.support.processes import ServiceProcess

SERVICES = {
    "issuer": ("services.issuer", "CNX_ISSUER_PORT"),
    "validator": ("services.validator", "CNX_VALIDATOR_PORT"),
    "rotator": ("services.rotator", "CNX_ROTATOR_PORT"),
    "notifier": ("services.notifier", "CNX_NOTIFIER_PORT"),
    "demo": ("examples.demo_api", "CNX_DEMO_PORT"),
}


def poll(
    check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> float:
    """Wait until `check` holds; return the seconds it took. Fails at the deadline: no sleep-to-sync."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not met within {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - start


@dataclass
class ProcessStack:
    data_dir: Path
    env: dict[str, str]
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    exits: ExitStack | None = None
    # With a secured server each process connects as its own identity (as under `cnx-keys up`).
    identities: SecuredNats | None = None

    def env_of(self, service: str) -> dict[str, str]:
        return {**self.env, **(self.identities.identity_env(service) if self.identities else {})}

    def spawn(self, name: str, service: str, *, wait: bool = True, **env: str) -> ServiceProcess:
        """One more process of `service` (a second validator replica, say) under its own name, with
        `env` laid over the stack's; stopped with the stack."""
        module, variable = SERVICES[service]
        merged = {**self.env_of(service), variable: str(free_port()), **env}
        process = ServiceProcess(
            module, merged, int(merged[variable]), name=name, log_file=self.data_dir / f"{name}.log"
        )
        assert self.exits is not None, "spawn() only inside process_stack()"
        self.processes[name] = self.exits.enter_context(process.start(wait=wait))
        return process

    def url(self, name: str) -> str:
        return self.processes[name].url

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "bootstrap-admin-key").read_text().strip()

    def admin(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def change_plan(self, plan: str, **extra: object) -> None:
        """platform.plans.changed for the default account (only the platform raises an account's plan;
        no key can), then wait until the issuer applied it: its keys show the new plan."""
        change = orjson.dumps({"account_id": "default", "plan": plan, **extra})

        async def publish() -> None:
            # platform.plans.changed is the platform's to publish: its identity on a secured server.
            url = self.identities.url_for("platform") if self.identities else self.env["CNX_NATS_URL"]
            nc = await nats.connect(url.split(","))  # one URL or a cluster's list
            try:
                await nc.publish(SUBJECT_PLANS_CHANGED, change)
                await nc.flush()
            finally:
                await nc.close()

        asyncio.run(publish())

        def applied() -> bool:
            listed = httpx.get(f"{self.url('issuer')}/v2/keys", headers=self.admin(), timeout=10)
            return all(key["plan"] == plan for key in listed.json()["data"] if key["status"] == "active")

        poll(applied)

    def create_key(self, **body: object) -> dict[str, object]:
        body.setdefault("name", "e2e key")
        body.setdefault("environment", "prod")
        body.setdefault("scopes", ["compute:read"])
        response = httpx.post(f"{self.url('issuer')}/v2/keys", json=body, headers=self.admin(), timeout=10)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def instances_status(self, key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.url('demo')}/v2/instances", headers=headers, timeout=10).status_code

    def logs(self) -> str:
        return "".join(p.log_text() for p in self.processes.values())


@contextmanager
def process_stack(
    nats: str | SecuredNats, data_dir: Path, names: list[str], **extra_env: str
) -> Iterator[ProcessStack]:
    """`nats`: a URL every process connects to as is, or a secured server whose identities they use."""
    identities = nats if isinstance(nats, SecuredNats) else None
    nats_url = nats.url if isinstance(nats, SecuredNats) else nats
    env = {
        "CNX_NATS_URL": nats_url,
        "CNX_DATA_DIR": str(data_dir),
        "CNX_BOOTSTRAP_ADMIN_KEY_FILE": str(data_dir / "bootstrap-admin-key"),
        "CNX_INSTANCE_ID": "e2e",
        **{variable: str(free_port()) for _, variable in SERVICES.values()},
        **extra_env,
    }
    stack = ProcessStack(data_dir, env, identities=identities)
    with ExitStack() as exits:
        stack.exits = exits
        for name in names:
            module, variable = SERVICES[name]
            process = ServiceProcess(
                module, stack.env_of(name), int(env[variable]), name=name, log_file=data_dir / f"{name}.log"
            )
            stack.processes[name] = exits.enter_context(process.start())
        yield stack


@contextmanager
def stack_with_own_nats(root: Path, names: list[str], **extra_env: str) -> Iterator[ProcessStack]:
    """A nats-server of its own under `root`, and the services `names` as processes on it (state under
    `root`/data); everything is stopped at the end."""
    with (
        EmbeddedNats(root / "nats", log_file=root / "nats.log") as nats,
        process_stack(nats.url, root / "data", names, **extra_env) as stack,
    ):
        yield stack
