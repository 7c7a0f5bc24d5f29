"""Who may do what on the bus: one NATS identity per service and one for platform services.

The table below is the server-side authorization of every deployment we ship: `cnx-keys up` writes it
into the embedded nats-server's configuration (`write_server_config`), the tests start servers from the
same function, and deploy/k8s/nats/values.yaml holds the same lists for the Helm chart
(tests/unit/test_k8s_manifests.py checks they agree). Each list covers exactly what the code uses:

- JetStream users publish `$JS.API.>` (streams declared at start, consumers, info) and ack on
  `$JS.ACK.<stream>.>` of the streams they consume; their fetched messages, JetStream acks and request
  answers arrive on an inbox prefix of their own (`_INBOX_<service>`, shared/natsauth.py), so another
  identity allowed `_INBOX.>` (the platform one) never sees them.
- `allow_responses` lets a service answer a request it received (on that request's reply subject,
  once) without a publish right on anyone's inbox.
- Queue-group subscriptions are held to their group (`keys.validate validators`): nobody else can join
  the validators' group and receive plaintext keys.

The platform identity requests `keys.validate` and publishes the `platform.>` events platform services
own; it cannot subscribe to `keys.validate`, publish key events, or send `keys.cmd.*` commands.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.commands import CMD_PREFIX, ROTATOR_COMMANDS, WebhookSecretsQuery
from shared.events import DEAD_LETTER_PREFIX, STREAM_EVENTS, STREAM_SCHEDULES, SUBJECT_VALIDATE
from shared.natsauth import DEFAULT_INBOX_PREFIX
from shared.platform import STREAM_PLATFORM

SERVICES = ("issuer", "validator", "rotator", "notifier")
PLATFORM = "platform"
IDENTITY_NAMES = (*SERVICES, PLATFORM)
# Where `cnx-keys up` keeps the generated passwords and the server's configuration (under CNX_DATA_DIR).
IDENTITY_DIR = "nats-identities"
PLATFORM_URL_FILE = "platform-nats-url"

JS_API = "$JS.API.>"


def _inbox(identity: str) -> str:
    return f"{DEFAULT_INBOX_PREFIX}_{identity}.>"


def _acks(*streams: str) -> tuple[str, ...]:
    return tuple(f"$JS.ACK.{stream}.>" for stream in streams)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Answers requests it receives (on their reply subjects, once each).
    allow_responses: bool = False

    def server_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            config["allow_responses"] = True
        return config


# Derived from the code; a new subject a service uses must be added here (the e2e tests run under it).
PERMISSIONS: dict[str, Permissions] = {
    # The system of record: answers commands, emits every key event, consumes usage and platform events.
    "issuer": Permissions(
        publish=(
            "keys.events.>",
            f"{DEAD_LETTER_PREFIX}.>",
            JS_API,
            *_acks(STREAM_EVENTS, STREAM_PLATFORM),
        ),
        subscribe=(
            f"{CMD_PREFIX}.* issuer",
            "platform.plans.changed issuer",
            _inbox("issuer"),
        ),
        allow_responses=True,
    ),
    # keys.validate in its queue group (lean connection); peers: membership, requests passed on to a
    # key's owner and their answers; plan changes; usage out; its own events consumer.
    "validator": Permissions(
        publish=(
            "keys.events.key.used",
            f"{SUBJECT_VALIDATE}.members",
            f"{SUBJECT_VALIDATE}.owner.*",
            JS_API,
            *_acks(STREAM_EVENTS),
        ),
        subscribe=(
            f"{SUBJECT_VALIDATE} validators",
            f"{SUBJECT_VALIDATE}.members",
            f"{SUBJECT_VALIDATE}.owner.*",
            f"{SUBJECT_VALIDATE}.back.>",
            "platform.plans.changed",
            _inbox("validator"),
        ),
        allow_responses=True,
    ),
    # Schedules in, fired schedules and key events consumed, its own events out, commands to the issuer.
    "rotator": Permissions(
        publish=(
            "keys.events.key.expiring",
            "keys.events.key.grace_ended",
            "keys.schedule.>",
            *(command.subject for command in ROTATOR_COMMANDS),
            JS_API,
            *_acks(STREAM_EVENTS, STREAM_SCHEDULES),
        ),
        subscribe=(_inbox("rotator"),),
    ),
    # Key events consumed; the account's webhook secret asked of the issuer.
    "notifier": Permissions(
        publish=(WebhookSecretsQuery.subject, JS_API, *_acks(STREAM_EVENTS)),
        subscribe=(_inbox("notifier"),),
    ),
    # Platform services: validate keys, publish the platform events they own. No JetStream API: a
    # publish to a stream subject needs none (its ack comes to the inbox).
    PLATFORM: Permissions(
        publish=(SUBJECT_VALIDATE, "platform.>"),
        subscribe=(f"{DEFAULT_INBOX_PREFIX}.>",),
    ),
}


def authorization(credentials: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """The server's `authorization` block: one user per identity, with its permissions. `credentials`
    maps each identity to its login fields (`{"user": ..., "password": ...}` or `{"nkey": ...}`).
    Without a `no_auth_user` an anonymous connection is refused."""
    missing = [name for name in IDENTITY_NAMES if name not in credentials]
    if missing:
        raise ValueError(f"no credentials for {', '.join(missing)}")
    users = [
        {**credentials[name], "permissions": PERMISSIONS[name].server_config()} for name in IDENTITY_NAMES
    ]
    return {"users": users}


def password_credentials(passwords: Mapping[str, str]) -> dict[str, dict[str, str]]:
    return {name: {"user": name, "password": passwords[name]} for name in IDENTITY_NAMES}


def write_server_config(path: Path, credentials: Mapping[str, Mapping[str, str]], **extra: Any) -> Path:
    """A nats-server configuration file with the authorization of every identity (mode 0600: it holds
    the passwords). JSON is valid NATS configuration; quoted strings keep `$JS...` from reading as a
    variable. `extra` adds top-level settings (a test's `tls`, say)."""
    body = json.dumps({**extra, "authorization": authorization(credentials)}, indent=2)
    _write_private(path, body + "\n")
    return path


def ensure_passwords(directory: Path) -> tuple[dict[str, str], bool]:
    """One password per identity in `directory/<name>.password` (0600), made on the first run and kept:
    services and platform services configured with them keep working across restarts.

    Returns (passwords, created any)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwords: dict[str, str] = {}
    created = False
    for name in IDENTITY_NAMES:
        path = directory / f"{name}.password"
        value = path.read_text().strip() if path.exists() else ""
        if value:
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)
        else:
            # URL-safe: it goes into nats://platform:<password>@host URLs unescaped.
            value = secrets.token_urlsafe(24)
            _write_private(path, value + "\n")
            created = True
        passwords[name] = value
    return passwords, created


def platform_url(host: str, port: int, password: str) -> str:
    return f"nats://{PLATFORM}:{password}@{host}:{port}"


def write_platform_url(data_dir: Path, url: str) -> Path:
    """`data_dir/platform-nats-url` (0600): the URL a platform service (the demo API) connects with."""
    return _write_private(data_dir / PLATFORM_URL_FILE, url + "\n")


def _write_private(path: Path, body: str) -> Path:
    """Created 0600 from the first byte and renamed into place: never readable by others, never half
    written."""
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    os.replace(partial, path)
    return path
