"""What `CreateKey` accepts, `KeyObject` can serve back: the input model's value, sealed as the issuer
seals it and read back as the issuer reads it, always fits the output model (issue 18, finding 1:
a 2,083-character URL normalised to 2,084 was stored, then refused by the response model)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from hypothesis import given, settings
from pydantic import ValidationError

from services.issuer.api import key_object
from services.issuer.domain import Key
from services.issuer.schemas import CreatedKey, CreateKey, KeyList, KeyObject, Notify
from services.issuer.service import IssuerService
from shared.crypto import FieldCipher
from tests.support.strategies import create_bodies

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# The store is never reached: only sealing and reading back notification targets are used.
SERVICE = IssuerService(
    None,  # type: ignore[arg-type]
    peppers=[b"p" * 32],
    cipher=FieldCipher([base64.b64encode(b"k" * 32).decode()]),
)


def served(request: CreateKey) -> dict[str, object]:
    key = Key(
        id="key_1",
        account_id="acct",
        digest="d" * 64,
        prefix="cnx_prod_abcd",
        name=request.name,
        environment=request.environment,
        scopes=request.scopes,
        plan="professional",
        rate_limit={"requests_per_minute": 1000, "burst": 2000},
        status="active",
        created_at=NOW,
        expires_at=None,
        notify_sealed=SERVICE._seal_notify(request.notify),
        key_metadata=dict(request.metadata),
    )
    return key_object(SERVICE, key)


@settings(max_examples=400, deadline=None)
@given(candidate=create_bodies)
def test_whatever_create_key_accepts_key_object_serves_back(candidate: dict[str, object]) -> None:
    try:
        request = CreateKey.model_validate(candidate)
    except ValidationError:
        return
    body = served(request)
    KeyObject.model_validate(body)
    CreatedKey.model_validate({**body, "key": "cnx_prod_" + "a" * 36})
    KeyList.model_validate({"data": [body], "next_cursor": None})
    if request.notify and request.notify.webhook_url:
        assert body["notify"]["webhook_url"] == str(request.notify.webhook_url)  # type: ignore[index]


def test_the_exact_case_of_the_finding() -> None:
    url = "https://hooks.example.com?" + "a" * (2083 - len("https://hooks.example.com?"))
    assert len(url) == 2083
    try:
        Notify(webhook_url=url)  # type: ignore[arg-type]
    except ValidationError as exc:
        assert exc.errors()[0]["loc"] == ("webhook_url",)
    else:
        raise AssertionError("a URL that normalises to 2,084 characters was accepted")
