"""A throwaway stack for the end-to-end figures: nats-server (the wheel's), the issuer and N validators as
processes, on free ports in a temporary directory, each service with its own store (SQLite files, or
the issuer on a throwaway PostgreSQL database)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson

from shared.natsserver import EmbeddedNats, free_port
from shared.validation import SUBJECT_PLANS_CHANGED

ROOT = Path(__file__).parent.parent


class Stack:
    def __init__(
        self,
        workdir: Path,
        *,
        validators: int = 1,
        issuer_database_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        monitor: bool = False,
    ) -> None:
        self.workdir = workdir
        self.validator_count = validators
        self.issuer_database_url = issuer_database_url
        self.extra_env = extra_env or {}
        self.nats = EmbeddedNats(workdir / "nats", monitor_port=free_port() if monitor else None)
        self.issuer_port = free_port()
        self.validator_ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.admin_key = ""

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "CNX_NATS_URL": self.nats.url,
            "CNX_DATA_DIR": str(self.workdir),
            "CNX_LOG_LEVEL": "WARNING",
            "CNX_BOOTSTRAP_ADMIN_KEY_FILE": str(self.workdir / "admin-key"),
            "CNX_ISSUER_PORT": str(self.issuer_port),
            # The figures measure the services' own throughput, not the management API's per-key guard.
            "CNX_MANAGEMENT_RATE_LIMIT": "0",
        }
        if self.issuer_database_url:
            env["CNX_ISSUER_DATABASE_URL"] = self.issuer_database_url
        return env | self.extra_env | extra

    def _spawn(self, module: str, env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
        self.processes.append(process)
        return process

    async def start(self) -> Stack:
        self.nats.start()
        self.issuer = self._spawn("services.issuer", self.env(), "issuer.log")
        await self._wait_http(self.issuer_port, "/readyz")
        self.admin_key = (self.workdir / "admin-key").read_text().strip()
        for i in range(self.validator_count):
            port = free_port()
            self.validator_ports.append(port)
            env = self.env(CNX_INSTANCE_ID=f"bench-v{i}", CNX_VALIDATOR_PORT=str(port))
            self._spawn("services.validator", env, f"validator-{i}.log")
        for port in self.validator_ports:
            await self._wait_http(port, "/metrics", f"cnx_validator_replicas {float(self.validator_count)}")
        return self

    async def _wait_http(self, port: int, path: str, needle: str | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                try:
                    response = await client.get(f"http://127.0.0.1:{port}{path}")
                    if response.status_code == 200 and (needle is None or needle in response.text):
                        return
                except httpx.HTTPError:
                    pass
                for process in self.processes:
                    if process.poll() is not None:
                        raise RuntimeError(f"a service exited early (see {self.workdir}/*.log)")
                await asyncio.sleep(0.1)
        raise RuntimeError(f"port {port}{path} not ready in {timeout}s")

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.issuer_port}",
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=60,
        )

    async def change_plan(self, plan: str, **extra: Any) -> None:
        """platform.plans.changed for the default account (no key can raise an account's plan), then
        wait until the issuer applied it: its live keys show the new plan."""
        nc = await nats.connect(self.nats.url)
        try:
            change = {"account_id": "default", "plan": plan, **extra}
            await nc.publish(SUBJECT_PLANS_CHANGED, orjson.dumps(change))
            await nc.flush()
        finally:
            await nc.close()
        deadline = time.monotonic() + 30
        async with self.api() as api:
            while time.monotonic() < deadline:
                keys = (await api.get("/v2/keys")).json()["data"]
                if all(key["plan"] == plan for key in keys if key["status"] == "active"):
                    return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the issuer did not apply the {plan} plan in 30s")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.nats.stop()

    async def __aenter__(self) -> Stack:
        try:
            return await self.start()
        except BaseException:
            self.stop()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        self.stop()
