"""Token format, checksum and stored digest: pure functions, no I/O.

A token is `cnx_<env>_<body>`; the body is 30 random base62 characters followed by 6 base62
characters of the CRC32 of everything before them (`cnx_<env>_<random>`), as GitHub tokens do. The
checksum lets a validator refuse a mistyped or forged token without a lookup and lets secret
scanners tell a real leak from noise. Only `HMAC-SHA256(pepper, token)` is ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass
from typing import Final

ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ENVIRONMENTS: Final = ("prod", "stg", "dev")
RANDOM_LEN: Final = 30
CHECKSUM_LEN: Final = 6
BODY_LEN: Final = RANDOM_LEN + CHECKSUM_LEN
PREFIX_BODY_CHARS: Final = 4
MAX_TOKEN_LEN: Final = len("cnx_prod_") + BODY_LEN

TOKEN_PATTERN: Final = re.compile(r"^cnx_(prod|stg|dev)_([0-9A-Za-z]{36})$")
# For secret scanners and log redaction: a token anywhere in a text.
TOKEN_SEARCH: Final = re.compile(r"cnx_(?:prod|stg|dev)_[0-9A-Za-z]{36}")


class MalformedToken(ValueError):
    """The text is not a well-formed token with a valid checksum. Never carries the text itself."""


@dataclass(frozen=True, slots=True)
class ParsedToken:
    environment: str
    token: str

    @property
    def prefix(self) -> str:
        return display_prefix(self.token)


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def checksum(head: str) -> str:
    """6 base62 characters of the CRC32 of `cnx_<env>_<random>`."""
    return _base62(zlib.crc32(head.encode()), CHECKSUM_LEN)


def generate(environment: str) -> str:
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {environment!r}; use one of {', '.join(ENVIRONMENTS)}")
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LEN))
    head = f"cnx_{environment}_{random_part}"
    return head + checksum(head)


def parse(token: str) -> ParsedToken:
    """Check shape and checksum; raise MalformedToken (without echoing the input) otherwise."""
    match = TOKEN_PATTERN.match(token)
    if match is None:
        raise MalformedToken("token is not of the form cnx_<env>_<36 base62 characters>")
    if not hmac.compare_digest(checksum(token[:-CHECKSUM_LEN]), token[-CHECKSUM_LEN:]):
        raise MalformedToken("token checksum does not match")
    return ParsedToken(environment=match.group(1), token=token)


def is_well_formed(token: str) -> bool:
    try:
        parse(token)
    except MalformedToken:
        return False
    return True


def display_prefix(token: str) -> str:
    """`cnx_prod_8xK9`: enough to recognise a key in a list, far too little to use it."""
    env_end = token.index("_", 4) + 1
    return token[: env_end + PREFIX_BODY_CHARS]


def digest(pepper: bytes, token: str) -> str:
    """The only stored form of a token: hex HMAC-SHA256 under the service pepper."""
    return hmac.new(pepper, token.encode(), hashlib.sha256).hexdigest()


def redact(text: str) -> str:
    """Replace any token in a text by its display prefix, for logs and error messages."""
    return TOKEN_SEARCH.sub(lambda m: display_prefix(m.group(0)) + "…[redacted]", text)
