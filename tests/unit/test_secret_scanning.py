"""GitHub secret scanning: key set parsing, signature checks, where keys may come from, the refresh limit,
the report's bounds, and how a leak is worded (pure parts; the endpoint is tested in integration)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from services.issuer import leaks
from services.issuer.scanning_api import key_set_from
from services.issuer.secret_scanning import (
    MAX_MATCHES,
    Fetched,
    GitHubKeySet,
    KeySetError,
    KeySource,
    decode_signature,
    key_source,
    parse_key_set,
    parse_report,
    signature_valid,
)
from services.notifier import domain as notifier_domain
from shared import tokens
from shared.errors import InvalidInput
from shared.events import KeyRevoked
from shared.settings import Settings
from tests.unit.test_notifier_domain import view


def pem(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def key_set(*entries: tuple[str, str]) -> bytes:
    return json.dumps(
        {"public_keys": [{"key_identifier": i, "key": k, "is_current": True} for i, k in entries]}
    ).encode()


def sign(private: ec.EllipticCurvePrivateKey, body: bytes) -> str:
    return base64.b64encode(private.sign(body, ec.ECDSA(hashes.SHA256()))).decode()


P256 = ec.generate_private_key(ec.SECP256R1())


def test_key_set_keeps_p256_keys_and_skips_others() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = parse_key_set(
        key_set(("good", pem(P256)), ("p384", pem(other)), ("rsa", pem(rsa_key)), ("junk", "not a pem"))
    )
    assert list(keys) == ["good"]
    with pytest.raises(KeySetError):
        parse_key_set(key_set(("rsa", pem(rsa_key))))
    with pytest.raises(KeySetError):
        parse_key_set(b'{"keys": []}')
    with pytest.raises(KeySetError):
        parse_key_set(b"<html>")


def test_signature_is_checked_over_the_raw_body() -> None:
    key = P256.public_key()
    body = b'[{"token":"x","type":"t","url":"","source":"commit"}]'
    signature = decode_signature(sign(P256, body))
    assert signature is not None and signature_valid(key, signature, body)
    assert not signature_valid(key, signature, body + b" ")
    assert not signature_valid(key, signature, json.dumps(json.loads(body)).encode()), "re-encoded JSON"
    other = ec.generate_private_key(ec.SECP256R1())
    assert not signature_valid(key, base64.b64decode(sign(other, body)), body)
    assert not signature_valid(key, b"\x30\x02\x00\x00", body), "malformed DER is just invalid"
    assert decode_signature(None) is None and decode_signature("") is None
    assert decode_signature("not base64!") is None
    assert decode_signature("A" * 400) is None


@pytest.mark.parametrize(
    ("value", "deployment", "is_url"),
    [
        ("https://api.github.com/meta/public_keys/secret_scanning", "production", True),
        ("/etc/cnx/github-keys.json", "production", False),
        ("github-keys.json", "local", False),
        ("http://127.0.0.1:9000/keys", "local", True),
        ("http://localhost:9000/keys", "local", True),
        ("http://[::1]:9000/keys", "local", True),
    ],
)
def test_key_sources_accepted(value: str, deployment: str, is_url: bool) -> None:
    assert key_source(value, deployment) == KeySource(value, is_url)


@pytest.mark.parametrize(
    ("value", "deployment"),
    [
        ("http://127.0.0.1:9000/keys", "production"),
        ("http://127.0.0.1:9000/keys", "staging"),
        ("http://api.github.com/meta/public_keys/secret_scanning", "local"),
        ("http://10.0.0.1/keys", "local"),
        ("ftp://example.com/keys", "local"),
    ],
)
def test_key_sources_refused(value: str, deployment: str) -> None:
    with pytest.raises(ValueError, match="CNX_SECRET_SCANNING_KEYS"):
        key_source(value, deployment)


class Source:
    """A key set that changes over time, behind a fake clock; counts reads."""

    def __init__(self) -> None:
        self.document: bytes | None = key_set(("k1", pem(P256)))
        self.now = 1000.0
        self.reads = 0
        self.etags: list[str | None] = []
        self.fail = False

    async def fetch(self, source: KeySource, etag: str | None) -> Fetched:
        self.reads += 1
        self.etags.append(etag)
        if self.fail:
            raise KeySetError("down")
        assert self.document is not None
        return Fetched(self.document, "v1")

    def keys(self, **kwargs: float) -> GitHubKeySet:
        return GitHubKeySet(
            KeySource("keys.json", False), fetch=self.fetch, monotonic=lambda: self.now, **kwargs
        )


async def test_unknown_identifiers_refresh_at_most_once_per_interval() -> None:
    source = Source()
    keys = source.keys(min_refresh=60, max_age=3600)
    assert await keys.key("k1") is not None and source.reads == 1
    assert await keys.key("k1") is not None and source.reads == 1, "cached"
    for _ in range(50):  # an attacker's made-up identifiers
        assert await keys.key("made-up") is None
    assert source.reads == 1, "no fetch within the interval, however many unknown identifiers"
    # GitHub rotates: the new key is found once the interval has passed.
    rotated = ec.generate_private_key(ec.SECP256R1())
    source.document = key_set(("k1", pem(P256)), ("k2", pem(rotated)))
    source.now += 61
    assert await keys.key("k2") is not None and source.reads == 2
    assert source.etags == [None, "v1"], "the second read is conditional"


async def test_a_stale_set_is_read_again_and_a_failed_read_keeps_the_old_keys() -> None:
    source = Source()
    keys = source.keys(min_refresh=60, max_age=600)
    assert await keys.key("k1") is not None
    source.now += 601
    source.fail = True
    assert await keys.key("k1") is not None, "the keys held are kept when a refresh fails"
    assert source.reads == 2
    # A set that drops a key (GitHub withdrew it) stops trusting it after the next refresh.
    source.fail = False
    source.document = key_set(("k3", pem(ec.generate_private_key(ec.SECP256R1()))))
    source.now += 601
    assert await keys.key("k1") is None


async def test_no_key_set_ever_read_is_an_error() -> None:
    source = Source()
    source.fail = True
    keys = source.keys(min_refresh=60)
    with pytest.raises(KeySetError):
        await keys.key("k1")
    with pytest.raises(KeySetError):
        await keys.key("k1")
    assert source.reads == 1, "the failing source is not hammered either"


def test_report_bounds_and_errors_never_echo_tokens() -> None:
    token = tokens.generate("prod")
    matches = parse_report(
        json.dumps([{"token": token, "type": "t", "url": None, "source": "commit", "new": 1}]).encode()
    )
    assert matches[0].token == token and matches[0].url is None
    one = {"token": "x", "type": "t", "url": "", "source": "s"}
    with pytest.raises(InvalidInput, match=f"at most {MAX_MATCHES}"):
        parse_report(json.dumps([one] * (MAX_MATCHES + 1)).encode())
    for bad in (
        b'{"token": "' + token.encode() + b'"}',
        b"[" + token.encode() + b"]",
        json.dumps([{"type": token}]).encode(),
        json.dumps([{"token": 5, "type": token}]).encode(),
    ):
        with pytest.raises(InvalidInput) as caught:
            parse_report(bad)
        assert token not in caught.value.message and tokens.display_prefix(token) not in caught.value.message


def test_leak_reason_says_where_and_keeps_secrets_out() -> None:
    token = tokens.generate("dev")
    url = f"https://github.com/o/r/blob/abc/config.py?key={token}\n"
    reason = leaks.reason("GitHub secret scanning (commit)", url)
    assert reason.startswith(
        "secret reported leaked by GitHub secret scanning (commit) at https://github.com/"
    )
    assert token not in reason and tokens.display_prefix(token) in reason and "\n" not in reason
    assert leaks.reason(None, None) == "secret reported leaked by a secret scanner"
    assert len(leaks.clean_url("https://x/" + "a" * 5000) or "") == leaks.MAX_URL_CHARS


def test_a_leak_revocation_notice_says_where_it_leaked() -> None:
    url = "https://github.com/octocat/hello/blob/abc/settings.py"
    event = KeyRevoked(
        account_id="acct",
        key_id="key_1",
        key=view(),
        reason=leaks.reason("GitHub secret scanning (commit)", url),
        leak_source="GitHub secret scanning (commit)",
        leak_url=url,
    )
    notice = notifier_domain.notice_for(event)
    assert notice is not None and notice.purpose == "revoked" and notice.extra["leak_url"] == url
    mail = notifier_domain.email_message(notice, "keys@x", "owner@example.com")
    text = str(mail.get_content())
    assert "leaked" in str(mail["Subject"]) and url in text and "GitHub secret scanning (commit)" in text
    assert url in notifier_domain.webhook_body(notice).decode()
    by_hand = notifier_domain.notice_for(KeyRevoked(account_id="acct", key_id="key_1", key=view()))
    assert by_hand is not None and "leak_url" not in by_hand.extra
    assert "leaked" not in str(notifier_domain.email_message(by_hand, "keys@x", "o@example.com")["Subject"])


def test_the_issuer_refuses_an_http_key_url_outside_a_local_deployment() -> None:
    secrets = {
        "peppers": [SecretStr("p" * 40)],
        "encryption_keys": [SecretStr(base64.b64encode(b"k" * 32).decode())],
    }
    url = "http://127.0.0.1:9000/meta/public_keys/secret_scanning"
    with pytest.raises(ValueError, match="https"):
        key_set_from(Settings(deployment="production", secret_scanning_keys=url, **secrets))
    local = key_set_from(Settings(deployment="local", secret_scanning_keys=url))
    assert local is not None and local.source == KeySource(url, True)
    assert key_set_from(Settings()) is None, "unset: the endpoint is off"
