"""NATS identity settings: production refuses a plaintext bus, one identity at a time, and the options
every connection is built from (shared/natsauth.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.natsauth import ConnectCredentials, connect_options, parse_creds
from shared.settings import Settings

REAL = {
    "peppers": "a-real-pepper-of-some-length-000000000000",
    "encryption_keys": "cmVhbC1rZXktb2YtMzItYnl0ZXMtZm9yLXRoZS10ZXM=",
}


def test_production_refuses_a_plaintext_nats_url() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(
            deployment="production",
            nats_url="nats://nats.internal:4222",
            nats_password="pw",
            nats_user="u",
            **REAL,
        )
    message = str(refused.value)
    assert "CNX_NATS_ALLOW_PLAINTEXT" in message and "keys.validate" in message
    assert "pw" not in message.replace("CNX_NATS_", "")
    with pytest.raises(ValidationError):  # one plaintext server in a cluster list is enough
        Settings(deployment="production", nats_url="tls://a:4222,nats://b:4222", **REAL)


def test_production_accepts_tls_or_an_explicit_plaintext_opt_in(tmp_path: Path) -> None:
    assert Settings(deployment="production", nats_url="tls://a:4222,tls://b:4222", **REAL).nats_tls
    assert Settings(
        deployment="production", nats_url="nats://a:4222", nats_tls_ca=tmp_path / "ca.pem", **REAL
    ).nats_tls
    Settings(deployment="production", nats_url="nats://a:4222", nats_allow_plaintext=True, **REAL)
    Settings(deployment="staging", nats_url="nats://a:4222", **REAL)  # the rule is production's
    Settings(nats_url="nats://127.0.0.1:4333")  # local


@pytest.mark.parametrize(
    "fields",
    [
        {"nats_user": "u", "nats_token": "t"},
        {"nats_token": "t", "nats_creds_file": "x.creds"},
        {"nats_nkey_seed_file": "u.nk", "nats_creds_file": "x.creds"},
        {"nats_url": "nats://u:p@host:4222", "nats_user": "v"},
        {"nats_password": "p"},
        {"nats_tls_key": "k.pem"},
    ],
)
def test_one_identity_at_a_time(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings(**fields)  # type: ignore[arg-type]


def test_connect_options_turn_nats_urls_into_tls_when_tls_is_configured(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    options = connect_options(
        Settings(nats_url="nats://a:4222, nats://b:4222", nats_user="u", nats_password="p")
    )
    assert options["servers"] == ["nats://a:4222", "nats://b:4222"]
    assert options["user"] == "u" and options["password"] == "p" and "tls" not in options
    assert options["inbox_prefix"] == "_INBOX"
    assert connect_options(Settings(), identity="issuer")["inbox_prefix"] == "_INBOX_issuer"
    with pytest.raises(ValueError, match="CNX_NATS_TLS"):  # the CA file does not exist
        connect_options(Settings(nats_url="nats://a:4222", nats_tls_ca=ca))


def test_creds_files_are_parsed_as_nsc_writes_them() -> None:
    text = (
        "-----BEGIN NATS USER JWT-----\neyJhbGciOi.payload.sig\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "-----BEGIN USER NKEY SEED-----\nSUAEXAMPLESEED\n------END USER NKEY SEED------\n"
    )
    assert parse_creds(text) == ("eyJhbGciOi.payload.sig", b"SUAEXAMPLESEED")
    with pytest.raises(ValueError, match="CNX_NATS_CREDS_FILE"):
        parse_creds("nothing here")


def test_a_url_list_is_read_once_and_its_credentials_go_to_every_server() -> None:
    settings = Settings(nats_url="nats://svc:s3cret@a:4222, b:4223 ,nats://svc:s3cret@[::1]")
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4223", "nats://[::1]:4222"]
    options = connect_options(settings)
    # Out of the URLs and into the options: nats-py gives a URL's credentials to that server only, so
    # the servers a cluster advertises would get none.
    assert options["servers"] == settings.nats_servers
    assert (options["user"], options["password"]) == ("svc", "s3cret")
    assert not options["dont_randomize"]
    fields = ConnectCredentials.from_settings(settings).connect_fields(None)
    assert (fields["user"], fields["pass"]) == ("svc", "s3cret")
    token = Settings(nats_url="nats://t0ken@a,nats://b")
    assert connect_options(token)["token"] == "t0ken" and "user" not in connect_options(token)
    assert ConnectCredentials.from_settings(token).connect_fields(None) == {"auth_token": "t0ken"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://u:one@a,nats://u:two@b", "different credentials"),
        ("http://a:4222", "not a NATS URL"),
        (" , ", "names no server"),
        ("nats://a:port", "invalid port"),
    ],
)
def test_a_bad_url_list_is_refused_without_echoing_it(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        Settings(nats_url=url)
    assert "one" not in str(caught.value) and "two" not in str(caught.value)


def test_stream_replicas_default_to_one_and_stay_in_range() -> None:
    assert Settings().stream_replicas == 1
    assert Settings(stream_replicas=3).stream_replicas == 3
    with pytest.raises(ValidationError):
        Settings(stream_replicas=0)
