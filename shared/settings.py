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
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, PrivateAttr, SecretStr, field_validator, model_validator
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

    # hide_input_in_errors: a settings error would otherwise echo every value given, the credentials in
    # CNX_NATS_URL and the peppers included.
    model_config = SettingsConfigDict(
        env_prefix="CNX_", extra="ignore", env_file=None, hide_input_in_errors=True
    )

    _servers: list[str] = PrivateAttr(default_factory=list)
    _url_credentials: tuple[str | None, str | None] | None = PrivateAttr(default=None)

    deployment: Literal["local", "staging", "production"] = "local"
    instance_id: str = Field(default="", description="Replica name; a durable consumer per validator replica")
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    log_level: str = "INFO"
    # json: one JSON object per line (what a cluster's log pipeline reads); text: for a terminal.
    log_format: Literal["json", "text"] = "json"

    # One URL or a comma-separated list (the servers of a cluster; each connection also learns the ones
    # the cluster advertises). Read once into `nats_servers` and `nats_url_credentials`.
    nats_url: str = "nats://127.0.0.1:4333"
    nats_connect_timeout: Duration = timedelta(seconds=5)
    # How often every connection PINGs its server: two left unanswered and it moves to another server.
    # Short, because a server that stopped answering (paused, cut off) otherwise holds a connection, and
    # the validator's `keys.validate` subscription with it, for minutes.
    nats_ping_interval: Duration = timedelta(seconds=1)
    # Copies of each stream (and of its durable consumers) in a NATS cluster: 1 for one server, 3 for a
    # cluster of 3 or more. A start raises a stream to it, never lowers one scaled higher by hand.
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # This process's NATS identity (README "NATS identities"; shared/natsauth.py): one of user and
    # password (here or in the URL), a token, an NKey seed file or a JWT creds file; TLS with a CA and a
    # client certificate. Production refuses a plaintext bus unless nats_allow_plaintext says otherwise.
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    nats_token: SecretStr = SecretStr("")
    nats_nkey_seed_file: Path | None = None
    nats_creds_file: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    # The server expects the TLS handshake before its INFO (`handshake_first`): no plaintext byte at all.
    nats_tls_first: bool = False
    nats_allow_plaintext: bool = False
    # Reply subjects' prefix; "" means `_INBOX_<service>` for the four services (their own, see
    # shared/natsidentities.py) and `_INBOX` for platform services.
    nats_inbox_prefix: str = ""

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
    # The API the Developer Console's authentication examples call ("": the demo API on this host at
    # CNX_DEMO_PORT, as `make up` runs it).
    console_api_url: str = ""

    # Secrets: the first of each list writes, all of them are accepted on read (rotation).
    peppers: SecretList = Field(default_factory=lambda: [SecretStr(DEV_PEPPER)])
    encryption_keys: SecretList = Field(default_factory=lambda: [SecretStr(DEV_ENCRYPTION_KEY)])

    bootstrap_admin_key_file: Path | None = None
    default_account: str = "default"

    rotation_grace: Duration = timedelta(hours=24)
    expiry_notices: DurationList = Field(default_factory=lambda: [timedelta(days=7), timedelta(days=1)])
    default_expiry_days: int = 90
    # Keys of an account that are not revoked or expired; creating (or rotating with a grace period)
    # beyond it is 403 quota_exceeded.
    max_keys_per_account: int = Field(default=10_000, ge=1)
    # Management API calls per caller key per minute, and the bucket's burst (per issuer process; 0: off).
    management_rate_limit: int = Field(default=600, ge=0)
    management_rate_burst: int = Field(default=100, ge=1)
    # `auth.denied` audit entries per caller key per minute, and for every unknown key together (per
    # issuer process); denials beyond are counted into the next entry's `repeated` (0: none recorded).
    audit_denials_per_minute: int = Field(default=30, ge=0)

    validate_timeout: Duration = timedelta(seconds=2)
    trusted_proxies: CommaList = Field(default_factory=list)
    # Forward-auth route table; a request no entry matches is refused unless the auth URL has `scope`:
    # "GET /v2/instances=compute:read,POST /v2/instances/**=compute:write@prod" (validator/routes.py).
    route_scopes: CommaList = Field(default_factory=list)
    # The proxy in front of forward-auth: the only one whose headers give the original method and path
    # (nginx: X-Original-Method/X-Original-URL; traefik: X-Forwarded-Method/-Uri; envoy: request line).
    forward_auth_proxy: Literal["nginx", "traefik", "envoy"] = "nginx"
    # Malformed or unknown keys per client address per minute before that address gets 429 (0: off).
    failed_auth_per_minute: int = Field(default=30, ge=0)
    # An environment every key must belong to on this validator ("" = any; a request may still ask one).
    validator_environment: Literal["", "prod", "stg", "dev"] = ""
    # Replicas announce themselves this often; one unheard for 4 heartbeats no longer owns keys.
    validator_heartbeat: Duration = timedelta(milliseconds=500)
    # Read-your-writes. Issuer: a create's (or rotation's) 201 waits at most this long for the new key's
    # KeyCreated to be in the stream (0: does not wait). Validator: a NOT_FOUND for a well-formed token
    # is held at most `read_your_writes_wait` until this replica has applied the events stream up to the
    # moment the request arrived (0: answered at once), for at most `read_your_writes_max_held` requests
    # at a time (beyond: NOT_FOUND at once).
    read_your_writes_publish_wait: Duration = timedelta(seconds=2)
    read_your_writes_wait: Duration = timedelta(milliseconds=500)
    read_your_writes_max_held: int = Field(default=1000, ge=0)
    # Validator: a revoked or expired key (and a rotated one past its grace) answers REVOKED/EXPIRED this
    # long after it ended, then leaves the replica's memory and store and answers NOT_FOUND: memory
    # follows the live keys, not every key ever made (services/validator/projection.py, `ends_at`).
    projection_retention: Duration = timedelta(days=7)
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

    # GitHub secret scanning partner endpoint (services/issuer/secret_scanning.py): GitHub's signing keys
    # in its meta format, a file path or an https URL ("" = the endpoint answers 503). An unknown key
    # identifier makes the issuer read them again, at most once per `_min_refresh`.
    secret_scanning_keys: str = ""
    secret_scanning_keys_min_refresh: Duration = timedelta(minutes=1)

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_from: str = "CloudNexus Keys <keys@cloudnexus.local>"

    # Webhook targets on loopback, private, link-local... addresses (shared/webhook_targets.py); unset
    # means "only for local deployments", where the walkthrough's receiver listens on 127.0.0.1.
    webhook_allow_private: bool | None = None
    # An egress proxy (http:// or https://) every webhook goes through; it then resolves the names and
    # must enforce the egress rules itself.
    webhook_proxy: str | None = None
    # The whole of one webhook attempt: DNS, connect, send, and reading the answer.
    webhook_timeout: Duration = timedelta(seconds=10)
    # After a rotation the previous secret keeps signing beside the new one this long.
    webhook_secret_overlap: Duration = timedelta(hours=24)

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
    def _positive_http_timeout(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("an HTTP timeout must be positive")
        return value

    @field_validator("expiry_notices")
    @classmethod
    def _positive_notices(cls, value: list[timedelta]) -> list[timedelta]:
        if any(v.total_seconds() <= 0 for v in value):
            raise ValueError("expiry notices must be positive offsets before expiry")
        return sorted(value, reverse=True)

    @field_validator("webhook_proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("CNX_WEBHOOK_PROXY must be an http:// or https:// URL")
        return value or None

    @field_validator("webhook_timeout")
    @classmethod
    def _positive_webhook_timeout(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("CNX_WEBHOOK_TIMEOUT must be positive")
        return value

    @field_validator("projection_retention")
    @classmethod
    def _retention_at_least_a_minute(cls, value: timedelta) -> timedelta:
        # Under a minute, a key revoked while one of its valid requests waits on another replica could
        # leave memory before that request is counted (its row then going to a newer key).
        if value.total_seconds() < 60:
            raise ValueError("CNX_PROJECTION_RETENTION must be at least 1m")
        return value

    @field_validator("webhook_secret_overlap")
    @classmethod
    def _non_negative_overlap(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 0:
            raise ValueError("CNX_WEBHOOK_SECRET_OVERLAP must not be negative")
        return value

    @model_validator(mode="after")
    def _no_placeholder_secrets_outside_local(self) -> Settings:
        if self.deployment != "local":
            # Each service is given only the secrets it uses (deploy/k8s: a Secret per service; the
            # validator gets the peppers, not the encryption keys): one not given is empty here, never
            # the placeholder, and a service that needs it refuses to start (pepper_values, ...).
            for name in ("peppers", "encryption_keys"):
                if name not in self.model_fields_set:
                    setattr(self, name, [])
            if any(p.get_secret_value() == DEV_PEPPER for p in self.peppers):
                raise ValueError("CNX_PEPPERS still holds the development placeholder; set a real secret")
            if any(k.get_secret_value() == DEV_ENCRYPTION_KEY for k in self.encryption_keys):
                raise ValueError("CNX_ENCRYPTION_KEYS still holds the development placeholder")
        return self

    def pepper_values(self) -> list[bytes]:
        """The peppers, for the services that digest keys (issuer, validator); refuses to start
        without them."""
        if not self.peppers:
            raise ValueError("CNX_PEPPERS is required by this service; set it in its Secret")
        return [p.get_secret_value().encode() for p in self.peppers]

    def encryption_key_values(self) -> list[str]:
        """The field encryption keys, for the services that seal or open fields (issuer, notifier);
        refuses to start without them."""
        if not self.encryption_keys:
            raise ValueError("CNX_ENCRYPTION_KEYS is required by this service; set it in its Secret")
        return [k.get_secret_value() for k in self.encryption_keys]

    @model_validator(mode="after")
    def _nats_servers(self) -> Settings:
        servers: list[str] = []
        found: set[tuple[str | None, str | None]] = set()
        for url in (part.strip() for part in self.nats_url.split(",")):
            if not url:
                continue
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            if parts.scheme not in ("nats", "tls"):
                raise ValueError(f"CNX_NATS_URL: {parts.scheme}:// is not a NATS URL (nats:// or tls://)")
            try:
                port = parts.port
            except ValueError:
                raise ValueError(f"CNX_NATS_URL: {parts.hostname}: invalid port") from None
            if not parts.hostname:
                raise ValueError("CNX_NATS_URL: a URL names no host")
            if parts.username is not None:
                # As nats-py reads them: taken as written, a lone user name is a token.
                found.add((parts.username, parts.password))
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            servers.append(f"{parts.scheme}://{host}:{port or 4222}")
        if not servers:
            raise ValueError("CNX_NATS_URL names no server")
        if len(found) > 1:
            # One identity per process: the servers of one cluster take the same credentials.
            raise ValueError("CNX_NATS_URL: the URLs carry different credentials; give the same to each")
        self._servers = servers
        self._url_credentials = next(iter(found), None)
        return self

    @model_validator(mode="after")
    def _one_nats_identity(self) -> Settings:
        given = [
            name
            for name, value in (
                ("CNX_NATS_USER", self.nats_user),
                ("CNX_NATS_TOKEN", self.nats_token.get_secret_value()),
                ("CNX_NATS_NKEY_SEED_FILE", self.nats_nkey_seed_file),
                ("CNX_NATS_CREDS_FILE", self.nats_creds_file),
            )
            if value
        ]
        if any("@" in url.split("://", 1)[-1].split("/", 1)[0] for url in self.nats_url.split(",")):
            given.append("credentials in CNX_NATS_URL")
        if len(given) > 1:
            raise ValueError(f"give one NATS identity, not several: {', '.join(given)}")
        if self.nats_password.get_secret_value() and not self.nats_user:
            raise ValueError("CNX_NATS_PASSWORD needs CNX_NATS_USER")
        if self.nats_tls_key and not self.nats_tls_cert:
            raise ValueError("CNX_NATS_TLS_KEY needs CNX_NATS_TLS_CERT (the client certificate)")
        return self

    @model_validator(mode="after")
    def _no_plaintext_bus_in_production(self) -> Settings:
        # keys.validate carries a platform service's caller's key in the clear: on a plaintext bus anyone
        # on the network path reads it (README "NATS identities").
        if self.deployment == "production" and not self.nats_allow_plaintext and not self.nats_tls:
            raise ValueError(
                "CNX_DEPLOYMENT=production refuses a plaintext NATS connection: keys.validate carries "
                "API keys. Use tls:// in CNX_NATS_URL (with CNX_NATS_TLS_CA for a private CA), or set "
                "CNX_NATS_ALLOW_PLAINTEXT=true if the network itself is encrypted"
            )
        return self

    @property
    def nats_servers(self) -> list[str]:
        """The servers of CNX_NATS_URL, `scheme://host:port` each, without credentials."""
        return list(self._servers)

    @property
    def nats_url_credentials(self) -> tuple[str, str | None] | None:
        """(user, password) written in CNX_NATS_URL (password None: the user is a token), or None.
        Applied to every server, the ones a cluster advertises included."""
        found = self._url_credentials
        return (str(found[0]), found[1]) if found else None

    @property
    def nats_tls(self) -> bool:
        """TLS to NATS: every server URL says tls://, or a CA, a client certificate or tls-first is set."""
        if self.nats_tls_ca or self.nats_tls_cert or self.nats_tls_first:
            return True
        urls = self.nats_servers
        return bool(urls) and all(u.startswith("tls://") for u in urls)

    @property
    def migrate_on_start(self) -> bool:
        """Local stacks migrate themselves; elsewhere `cnx-keys migrate` is a deliberate step."""
        return self.auto_migrate if self.auto_migrate is not None else self.deployment == "local"

    @property
    def allow_private_webhooks(self) -> bool:
        """Webhooks may target internal addresses: only local stacks unless set."""
        if self.webhook_allow_private is not None:
            return self.webhook_allow_private
        return self.deployment == "local"

    def database_url(self, service: str) -> str:
        """The service's own store: its setting, or a SQLite file under data_dir."""
        url: str = getattr(self, f"{service}_database_url")
        if url:
            return url
        return f"sqlite+aiosqlite:///{self.data_dir / service}.db"

    def port(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))
