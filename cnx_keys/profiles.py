"""The CLI's profiles: which management API to call and with which key, kept in a TOML file that only
its owner can read (mode 0600, in a 0700 directory).

Where the file is: `--config`, else CNX_CONFIG_FILE, else $XDG_CONFIG_HOME/cnx-keys/config.toml, else
~/.config/cnx-keys/config.toml. CNX_API_URL and CNX_API_KEY override what a profile holds, so a CI job
needs no file at all.

    [profiles.default]
    api_url = "http://localhost:8080"
    api_key = "cnx_prod_..."
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PROFILE = "default"
DEFAULT_API_URL = "http://localhost:8080"
ENV_CONFIG = "CNX_CONFIG_FILE"
ENV_PROFILE = "CNX_PROFILE"
ENV_URL = "CNX_API_URL"
ENV_KEY = "CNX_API_KEY"

_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_HEADER = (
    "# cnx-keys profiles, written by `cnx-keys login`. It holds API keys: keep it private (mode 0600).\n"
)


class ConfigError(Exception):
    """The profile file or the environment cannot give what a command needs (no key, a bad file)."""


@dataclass(frozen=True)
class Profile:
    name: str
    api_url: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class Credentials:
    """What a command calls the API with, and where each half came from (for messages)."""

    api_url: str
    api_key: str = field(repr=False)
    source: str


def config_path(explicit: Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    if explicit is not None:
        return explicit
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    xdg = environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec: a relative XDG_CONFIG_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "cnx-keys" / "config.toml"


def check_profile_name(name: str) -> str:
    if not _PROFILE_NAME.match(name):
        raise ConfigError(
            f"invalid profile name {name!r}: letters, digits, '.', '_' and '-', at most 64 characters"
        )
    return name


def load(path: Path) -> dict[str, Profile]:
    """The profiles in `path` (none when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message names a line and column, never the content
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    profiles: dict[str, Profile] = {}
    tables = data.get("profiles", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: `profiles` must be a table")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: profile {name!r} must be a table")
        url, key = table.get("api_url", DEFAULT_API_URL), table.get("api_key", "")
        if not isinstance(url, str) or not isinstance(key, str):
            raise ConfigError(f"{path}: api_url and api_key of profile {name!r} must be strings")
        profiles[name] = Profile(name, url, key)
    return profiles


def too_open(path: Path) -> bool:
    """True when others than the owner may read or write the file (it holds keys)."""
    try:
        return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)
    except OSError:
        return False


def _toml_string(value: str, what: str) -> str:
    # JSON's string escapes are valid TOML basic-string escapes; control characters (which TOML
    # forbids raw, and which have no place in a URL or a key) are refused instead.
    if _CONTROL.search(value):
        raise ConfigError(f"{what} must not contain control characters")
    return json.dumps(value, ensure_ascii=False)


def save(path: Path, profiles: Mapping[str, Profile]) -> None:
    """Write every profile to `path` with mode 0600, atomically (a crash leaves the old file or the
    new one, never half of one, and never a moment with looser permissions)."""
    lines = [_HEADER]
    for name in sorted(profiles):
        profile = profiles[name]
        check_profile_name(name)
        lines.append(f"\n[profiles.{name}]\n")
        lines.append(f"api_url = {_toml_string(profile.api_url, 'the API URL')}\n")
        lines.append(f"api_key = {_toml_string(profile.api_key, 'the API key')}\n")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)  # whatever the umask did
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_profile(path: Path, profile: Profile) -> None:
    check_profile_name(profile.name)
    profiles = load(path)
    profiles[profile.name] = profile
    save(path, profiles)


def remove_profile(path: Path, name: str) -> bool:
    """Forget a profile; False when there was none of that name."""
    profiles = load(path)
    if profiles.pop(name, None) is None:
        return False
    save(path, profiles)
    return True


def resolve(path: Path, profile: str | None, environ: Mapping[str, str] = os.environ) -> Credentials:
    """The URL and key a command uses: CNX_API_URL and CNX_API_KEY first, then the profile (named, or
    CNX_PROFILE, or `default`), then the local stack's URL."""
    name = profile or environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    env_url, env_key = environ.get(ENV_URL, ""), environ.get(ENV_KEY, "")
    stored = load(path).get(name) if not (env_url and env_key) else None
    if env_key:
        key, key_source = env_key.strip(), ENV_KEY
    elif stored is not None and stored.api_key:
        key, key_source = stored.api_key, f"profile {name!r}"
    elif profile or environ.get(ENV_PROFILE):
        raise ConfigError(f"no profile {name!r} in {path}: run `cnx-keys login --profile {name}`")
    else:
        raise ConfigError(f"no API key: run `cnx-keys login`, or set {ENV_KEY} (and {ENV_URL})")
    url = env_url or (stored.api_url if stored is not None else "") or DEFAULT_API_URL
    return Credentials(url, key, key_source)
