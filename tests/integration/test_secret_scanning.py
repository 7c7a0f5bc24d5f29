"""GitHub secret scanning partner endpoint, through real parts: the issuer served by uvicorn on a free
port, a real nats-server, the notifier mailing a real SMTP sink, and reports signed the way GitHub signs
them (ECDSA P-256 / SHA-256 over the raw body) with keys published in GitHub's meta format, from a
file, over http on 127.0.0.1 and over https with a CA of the test's own."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request, Response

from services.issuer.app import create_app as create_issuer
from services.issuer.secret_scanning import GitHubKeySet, KeySetError, KeySource, make_fetcher
from shared import tokens
from shared.events import STREAM_EVENTS
from shared.settings import Settings
from tests.integration.lifecycle_harness import SETTLE, Lifecycle, eventually, lifecycle
from tests.support.asgi import served
from tests.support.certificates import certificate, new_key, write_certificate, write_key

ENDPOINT = "/v2/secret-scanning/github"
LEAK_URL = "https://github.com/octocat/hello-world/blob/0123abcd/deploy/settings.py"


class GitHubSigner:
    """A signing key of "GitHub", published in its meta format."""

    def __init__(self, identifier: str) -> None:
        self.identifier = identifier
        self.private = ec.generate_private_key(ec.SECP256R1())

    def entry(self) -> dict[str, Any]:
        key = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"key_identifier": self.identifier, "key": key.decode(), "is_current": True}

    def headers(self, body: bytes, *, identifier: str | None = None) -> dict[str, str]:
        signature = self.private.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "Github-Public-Key-Identifier": identifier or self.identifier,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
        }


def meta(*signers: GitHubSigner) -> bytes:
    return json.dumps({"public_keys": [s.entry() for s in signers]}).encode()


def report(*tokens_: str, url: str = LEAK_URL, source: str = "commit") -> bytes:
    # GitHub's own byte layout (compact, keys in its order): the signature covers exactly these bytes.
    return json.dumps(
        [{"token": t, "type": "cloudnexus_api_key", "url": url, "source": source} for t in tokens_],
        separators=(",", ":"),
    ).encode()


@asynccontextmanager
async def scanning_stack(tmp_path: Path, keys: str, **overrides: Any) -> AsyncIterator[tuple[Lifecycle, str]]:
    async with lifecycle(
        tmp_path, services=("notifier",), expiry_notices=[], secret_scanning_keys=keys, **overrides
    ) as life:
        async with served(life.apps["issuer"], lifespan="off") as url:
            yield life, url


async def revoked_events(life: Lifecycle, key_id: str) -> list[dict[str, Any]]:
    """The KeyRevoked events of a key on KEYS_EVENTS, as they travel."""
    nc = await nats.connect(life.settings.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe("keys.events.key.revoked", stream=STREAM_EVENTS, ordered_consumer=True)
        found: list[dict[str, Any]] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except nats.errors.TimeoutError:
                return found
            event = orjson.loads(msg.data)
            if event["key_id"] == key_id:
                found.append(event | {"_raw": msg.data})
    finally:
        await nc.close()


async def test_a_signed_report_revokes_the_key_mails_the_owner_and_labels_each_token(tmp_path: Path) -> None:
    github = GitHubSigner("f9525bf080f75b3506ca1ead061add62b8633a346606dc5fe544e29231c6ee0d")
    key_file = tmp_path / "github-keys.json"
    key_file.write_bytes(meta(github))
    async with scanning_stack(tmp_path, str(key_file)) as (life, url):
        leaked = await life.create_key(name="deploy bot", notify={"email": "owner@example.com"})
        already = await life.create_key(name="old")
        assert (await life.issuer.post(f"/v2/keys/{already['id']}/revoke", headers=life.auth())).is_success
        unknown = tokens.generate("prod")
        garbage = "cnx_prod_" + "A" * 36  # our shape, a wrong checksum
        body = report(leaked["key"], already["key"], unknown, garbage, leaked["key"])

        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post(ENDPOINT, content=body, headers=github.headers(body))

        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        assert response.json() == [
            {"token_raw": leaked["key"], "token_type": "cloudnexus_api_key", "label": "true_positive"},
            {"token_raw": already["key"], "token_type": "cloudnexus_api_key", "label": "true_positive"},
            {"token_raw": unknown, "token_type": "cloudnexus_api_key", "label": "false_positive"},
            {"token_raw": garbage, "token_type": "cloudnexus_api_key", "label": "false_positive"},
        ]

        async def revoked() -> bool:
            return (await life.key(leaked["id"]))["status"] == "revoked"

        await eventually(revoked, timeout=2)

        async def event_out() -> bool:
            return bool(await revoked_events(life, leaked["id"]))

        await eventually(event_out, timeout=2)
        [event] = await revoked_events(life, leaked["id"])
        assert event["leak_url"] == LEAK_URL and event["leak_source"] == "GitHub secret scanning (commit)"
        assert LEAK_URL in event["reason"] and "leaked" in event["reason"]
        assert leaked["key"].encode() not in event["_raw"], "the event carries no secret"
        assert len(await revoked_events(life, already["id"])) == 1, "an already revoked key: no second event"

        await eventually(lambda: bool(life.mailbox.for_key(leaked["id"])), timeout=SETTLE)
        [mail] = life.mailbox.for_key(leaked["id"])
        text = str(mail.get_payload(decode=True).decode())
        assert "leaked" in str(mail["Subject"]) and leaked["prefix"] in str(mail["Subject"])
        assert LEAK_URL in text and "GitHub secret scanning (commit)" in text
        assert leaked["key"] not in text


async def test_unsigned_or_wrongly_signed_reports_are_401_and_change_nothing(tmp_path: Path) -> None:
    github = GitHubSigner("github-1")
    impostor = GitHubSigner("github-1")  # GitHub's identifier, another key
    stranger = GitHubSigner("not-published")
    key_file = tmp_path / "github-keys.json"
    key_file.write_bytes(meta(github))
    async with scanning_stack(tmp_path, str(key_file), max_body_bytes=65536) as (life, url):
        key = await life.create_key(notify={"email": "owner@example.com"})
        before = await life.apps["issuer"].state.service.store.get_key_by_id(key["id"])
        body = report(key["key"])
        other_body = report(tokens.generate("prod"))
        signed = github.headers(body)
        cases = {
            "wrong key": impostor.headers(body),
            "no signature": {k: v for k, v in signed.items() if k != "Github-Public-Key-Signature"},
            "no identifier": {k: v for k, v in signed.items() if k != "Github-Public-Key-Identifier"},
            "no headers": {"Content-Type": "application/json"},
            "unknown identifier": stranger.headers(body),
            "signature of another body": github.headers(other_body),
            "signature not base64": signed | {"Github-Public-Key-Signature": "%%%"},
            "identifier swapped": impostor.headers(body, identifier="not-published"),
        }
        async with httpx.AsyncClient(base_url=url) as client:
            answers = {
                name: await client.post(ENDPOINT, content=body, headers=h) for name, h in cases.items()
            }
            # Signed but too many matches, or over the body limit: refused whole, nothing revoked.
            many = report(*([key["key"]] + ["x"] * 1000), url="", source="")
            too_many = await client.post(ENDPOINT, content=many, headers=github.headers(many))
            huge = report(key["key"], url="https://github.com/" + "a" * 70_000)
            too_big = await client.post(ENDPOINT, content=huge, headers=github.headers(huge))
            not_json = b"[{" + key["key"].encode()
            broken = await client.post(ENDPOINT, content=not_json, headers=github.headers(not_json))

        for name, answer in answers.items():
            assert answer.status_code == 401, (name, answer.text)
        assert len({a.text for a in answers.values()}) == 1, "every refusal says the same"
        assert too_many.status_code == 422 and "1000" in too_many.text
        assert too_big.status_code == 413
        assert broken.status_code == 422 and tokens.display_prefix(key["key"]) not in broken.text
        after = await life.apps["issuer"].state.service.store.get_key_by_id(key["id"])
        assert after.status == "active" and after.revision == before.revision
        assert await revoked_events(life, key["id"]) == []


async def test_an_unconfigured_endpoint_is_503(tmp_path: Path) -> None:
    app = create_issuer(Settings(data_dir=tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://issuer") as client:
        body = report(tokens.generate("prod"))
        response = await client.post(ENDPOINT, content=body, headers=GitHubSigner("k").headers(body))
    assert response.status_code == 503 and "CNX_SECRET_SCANNING_KEYS" in response.text


class KeyServer:
    """Publishes the key set over HTTP and counts the reads (as GitHub's meta endpoint would)."""

    def __init__(self, *signers: GitHubSigner) -> None:
        self.document = meta(*signers)
        self.reads = 0
        self.app = FastAPI()

        @self.app.get("/meta/public_keys/secret_scanning")
        async def keys(request: Request) -> Response:
            self.reads += 1
            etag = f'"{hash(self.document)}"'
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers={"ETag": etag})
            return Response(self.document, media_type="application/json", headers={"ETag": etag})

        @self.app.get("/moved")
        async def moved() -> Response:
            return Response(status_code=302, headers={"Location": "/meta/public_keys/secret_scanning"})


async def test_keys_from_a_url_are_read_again_for_a_new_identifier_but_not_for_every_one(
    tmp_path: Path,
) -> None:
    first, rotated = GitHubSigner("github-2024"), GitHubSigner("github-2025")
    server = KeyServer(first)
    async with served(server.app, lifespan="off") as keys_url:
        settings = {"secret_scanning_keys_min_refresh": "2s"}
        async with scanning_stack(tmp_path, f"{keys_url}/meta/public_keys/secret_scanning", **settings) as (
            life,
            url,
        ):
            key = await life.create_key()
            async with httpx.AsyncClient(base_url=url) as client:
                unknown = report(tokens.generate("prod"))
                ok = await client.post(ENDPOINT, content=unknown, headers=first.headers(unknown))
                assert ok.status_code == 200 and ok.json()[0]["label"] == "false_positive"
                assert server.reads == 1
                # Made-up identifiers in a burst: refused without a fetch each.
                for i in range(10):
                    made_up = await client.post(
                        ENDPOINT, content=unknown, headers=first.headers(unknown, identifier=f"x{i}")
                    )
                    assert made_up.status_code == 401
                assert server.reads == 1

                # GitHub rotates: the new identifier is found once the interval allows a read.
                server.document = meta(first, rotated)
                body = report(key["key"])

                async def accepted() -> bool:
                    answer = await client.post(ENDPOINT, content=body, headers=rotated.headers(body))
                    return answer.status_code == 200

                waited = await eventually(accepted, timeout=10)
                assert server.reads <= 2 + waited / 2, "at most one read per interval"
            assert (await life.key(key["id"]))["status"] == "revoked"


def make_tls(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA of the test's own and a server certificate for 127.0.0.1 signed by it."""
    ca_key, server_key = new_key(), new_key()
    ca = certificate("test CA", ca_key, ca=True)
    server = certificate("127.0.0.1", server_key, signer=(ca.subject, ca_key), host="127.0.0.1")
    return (
        write_certificate(tmp / "ca.pem", ca),
        write_certificate(tmp / "server.pem", server),
        write_key(tmp / "server.key", server_key),
    )


async def test_keys_over_https_are_verified_and_redirects_are_not_followed(tmp_path: Path) -> None:
    github = GitHubSigner("github-tls")
    server = KeyServer(github)
    ca, cert, key = make_tls(tmp_path)
    async with served(server.app, lifespan="off", ssl_certfile=str(cert), ssl_keyfile=str(key)) as base:
        trusting = make_fetcher(ssl.create_default_context(cafile=str(ca)))
        keys = GitHubKeySet(KeySource(f"{base}/meta/public_keys/secret_scanning", True), fetch=trusting)
        assert await keys.key("github-tls") is not None
        assert server.reads == 1

        # The system's CAs do not know the test CA: the certificate is checked, not ignored.
        untrusting = GitHubKeySet(KeySource(f"{base}/meta/public_keys/secret_scanning", True))
        with pytest.raises(KeySetError):
            await untrusting.key("github-tls")

        moved = GitHubKeySet(KeySource(f"{base}/moved", True), fetch=trusting)
        with pytest.raises(KeySetError):
            await moved.key("github-tls")
        assert server.reads == 1, "the redirect was not followed"
