"""Typed settings shared by every service: environment variables with the `CNX_` prefix.

Durations are written as `90s`, `15m`, `24h`, `7d` (or a bare number of seconds). Secrets are
`SecretStr` so they never print; outside a local deployment the placeholder dev secrets are refused.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}

# Placeholders that make a local stack start with no setup; refused when deployment != "local".
DEV_PEPPER = "dev-pepper-not-for-production-use-0000000000"
DEV_ENCRYPTION_KEY = "ZGV2LWVuY3J5cHRpb24ta2V5LW5vdC1mb3ItcHJvZCE="  # base64 of 32 bytes


def parse_duration(value: str | float | int | timedelta) -> timedelta:
    """`24h` -> timedelta(hours=24). Raises ValueError naming the bad value."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"invalid duration {value!r}: use a number with a unit, like 90s, 15m, 24h, 7d")
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNIT_SECONDS[unit])


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _duration_list(value: object) -> object:
    value = _split_list(value)
    if isinstance(value, list):
        return [parse_duration(v) for v in value]
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]
DurationList = Annotated[list[timedelta], NoDecode, BeforeValidator(_duration_list)]
SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split_list)]


class Settings(BaseSettings):
    """All knobs of all services; each service reads only what it needs."""

    model_config = SettingsConfigDict(env_prefix="CNX_", extra="ignore", env_file=None)

    deployment: Literal["local", "staging", "production"] = "local"
    instance_id: str = Field(default="", description="Replica name; a durable consumer per validator replica")
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    log_level: str = "INFO"

    nats_url: str = "nats://127.0.0.1:4333"
    nats_connect_timeout: Duration = timedelta(seconds=5)

    # Apply schema migrations at start; unset means "only for local deployments".
    auto_migrate: bool | None = None
    issuer_database_url: str = ""
    validator_database_url: str = ""
    rotator_database_url: str = ""
    notifier_database_url: str = ""

    issuer_port: int = 8080
    validator_port: int = 8081
    rotator_port: int = 8082
    notifier_port: int = 8083
    demo_port: int = 8090

    # Secrets: the first of each list writes, all of them are accepted on read (rotation).
    peppers: SecretList = Field(default_factory=lambda: [SecretStr(DEV_PEPPER)])
    encryption_keys: SecretList = Field(default_factory=lambda: [SecretStr(DEV_ENCRYPTION_KEY)])

    bootstrap_admin_key_file: Path | None = None
    default_account: str = "default"

    rotation_grace: Duration = timedelta(hours=24)
    expiry_notices: DurationList = Field(default_factory=lambda: [timedelta(days=7), timedelta(days=1)])
    default_expiry_days: int = 90

    validate_timeout: Duration = timedelta(seconds=2)
    trusted_proxies: CommaList = Field(default_factory=list)
    # Forward-auth route table, used when the ingress sends no X-Required-Scope:
    # "GET /v2/instances=compute:read,POST /v2/instances/**=compute:write@prod" (validator/routes.py).
    route_scopes: CommaList = Field(default_factory=list)
    # Malformed or unknown keys per client address per minute before that address gets 429 (0: off).
    failed_auth_per_minute: int = Field(default=30, ge=0)
    # An environment every key must belong to on this validator ("" = any; a request may still ask one).
    validator_environment: Literal["", "prod", "stg", "dev"] = ""
    # Replicas announce themselves this often; one unheard for 4 heartbeats no longer owns keys.
    validator_heartbeat: Duration = timedelta(milliseconds=500)
    max_body_bytes: int = 64 * 1024
    # Every HTTP port (shared/httpserver.py): a request head over this many bytes is answered 431; a
    # head not whole this long after the connection opened (or its first byte) closes the connection;
    # an idle keep-alive connection closes after its timeout; connections past the cap answer 503.
    http_max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    http_header_timeout: Duration = timedelta(seconds=10)
    http_keepalive_timeout: Duration = timedelta(seconds=5)
    http_max_connections: int = Field(default=1000, ge=1)
    # On SIGTERM: readiness false at once, requests still served this long, then a graceful stop
    # (in Kubernetes, a few seconds so the endpoint is gone before the listener closes).
    shutdown_delay: Duration = timedelta(0)

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_from: str = "CloudNexus Keys <keys@cloudnexus.local>"

    @field_validator("peppers", "encryption_keys")
    @classmethod
    def _non_empty(cls, value: list[SecretStr]) -> list[SecretStr]:
        if not value:
            raise ValueError("at least one secret is required")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("http_header_timeout", "http_keepalive_timeout")
    @classmethod
    def _positive_timeout(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("an HTTP timeout must be positive")
        return value

    @field_validator("expiry_notices")
    @classmethod
    def _positive_notices(cls, value: list[timedelta]) -> list[timedelta]:
        if any(v.total_seconds() <= 0 for v in value):
            raise ValueError("expiry notices must be positive offsets before expiry")
        return sorted(value, reverse=True)

    @model_validator(mode="after")
    def _no_placeholder_secrets_outside_local(self) -> Settings:
        if self.deployment != "local":
            if any(p.get_secret_value() == DEV_PEPPER for p in self.peppers):
                raise ValueError("CNX_PEPPERS still holds the development placeholder; set a real secret")
            if any(k.get_secret_value() == DEV_ENCRYPTION_KEY for k in self.encryption_keys):
                raise ValueError("CNX_ENCRYPTION_KEYS still holds the development placeholder")
        return self

    @property
    def migrate_on_start(self) -> bool:
        """Local stacks migrate themselves; elsewhere `cnx-keys migrate` is a deliberate step."""
        return self.auto_migrate if self.auto_migrate is not None else self.deployment == "local"

    def database_url(self, service: str) -> str:
        """The service's own store: its setting, or a SQLite file under data_dir."""
        url: str = getattr(self, f"{service}_database_url")
        if url:
            return url
        return f"sqlite+aiosqlite:///{self.data_dir / service}.db"

    def port(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))
