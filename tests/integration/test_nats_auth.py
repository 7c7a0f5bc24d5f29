"""Every kind of NATS credential the services accept, against a real nats-server configured for it, on
each of the three connections they make: nats-py (`connect_raw`), FastStream (`make_broker`) and the
validator's lean connection (natswire, whose CONNECT fields shared/natsauth.py writes).

Kinds: user and password, token, NKey seed, JWT creds (operator mode with a memory resolver; the
operator, account and user JWTs are made here with `nkeys`), and TLS with a CA and a client certificate
that the server verifies. Each server also refuses a client without them.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.validator.natswire import ProtocolError, WireClient
from shared.messaging import connect_raw, make_broker
from shared.natsauth import ConnectCredentials, connect_options, tls_context
from shared.natsserver import EmbeddedNats
from shared.settings import Settings


# -- credentials made here ------------------------------------------------------------------------------
def new_keys(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats_claims: dict[str, Any]) -> str:
    """A NATS JWT (header `ed25519-nkey`), signed by `issuer` over header.payload."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {
        "jti": _b64(secrets.token_bytes(32)),
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats_claims, "version": 2},
    }
    payload = _b64(json.dumps(claims).encode())
    signature = _b64(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


@dataclass
class Ca:
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_ca(directory: Path) -> Ca:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    now = dt.datetime.now(dt.UTC)

    def certificate(
        name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, *, ca: bool = False
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    def write(path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cnx test CA")])
    ca_cert = certificate("cnx test CA", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    return Ca(
        ca_file=write(directory / "ca.pem", ca_cert.public_bytes(pem)),
        server_cert=write(
            directory / "server.pem",
            certificate("127.0.0.1", server_key, ca_name, ca_key).public_bytes(pem),
        ),
        server_key=write(directory / "server-key.pem", pem_key(server_key)),
        client_cert=write(
            directory / "client.pem", certificate("cnx-client", client_key, ca_name, ca_key).public_bytes(pem)
        ),
        client_key=write(directory / "client-key.pem", pem_key(client_key)),
    )


# -- servers -------------------------------------------------------------------------------------------
@dataclass
class Case:
    """A server configured for one kind of credential, the settings that pass it and some that do not."""

    server: EmbeddedNats
    good: dict[str, Any]
    bad: dict[str, Any]

    def settings(self, fields: dict[str, Any]) -> Settings:
        return Settings(nats_url=self.server.url, nats_connect_timeout="3s", **fields)


def start_server(directory: Path, config: dict[str, Any]) -> EmbeddedNats:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "server.conf"
    conf.write_text(json.dumps(config))
    return EmbeddedNats(directory / "store", log_file=directory / "server.log", extra_args=["-c", str(conf)])


def user_password_case(tmp: Path) -> Case:
    server = start_server(tmp, {"authorization": {"users": [{"user": "svc", "password": "s3cret-pass"}]}})
    return Case(
        server,
        {"nats_user": "svc", "nats_password": "s3cret-pass"},
        {"nats_user": "svc", "nats_password": "wrong"},
    )


def token_case(tmp: Path) -> Case:
    server = start_server(tmp, {"authorization": {"token": "t0ken-value"}})
    return Case(server, {"nats_token": "t0ken-value"}, {"nats_token": "not-it"})


def nkey_case(tmp: Path) -> Case:
    user, stranger = new_keys(nkeys.PREFIX_BYTE_USER), new_keys(nkeys.PREFIX_BYTE_USER)
    server = start_server(tmp, {"authorization": {"users": [{"nkey": user.public_key.decode()}]}})
    (tmp / "user.nk").write_bytes(user.seed + b"\n")
    (tmp / "stranger.nk").write_bytes(stranger.seed + b"\n")
    return Case(
        server, {"nats_nkey_seed_file": tmp / "user.nk"}, {"nats_nkey_seed_file": tmp / "stranger.nk"}
    )


def creds_file(path: Path, user_jwt: str, seed: bytes) -> Path:
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    return path


def jwt_case(tmp: Path) -> Case:
    """Operator mode: the operator signs the account, the account signs the user; the account JWT is
    preloaded into a memory resolver."""
    operator = new_keys(nkeys.PREFIX_BYTE_OPERATOR)
    account = new_keys(nkeys.PREFIX_BYTE_ACCOUNT)
    user, other = new_keys(nkeys.PREFIX_BYTE_USER), new_keys(nkeys.PREFIX_BYTE_USER)
    account_pub = account.public_key.decode()
    operator_jwt = jwt(operator, operator.public_key.decode(), "cnx-op", {"type": "operator"})
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "conn": -1}
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    account_jwt = jwt(operator, account_pub, "cnx", {"type": "account", "limits": {**limits, **jetstream}})
    user_claims = {"type": "user", "issuer_account": account_pub, "subs": -1, "data": -1, "payload": -1}
    user_jwt = jwt(account, user.public_key.decode(), "svc", user_claims)
    # A well-formed JWT for a user the server has never heard of, signed by a stranger account.
    stranger = new_keys(nkeys.PREFIX_BYTE_ACCOUNT)
    stranger_jwt = jwt(stranger, other.public_key.decode(), "x", {**user_claims, "issuer_account": ""})
    # JetStream in operator mode needs a system account.
    system = new_keys(nkeys.PREFIX_BYTE_ACCOUNT)
    system_pub = system.public_key.decode()
    system_jwt = jwt(operator, system_pub, "SYS", {"type": "account", "limits": limits})
    server = start_server(
        tmp,
        {
            "operator": operator_jwt,
            "system_account": system_pub,
            "resolver": "MEMORY",
            "resolver_preload": {account_pub: account_jwt, system_pub: system_jwt},
        },
    )
    return Case(
        server,
        {"nats_creds_file": creds_file(tmp / "svc.creds", user_jwt, user.seed)},
        {"nats_creds_file": creds_file(tmp / "stranger.creds", stranger_jwt, other.seed)},
    )


def tls_case(tmp: Path) -> Case:
    """TLS with a CA of our own; the server requires and verifies a client certificate."""
    ca = make_ca(tmp / "pki")
    other = make_ca(tmp / "other-pki")  # a client certificate from a CA the server does not trust
    server = start_server(
        tmp,
        {
            "tls": {
                "cert_file": str(ca.server_cert),
                "key_file": str(ca.server_key),
                "ca_file": str(ca.ca_file),
                "verify": True,
                "timeout": 3,
            }
        },
    )
    trusted = {"nats_tls_ca": ca.ca_file}
    return Case(
        server,
        {**trusted, "nats_tls_cert": ca.client_cert, "nats_tls_key": ca.client_key},
        {**trusted, "nats_tls_cert": other.client_cert, "nats_tls_key": other.client_key},
    )


CASES: dict[str, Callable[[Path], Case]] = {
    "user-password": user_password_case,
    "token": token_case,
    "nkey": nkey_case,
    "jwt-creds": jwt_case,
    "tls-client-cert": tls_case,
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    built = CASES[request.param](tmp_path)
    built.server.start()
    yield built
    built.server.stop()


@asynccontextmanager
async def wire(settings: Settings, name: str) -> AsyncIterator[WireClient]:
    client = WireClient(
        settings.nats_url,
        name=name,
        connect_timeout=3,
        reconnect_wait=(0.05, 0.2),
        credentials=ConnectCredentials.from_settings(settings),
        ssl_context=tls_context(settings),
        tls=settings.nats_tls,
        tls_first=settings.nats_tls_first,
    )
    await client.start()
    try:
        yield client
    finally:
        await client.close()


# -- the tests -------------------------------------------------------------------------------------------
async def test_each_connection_authenticates_and_talks(case: Case) -> None:
    """nats-py and FastStream connect with the credentials; the lean connection answers a request sent
    through both of them."""
    settings = case.settings(case.good)
    nc = await connect_raw(settings, "auth-test")
    broker = make_broker(settings, "issuer")
    try:
        await broker.connect()
        assert broker.connection.is_connected
        received: list[bytes] = []

        def answer(subject: bytes, reply: bytes, payload: bytes, headers: bytes | None) -> bytes:
            received.append(payload)
            return b"pong:" + payload

        async with wire(settings, "auth-test-wire") as lean:
            lean.subscribe("auth.test", answer)
            await lean.flush()
            reply = await nc.request("auth.test", b"from-nats-py", timeout=3)
            assert reply.data == b"pong:from-nats-py"
            reply = await broker.connection.request("auth.test", b"from-faststream", timeout=3)
            assert reply.data == b"pong:from-faststream"
        assert received == [b"from-nats-py", b"from-faststream"]
    finally:
        await broker.stop()
        await nc.close()


async def test_each_server_refuses_wrong_or_missing_credentials(case: Case) -> None:
    for fields in (case.bad, {}):
        settings = case.settings(fields)

        async def ignore(exc: Exception) -> None:
            pass  # nats-py reports the refusal here too; the raise below is what counts

        with pytest.raises(Exception):  # noqa: B017 (nats-py raises several kinds)
            nc = await asyncio.wait_for(
                nats.connect(
                    **connect_options(settings),
                    allow_reconnect=False,
                    connect_timeout=2,
                    max_reconnect_attempts=0,
                    error_cb=ignore,
                ),
                10,
            )
            await nc.close()
        with pytest.raises((ProtocolError, OSError, TimeoutError)):
            async with wire(settings, "refused"):
                pass


async def test_secrets_stay_out_of_reprs_and_errors(tmp_path: Path) -> None:
    settings = Settings(nats_user="svc", nats_password="s3cret-pass")
    credentials = ConnectCredentials.from_settings(settings)
    assert "s3cret-pass" not in repr(credentials) and "s3cret-pass" not in repr(settings)
    missing = Settings(nats_nkey_seed_file=tmp_path / "absent.nk")
    with pytest.raises(ValueError, match="CNX_NATS_NKEY_SEED_FILE"):
        ConnectCredentials.from_settings(missing)
