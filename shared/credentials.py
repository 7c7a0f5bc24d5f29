"""Which key a request presents, decided once for every service from its raw headers and query.

A request may carry its key in `Authorization: Bearer <key>` or in an `api_key` query parameter. When it
carries more than one credential, proxies and services disagree on which one counts (nginx passes the
first Authorization header, a Python dict of the headers keeps the last): a proxy in front could check
one key while the service acts on another. So a request is refused (AmbiguousCredentials, 400) when it
has two Authorization headers (or one holding a comma-joined list, which is what a proxy makes of two),
or query keys that disagree with each other or with the header's. Pure: no framework, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

from shared.errors import DomainError

QUERY_PARAMETER = "api_key"
_QUERY_MARK = QUERY_PARAMETER.encode()


class AmbiguousCredentials(DomainError):
    """The request presents more than one credential, and they are not one and the same key."""

    status = 400
    code = "ambiguous_credentials"


def _header_key(value: bytes) -> str | None:
    text = value.decode("latin-1").strip()
    if "," in text:
        # Two Authorization headers folded into one by a proxy (RFC 9110 5.3); no key holds a comma.
        raise AmbiguousCredentials("the request carries more than one Authorization credential")
    scheme, _, rest = text.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip()
    # Another scheme, or a bare key: passed on as it is, for the validator to call it malformed.
    return text or None


def _query_keys(query: bytes | str) -> list[str]:
    raw = query if isinstance(query, bytes) else query.encode("latin-1")
    if _QUERY_MARK not in raw:  # the usual case: no parse at all
        return []
    text = raw.decode("latin-1")
    return [
        value for name, value in parse_qsl(text, keep_blank_values=True) if name == QUERY_PARAMETER and value
    ]


def presented_key(
    headers: Iterable[tuple[bytes, bytes]], *query_strings: bytes | str, query_allowed: bool = True
) -> str | None:
    """The key a request presents, or None when it presents none.

    `headers` are the raw ASGI header pairs (lower-case names, every repeat kept); `query_strings` are
    the query strings the key may come in (a forward-auth request has its own and the original
    request's). With `query_allowed=False` (the management API takes keys from the header only) a query
    key is never the answer, but one that disagrees with the header's still makes the request ambiguous.

    Raises AmbiguousCredentials: two Authorization headers, or query keys that disagree with each other
    or with the header's key.
    """
    header: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            if header is not None:
                raise AmbiguousCredentials("the request carries more than one Authorization header")
            header = value
    key = _header_key(header) if header is not None else None
    for query in query_strings:
        for candidate in _query_keys(query):
            if key is None:
                key = candidate
            elif candidate != key:
                where = "the Authorization header and the" if header is not None else "more than one"
                raise AmbiguousCredentials(
                    f"the request carries different keys in {where} api_key query parameter",
                    field=QUERY_PARAMETER,
                )
    if key is not None and header is None and not query_allowed:
        return None
    return key
