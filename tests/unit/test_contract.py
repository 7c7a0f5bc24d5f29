"""The published AsyncAPI document is what the event models say: a contract change is a reviewed diff."""

from pathlib import Path

from shared.contract import KEY_EVENTS, asyncapi_json

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def test_published_asyncapi_matches_the_models() -> None:
    assert DOC.read_text() == asyncapi_json(), "run `cnx-keys asyncapi --out docs/asyncapi.json` and review"


def test_every_event_type_is_documented_with_its_fields() -> None:
    text = asyncapi_json()
    for model, _, _ in KEY_EVENTS:
        assert model.__name__ in text
    for field in ("event_id", "occurred_at", "account_id", "key_id", "revision", "digest"):
        assert f'"{field}"' in text
