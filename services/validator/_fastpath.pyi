"""Types of the compiled module services/validator/_fastpath.c (see its header and domain.py)."""

from typing import Any, final

@final
class Hmac:
    """HMAC-SHA256 under one pepper, its pads hashed once; the pepper is not kept nor shown."""

    def __init__(self, pepper: bytes) -> None: ...
    def digest(self, key: str, /) -> bytes:
        """HMAC-SHA256(pepper, key.encode()), raw."""

def find_row(key: object, hmacs: tuple[Hmac, ...], rows: dict[bytes, Any], /) -> Any:
    """-1 when `key` is not a well-formed token; else `rows[digest]` for the first Hmac whose digest of
    `key` is in `rows` (the projection's rows are ints), or None."""
