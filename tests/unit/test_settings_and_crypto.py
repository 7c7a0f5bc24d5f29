from datetime import timedelta

import pytest
from pydantic import ValidationError

from shared.crypto import DecryptionError, FieldCipher
from shared.settings import DEV_ENCRYPTION_KEY, DEV_PEPPER, Settings, parse_duration

KEY_A = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
KEY_B = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("30", timedelta(seconds=30)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_bad_duration_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="invalid duration 'soon'"):
        parse_duration("soon")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNX_ROTATION_GRACE", "6s")
    monkeypatch.setenv("CNX_EXPIRY_NOTICES", "5s,10s")
    monkeypatch.setenv("CNX_PEPPERS", "new-pepper,old-pepper")
    settings = Settings()
    assert settings.rotation_grace == timedelta(seconds=6)
    assert settings.expiry_notices == [timedelta(seconds=10), timedelta(seconds=5)]
    assert [p.get_secret_value() for p in settings.peppers] == ["new-pepper", "old-pepper"]
    assert "new-pepper" not in repr(settings)


def test_placeholder_secrets_are_refused_outside_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNX_DEPLOYMENT", "production")
    monkeypatch.setenv("CNX_PEPPERS", DEV_PEPPER)
    with pytest.raises(ValidationError, match="placeholder"):
        Settings()
    monkeypatch.delenv("CNX_PEPPERS")
    monkeypatch.setenv("CNX_ENCRYPTION_KEYS", DEV_ENCRYPTION_KEY)
    with pytest.raises(ValidationError, match="placeholder"):
        Settings()


def test_outside_local_a_secret_not_given_is_absent_and_the_service_needing_it_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/k8s gives each service only its own secrets: a validator has no encryption keys."""
    monkeypatch.setenv("CNX_DEPLOYMENT", "production")
    monkeypatch.setenv("CNX_NATS_URL", "tls://nats.example:4222")
    monkeypatch.setenv("CNX_NATS_USER", "validator")
    monkeypatch.setenv("CNX_NATS_PASSWORD", "nats-password")
    monkeypatch.setenv("CNX_PEPPERS", "a-real-pepper-of-enough-length-000")
    settings = Settings()
    assert settings.pepper_values() == [b"a-real-pepper-of-enough-length-000"]
    with pytest.raises(ValueError, match="CNX_ENCRYPTION_KEYS is required"):
        settings.encryption_key_values()
    monkeypatch.delenv("CNX_PEPPERS")
    with pytest.raises(ValueError, match="CNX_PEPPERS is required"):
        Settings().pepper_values()


def test_database_url_defaults_to_a_sqlite_file_per_service(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, validator_database_url="postgresql://db/x")
    assert settings.database_url("issuer") == f"sqlite+aiosqlite:///{tmp_path}/issuer.db"
    assert settings.database_url("validator") == "postgresql://db/x"


def test_field_cipher_round_trip_and_rotation() -> None:
    old = FieldCipher([KEY_A])
    sealed = old.encrypt("owner@example.com", context="notify")
    assert "owner@example.com" not in sealed
    rotated = FieldCipher([KEY_B, KEY_A])
    assert rotated.decrypt(sealed, context="notify") == "owner@example.com"
    assert rotated.encrypt("x").split(".")[1] != sealed.split(".")[1]
    with pytest.raises(DecryptionError):
        rotated.decrypt(sealed, context="webhook-secret")
    with pytest.raises(DecryptionError):
        FieldCipher([KEY_B]).decrypt(sealed, context="notify")
