"""The pure parts of cnx_keys: retry delays, Retry-After, error bodies, profile files, times in words."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cnx_keys.cli import cleartext
from cnx_keys.errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    error_from_response,
    retry_after_seconds,
)
from cnx_keys.profiles import (
    ConfigError,
    Profile,
    config_path,
    load,
    remove_profile,
    resolve,
    save_profile,
    too_open,
)
from cnx_keys.render import clean, relative
from cnx_keys.retry import RetryPolicy

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
KEY = "cnx_prod_" + "a" * 36


# retry


def test_retry_waits_at_least_retry_after_and_backs_off_exponentially() -> None:
    no_jitter = RetryPolicy(max_retries=4, backoff=0.5, max_delay=30, random=lambda: 0.0)
    assert [no_jitter.delay(n, 429, None) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert no_jitter.delay(0, 429, 3.0) == 3.0  # Retry-After wins when longer
    assert no_jitter.delay(3, 429, 1.0) == 4.0  # backoff wins when longer
    assert no_jitter.delay(4, 429, None) is None  # out of tries
    full_jitter = RetryPolicy(backoff=1.0, random=lambda: 1.0)
    assert full_jitter.delay(2, 503, None) == 2.0  # at most half of 4 taken off


def test_retry_only_what_did_not_happen() -> None:
    policy = RetryPolicy()
    for status in (400, 401, 403, 404, 409, 422, 500):
        assert policy.delay(0, status, 1.0) is None
    assert policy.delay(0, 503, None) is not None


def test_retry_gives_up_on_a_retry_after_beyond_max_delay() -> None:
    policy = RetryPolicy(max_delay=10)
    assert policy.delay(0, 429, 60.0) is None
    assert RetryPolicy(backoff=100, max_delay=10, random=lambda: 0.0).delay(0, 429, None) == 10


def test_retry_after_seconds() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Fri, 01 May 2026 12:00:05 GMT", now=NOW) == 5.0
    assert retry_after_seconds("Fri, 01 May 2026 11:00:00 GMT", now=NOW) == 0.0


# errors


def test_error_from_the_apis_body() -> None:
    body = {"error": {"code": "invalid_request", "message": "unknown scope 'x:y'", "field": "scopes"}}
    error = error_from_response(httpx.Response(422, json=body))
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.code, error.message, error.field) == (
        422,
        "invalid_request",
        body["error"]["message"],
        "scopes",
    )
    limited = error_from_response(
        httpx.Response(
            429, json={"error": {"code": "rate_limited", "message": "later"}}, headers={"Retry-After": "2"}
        )
    )
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0 and limited.field is None


def test_error_from_a_body_that_is_not_the_apis() -> None:
    error = error_from_response(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert type(error) is ApiError and error.code == "http_502" and error.message == "HTTP 502 Bad Gateway"


# profiles


def test_config_path_honours_the_override_and_xdg(tmp_path: Path) -> None:
    assert config_path(tmp_path / "x.toml", {}) == tmp_path / "x.toml"
    assert config_path(None, {"CNX_CONFIG_FILE": "/etc/c.toml"}) == Path("/etc/c.toml")
    assert config_path(None, {"XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/cnx-keys/config.toml")
    assert config_path(None, {"XDG_CONFIG_HOME": "relative"}) == Path.home() / ".config/cnx-keys/config.toml"


def test_profiles_are_written_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "cnx-keys" / "config.toml"
    save_profile(path, Profile("default", "http://localhost:8080", KEY))
    save_profile(path, Profile("staging", 'https://keys.example.com/"quoted"', KEY.replace("a", "b")))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not too_open(path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    profiles = load(path)
    assert profiles["staging"].api_url == 'https://keys.example.com/"quoted"'
    assert profiles["default"].api_key == KEY and KEY not in repr(profiles["default"])
    assert remove_profile(path, "staging") and not remove_profile(path, "staging")
    assert list(load(path)) == ["default"]
    assert not list(path.parent.glob(".*tmp"))


def test_profiles_refuse_what_would_break_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    with pytest.raises(ConfigError):
        save_profile(path, Profile("bad name]", "http://x", KEY))
    with pytest.raises(ConfigError):
        save_profile(path, Profile("default", "http://x\n[profiles.evil]", KEY))
    assert not path.exists()
    path.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


def test_loose_permissions_are_noticed(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_profile(path, Profile("default", "http://x", KEY))
    path.chmod(0o644)
    assert too_open(path)


def test_the_environment_overrides_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_profile(path, Profile("default", "http://profile:8080", KEY))
    assert resolve(path, None, {}).api_url == "http://profile:8080"
    assert resolve(path, None, {"CNX_API_URL": "http://env:1"}).api_url == "http://env:1"
    env_key = resolve(path, None, {"CNX_API_KEY": "cnx_dev_x"})
    assert env_key.api_key == "cnx_dev_x" and env_key.api_url == "http://profile:8080"
    assert resolve(tmp_path / "none.toml", None, {"CNX_API_KEY": "k"}).api_url == "http://localhost:8080"
    with pytest.raises(ConfigError, match="cnx-keys login --profile prod"):
        resolve(path, "prod", {})
    with pytest.raises(ConfigError, match="cnx-keys login"):
        resolve(tmp_path / "none.toml", None, {})


# render


def test_times_in_words() -> None:
    assert relative(None, NOW) == "never"
    assert relative(NOW - timedelta(seconds=3), NOW) == "just now"
    assert relative(NOW - timedelta(minutes=2, seconds=5), NOW) == "2 mins ago"
    assert relative(NOW - timedelta(minutes=1), NOW) == "1 min ago"
    assert relative(NOW + timedelta(hours=5), NOW) == "in 5 hours"
    assert relative(NOW + timedelta(days=90) - timedelta(seconds=1), NOW) == "in 3 months"
    assert relative(NOW + timedelta(days=7), NOW) == "in 7 days"
    assert relative(NOW + timedelta(days=365), NOW) == "in 1 year"


def test_shown_text_cannot_steer_the_terminal() -> None:
    assert clean("ok\x1b[31mred\x07\u202eevil") == "ok\ufffd[31mred\ufffd\ufffdevil"


def test_cleartext_to_another_machine_is_noticed() -> None:
    assert cleartext("http://keys.example.com") and cleartext("http://10.0.0.5:8080")
    assert not cleartext("https://keys.example.com")
    assert not cleartext("http://127.0.0.1:8080") and not cleartext("http://localhost:8080")
    assert not cleartext("http://[::1]:8080")
