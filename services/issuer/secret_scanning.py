"""GitHub secret scanning partner reports: signature verification, GitHub's signing key set, the report.

GitHub POSTs a JSON array of matches `[{token, type, url, source}]` and signs the raw body with ECDSA
P-256 / SHA-256: `Github-Public-Key-Identifier` names the key, `Github-Public-Key-Signature` is the
base64 of the DER signature. The keys come in GitHub's meta format (`{"public_keys": [{key_identifier,
key, is_current}]}`, `key` a PEM public key) from `CNX_SECRET_SCANNING_KEYS`: a file or an https URL
(GitHub's is https://api.github.com/meta/public_keys/secret_scanning).

The key set is cached. An identifier it does not hold (GitHub rotated its key) makes it fetch again,
but at most once per `min_refresh`: anyone can send a made-up identifier, and must not be able to make
us fetch on every request. The parsing and verification functions are pure; `GitHubKeySet` does the I/O.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import httpx
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import InvalidInput

log = logging.getLogger("issuer.secret_scanning")

HEADER_KEY_ID = "github-public-key-identifier"
HEADER_SIGNATURE = "github-public-key-signature"
# GitHub sends batches; a report of more matches than this is refused as a whole (GitHub retries).
MAX_MATCHES = 1000
# A DER P-256 signature is at most 72 bytes (96 base64 characters); identifiers are 64 hex characters.
MAX_SIGNATURE_CHARS = 200
MAX_KEY_ID_CHARS = 200
# The key set is a few hundred bytes per key: anything much larger is not one.
MAX_KEY_SET_BYTES = 256 * 1024
FETCH_TIMEOUT_S = 5.0


class KeySetError(Exception):
    """The signing key set could not be read or is not one (the message names no secret)."""


# The key set.


class _PublicKeyEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key_identifier: str = Field(min_length=1, max_length=MAX_KEY_ID_CHARS)
    key: str = Field(min_length=1, max_length=10_000)
    is_current: bool = False


class _KeySetDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    public_keys: list[_PublicKeyEntry]


def parse_key_set(raw: bytes) -> dict[str, ec.EllipticCurvePublicKey]:
    """Key identifier -> P-256 public key. Entries that are not P-256 EC keys are skipped (logged);
    a document with none usable is a KeySetError."""
    try:
        document = _KeySetDocument.model_validate_json(raw)
    except ValidationError as exc:
        raise KeySetError(f"not a key set in GitHub's meta format ({exc.error_count()} errors)") from None
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in document.public_keys:
        try:
            key = load_pem_public_key(entry.key.encode())
        except (ValueError, UnsupportedAlgorithm):
            log.warning("secret scanning key %s is not a PEM public key: skipped", entry.key_identifier)
            continue
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            log.warning("secret scanning key %s is not an ECDSA P-256 key: skipped", entry.key_identifier)
            continue
        keys[entry.key_identifier] = key
    if not keys:
        raise KeySetError("the key set holds no ECDSA P-256 public key")
    return keys


def decode_signature(value: str | None) -> bytes | None:
    """The DER signature from the header's base64, or None when it is missing or not base64."""
    if not value or len(value) > MAX_SIGNATURE_CHARS:
        return None
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def signature_valid(key: ec.EllipticCurvePublicKey, signature: bytes, body: bytes) -> bool:
    """ECDSA P-256 / SHA-256 over the raw body, as GitHub signs it (a malformed DER is just invalid)."""
    try:
        key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# Where the key set comes from.


@dataclass(frozen=True, slots=True)
class KeySource:
    """A file path or an https URL (http only to a loopback host of a local deployment)."""

    location: str
    is_url: bool


def key_source(value: str, deployment: str) -> KeySource:
    """Check `CNX_SECRET_SCANNING_KEYS` once, at start. Raises ValueError naming what is wrong."""
    value = value.strip()
    scheme = urlsplit(value).scheme.lower()
    if scheme == "https":
        return KeySource(value, True)
    if scheme == "http":
        host = urlsplit(value).hostname or ""
        if deployment == "local" and _is_loopback(host):
            return KeySource(value, True)
        raise ValueError(
            "CNX_SECRET_SCANNING_KEYS must be an https URL (http is accepted only for a loopback host "
            "with CNX_DEPLOYMENT=local): the keys decide which reports may revoke keys"
        )
    if scheme and len(scheme) > 1:  # "c:" would be a Windows drive, not a scheme
        raise ValueError(f"CNX_SECRET_SCANNING_KEYS: unsupported scheme {scheme!r}; use a file path or https")
    return KeySource(value, False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Fetched:
    """One read of the source: the document (None: unchanged since `etag`) and its ETag."""

    body: bytes | None
    etag: str | None = None


Fetcher = Callable[[KeySource, str | None], Awaitable[Fetched]]


def make_fetcher(verify: ssl.SSLContext | bool = True) -> Fetcher:
    """Read a file, or GET a URL: no redirects (a redirect could lead anywhere), a time limit, a size
    cap, and `If-None-Match` so an unchanged set costs GitHub's rate limit nothing."""

    async def fetch(source: KeySource, etag: str | None) -> Fetched:
        if not source.is_url:
            return Fetched(await asyncio.to_thread(_read_capped, Path(source.location)))
        headers = {"Accept": "application/json", "User-Agent": "CloudNexus-Keys-Secret-Scanning/1"}
        if etag:
            headers["If-None-Match"] = etag
        try:
            async with httpx.AsyncClient(
                timeout=FETCH_TIMEOUT_S, follow_redirects=False, verify=verify, trust_env=False
            ) as client:
                async with client.stream("GET", source.location, headers=headers) as response:
                    if response.status_code == 304:
                        return Fetched(None, etag)
                    if response.status_code != 200:
                        raise KeySetError(f"the key set URL answered {response.status_code}")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > MAX_KEY_SET_BYTES:
                            raise KeySetError(f"the key set is over {MAX_KEY_SET_BYTES} bytes")
                        chunks.append(chunk)
                    return Fetched(b"".join(chunks), response.headers.get("etag"))
        except httpx.HTTPError as exc:
            raise KeySetError(f"the key set URL could not be read ({type(exc).__name__})") from None

    return fetch


def _read_capped(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_SET_BYTES + 1)
    except OSError as exc:
        raise KeySetError(f"the key set file could not be read ({exc.strerror})") from None
    if len(data) > MAX_KEY_SET_BYTES:
        raise KeySetError(f"the key set file is over {MAX_KEY_SET_BYTES} bytes")
    return data


class GitHubKeySet:
    """GitHub's signing keys, cached. `key(identifier)` fetches again when the identifier is unknown or
    the cache is older than `max_age`, never twice within `min_refresh` (unknown identifiers are free
    to send). A failed fetch keeps the keys already held."""

    def __init__(
        self,
        source: KeySource,
        *,
        fetch: Fetcher | None = None,
        min_refresh: float = 60.0,
        max_age: float = 3600.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._fetch = fetch or make_fetcher()
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._now = monotonic
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._etag: str | None = None
        self._loaded_at: float | None = None
        self._tried_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        """The key for `identifier`, or None when the set (refreshed if allowed) does not hold it.
        Raises KeySetError only when no key set could ever be read."""
        known = self._keys.get(identifier)
        if known is not None and not self._stale():
            return known
        async with self._lock:
            # Another request may have refreshed while this one waited.
            if self._may_fetch() and (identifier not in self._keys or self._stale()):
                await self._refresh()
        if self._loaded_at is None:
            raise KeySetError("no secret scanning key set could be read yet")
        return self._keys.get(identifier)

    def _stale(self) -> bool:
        return self._loaded_at is not None and self._now() - self._loaded_at >= self._max_age

    def _may_fetch(self) -> bool:
        return self._tried_at is None or self._now() - self._tried_at >= self._min_refresh

    async def _refresh(self) -> None:
        self._tried_at = self._now()
        self.fetches += 1
        try:
            fetched = await self._fetch(self.source, self._etag if self._keys else None)
            if fetched.body is not None:
                self._keys = parse_key_set(fetched.body)
                self._etag = fetched.etag
            self._loaded_at = self._now()
            log.info("secret scanning key set loaded: %d keys", len(self._keys))
        except KeySetError as exc:
            log.warning("secret scanning key set not refreshed: %s", exc)


# The report.


class GitHubMatch(BaseModel):
    """One match in GitHub's report. Generous bounds: a field GitHub fills oddly must not refuse the
    whole batch (the token is checked against our format before anything is looked up)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    token: str = Field(max_length=4096)
    type: str = Field(default="", max_length=200)
    url: str | None = Field(default=None, max_length=4096)
    source: str | None = Field(default=None, max_length=200)


_REPORT: TypeAdapter[list[GitHubMatch]] = TypeAdapter(
    Annotated[list[GitHubMatch], Field(max_length=MAX_MATCHES)]
)


def parse_report(body: bytes) -> list[GitHubMatch]:
    """The matches of a verified body. Raises InvalidInput that never echoes the input (it holds tokens)."""
    try:
        return _REPORT.validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        if first.get("type") == "too_long" and where == "body":
            message = f"a report holds at most {MAX_MATCHES} matches"
        else:
            message = f"not a secret scanning report: {where}: {first.get('type')}"
        raise InvalidInput(message, field="body") from None


Label = Literal["true_positive", "false_positive"]


class TokenLabel(BaseModel):
    """GitHub's feedback format: whether a reported token is one of ours (`token_raw` is the token GitHub
    sent, answered only to GitHub's signed request)."""

    model_config = ConfigDict(frozen=True)

    token_raw: str
    token_type: str
    label: Label


def leak_source(match: GitHubMatch) -> str:
    """How a revocation names the reporter: `GitHub secret scanning (commit)`."""
    where = " ".join((match.source or "").split())[:60]
    return f"GitHub secret scanning ({where})" if where else "GitHub secret scanning"
