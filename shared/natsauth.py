"""How our NATS connections prove who they are: credentials and TLS from settings, for every client.

One reading of the `CNX_NATS_*` settings serves the three kinds of connection the services make:
`connect_options` gives nats-py (and FastStream, which passes them on) its keyword arguments, and
`ConnectCredentials` gives the validator's lean connection (services/validator/natswire.py) the CONNECT
fields it writes itself, including the signature of the server's nonce for an NKey or a JWT.

Kinds (README "NATS identities"): user and password (`CNX_NATS_USER`/`CNX_NATS_PASSWORD`, or in the
URL), a token (`CNX_NATS_TOKEN`), an NKey seed file (`CNX_NATS_NKEY_SEED_FILE`), a JWT creds file
(`CNX_NATS_CREDS_FILE`), and TLS with a CA and a client certificate (`CNX_NATS_TLS_CA`,
`CNX_NATS_TLS_CERT`, `CNX_NATS_TLS_KEY`). Seeds and passwords are read here and kept out of reprs,
logs and exception messages.
"""

from __future__ import annotations

import base64
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.settings import Settings

DEFAULT_INBOX_PREFIX = "_INBOX"

_CREDS_SECTION = re.compile(
    r"-{3,}BEGIN [A-Z ]*(JWT|SEED)[A-Z ]*-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}END [A-Z ]*-{3,}", re.MULTILINE
)


class NatsCredentialsError(ValueError):
    """A credentials or TLS file is missing or unreadable; the message names the setting, never a secret."""


def inbox_prefix(settings: Settings, identity: str | None) -> str:
    """Where this connection's replies arrive. Each service has one of its own (`_INBOX_<service>`), so
    its replies (fetched events, command answers, JetStream acks) are out of reach of the platform
    identity, which may subscribe to `_INBOX.>`; shared/natsidentities.py allows each its own."""
    if settings.nats_inbox_prefix:
        return settings.nats_inbox_prefix
    return f"{DEFAULT_INBOX_PREFIX}_{identity}" if identity else DEFAULT_INBOX_PREFIX


def tls_urls(settings: Settings) -> list[str]:
    """The servers of CNX_NATS_URL without their credentials (those go to every server alike, see
    `connect_options`), as `tls://` when TLS is configured (so no client falls back to plaintext)."""
    urls = settings.nats_servers
    if settings.nats_tls:
        urls = [("tls://" + u.split("://", 1)[1]) if u.startswith("nats://") else u for u in urls]
    return urls


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A client context verifying the server against CNX_NATS_TLS_CA (else the system's CAs), with the
    client certificate when one is given; None when TLS is off."""
    if not settings.nats_tls:
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
        )
        if settings.nats_tls_cert:
            key = settings.nats_tls_key or settings.nats_tls_cert
            context.load_cert_chain(str(settings.nats_tls_cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise NatsCredentialsError(
            f"cannot load the NATS TLS files (CNX_NATS_TLS_CA/CERT/KEY): {type(exc).__name__}"
        ) from None
    return context


def _read(path: Path, setting: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise NatsCredentialsError(f"cannot read {setting} ({path}): {reason}") from None


def parse_creds(text: str) -> tuple[str, bytes]:
    """A `.creds` file (as `nsc` writes it) -> (user JWT, NKey seed)."""
    jwt = seed = None
    for kind, value in _CREDS_SECTION.findall(text):
        if kind == "JWT" and jwt is None:
            jwt = value
        elif kind == "SEED" and seed is None:
            seed = value
    if not jwt or not seed:
        raise NatsCredentialsError("CNX_NATS_CREDS_FILE holds no user JWT and NKey seed")
    return jwt, seed.encode()


@dataclass(frozen=True)
class ConnectCredentials:
    """What a hand-written CONNECT carries to a server that asks for credentials."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    seed: bytes | None = field(default=None, repr=False)
    jwt: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectCredentials:
        seed = jwt = None
        if settings.nats_creds_file:
            jwt, seed = parse_creds(_read(settings.nats_creds_file, "CNX_NATS_CREDS_FILE"))
        elif settings.nats_nkey_seed_file:
            seed = _read(settings.nats_nkey_seed_file, "CNX_NATS_NKEY_SEED_FILE").strip().encode()
        user = settings.nats_user or None
        password = settings.nats_password.get_secret_value() or None
        token = settings.nats_token.get_secret_value() or None
        in_url = settings.nats_url_credentials
        if in_url is not None:  # one identity (settings checked): the URL's, for every server
            if in_url[1] is None:
                token = in_url[0]
            else:
                user, password = in_url
        return cls(
            user=user,
            password=password,
            token=token,
            seed=seed,
            jwt=jwt,
        )

    def connect_fields(self, nonce: str | None) -> dict[str, str]:
        """CONNECT fields: user/pass, auth_token, and for a seed `nkey` (or `jwt`) with `sig`, the
        signature of the server's nonce."""
        fields: dict[str, str] = {}
        if self.user is not None:
            fields["user"] = self.user
            fields["pass"] = self.password or ""
        if self.token is not None:
            fields["auth_token"] = self.token
        if self.seed is not None:
            import nkeys  # the nats-py[nkeys] extra; only connections with a seed need it

            keys = nkeys.from_seed(bytearray(self.seed))
            try:
                if self.jwt is not None:
                    fields["jwt"] = self.jwt
                else:
                    fields["nkey"] = keys.public_key.decode()
                if nonce:
                    signature = keys.sign(nonce.encode())
                    fields["sig"] = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
            finally:
                keys.wipe()
        return fields


def connect_options(settings: Settings, *, identity: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` and `NatsBroker(...)`: servers, credentials, TLS, inbox.

    `identity` is the service (issuer, validator, rotator, notifier); None for a platform service."""
    options: dict[str, Any] = {
        "servers": tls_urls(settings),
        "inbox_prefix": inbox_prefix(settings, identity),
        # Each connection starts at a random server of the list and of those the cluster advertises
        # (nats-py shuffles unless dont_randomize), so the services spread over the cluster.
        "dont_randomize": False,
        "ping_interval": settings.nats_ping_interval.total_seconds(),
        "max_outstanding_pings": 2,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token.get_secret_value():
        options["token"] = settings.nats_token.get_secret_value()
    in_url = settings.nats_url_credentials
    if in_url is not None:
        # Taken out of the URLs and given as options: nats-py sends a URL's credentials only to that
        # server, so the servers a cluster advertises (INFO connect_urls) would get none.
        if in_url[1] is None:
            options["token"] = in_url[0]
        else:
            options["user"], options["password"] = in_url
    if settings.nats_creds_file:
        _read(settings.nats_creds_file, "CNX_NATS_CREDS_FILE")  # fail at start, naming the setting
        options["user_credentials"] = str(settings.nats_creds_file)
    elif settings.nats_nkey_seed_file:
        options["nkeys_seed_str"] = _read(settings.nats_nkey_seed_file, "CNX_NATS_NKEY_SEED_FILE").strip()
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
        if settings.nats_tls_first:
            options["tls_handshake_first"] = True
    return options


def broker_options(settings: Settings, *, identity: str) -> dict[str, Any]:
    """`connect_options` for FastStream's NatsBroker, whose credentials and TLS go in one `security=`
    object (its keyword arguments for them are deprecated)."""
    from faststream.nats.security import (
        NatsCredentials,
        NatsNKey,
        NatsSecurity,
        NatsToken,
        NatsUserPassword,
    )

    options = connect_options(settings, identity=identity)
    tls = {
        "ssl_context": options.pop("tls", None),
        "tls_handshake_first": options.pop("tls_handshake_first", False),
    }
    security: NatsSecurity | None
    if "user" in options:
        security = NatsUserPassword(options.pop("user"), options.pop("password"), **tls)
    elif "token" in options:
        security = NatsToken(options.pop("token"), **tls)
    elif "user_credentials" in options:
        security = NatsCredentials(options.pop("user_credentials"), **tls)
    elif "nkeys_seed_str" in options:
        options.pop("nkeys_seed_str")
        assert settings.nats_nkey_seed_file is not None
        security = NatsNKey.from_file(settings.nats_nkey_seed_file, **tls)
    elif tls["ssl_context"] is not None:
        security = NatsSecurity(**tls)
    else:
        security = None
    return {**options, "security": security}
