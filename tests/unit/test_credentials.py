"""presented_key(): the one credential a request presents, from its raw headers and query strings."""

from __future__ import annotations

import pytest

from shared.credentials import AmbiguousCredentials, presented_key

KEY = "cnx_prod_" + "a" * 36
OTHER = "cnx_prod_" + "b" * 36


def auth(value: str) -> tuple[bytes, bytes]:
    return (b"authorization", value.encode())


def test_one_credential_is_the_key() -> None:
    assert presented_key([auth(f"Bearer {KEY}")]) == KEY
    assert presented_key([auth(f"bearer   {KEY} ")]) == KEY
    assert presented_key([], f"api_key={KEY}".encode()) == KEY
    assert presented_key([(b"host", b"x")], b"") is None
    # Another scheme is passed on as it is, for the validator to call it malformed.
    assert presented_key([auth("Basic dXNlcjpwYXNz")]) == "Basic dXNlcjpwYXNz"


def test_the_same_key_in_header_and_query_is_one_credential() -> None:
    assert presented_key([auth(f"Bearer {KEY}")], f"api_key={KEY}&x=1".encode()) == KEY
    assert presented_key([], f"api_key={KEY}&api_key={KEY}") == KEY
    # An empty api_key is no credential.
    assert presented_key([auth(f"Bearer {KEY}")], b"api_key=") == KEY


@pytest.mark.parametrize(
    ("headers", "queries"),
    [
        ([auth(f"Bearer {KEY}"), auth(f"Bearer {OTHER}")], ()),
        ([auth(f"Bearer {KEY}"), auth(f"Bearer {KEY}")], ()),
        ([auth(f"Bearer {KEY}, Bearer {OTHER}")], ()),  # two headers a proxy folded into one
        ([auth(f"Bearer {KEY}")], (f"api_key={OTHER}".encode(),)),
        ([], (f"api_key={KEY}&api_key={OTHER}".encode(),)),
        ([], (f"api_key={KEY}".encode(), f"scope=x&api_key={OTHER}")),  # forward-auth: own and original query
        ([auth(f"Bearer {KEY}")], (b"", f"api_key={OTHER}".encode())),
    ],
)
def test_two_credentials_are_refused_without_naming_them(
    headers: list[tuple[bytes, bytes]], queries: tuple[bytes | str, ...]
) -> None:
    with pytest.raises(AmbiguousCredentials) as refused:
        presented_key(headers, *queries)
    assert refused.value.status == 400
    assert refused.value.code == "ambiguous_credentials"
    assert KEY not in refused.value.message and OTHER not in refused.value.message


def test_header_only_callers_still_see_a_disagreeing_query() -> None:
    assert presented_key([], f"api_key={KEY}", query_allowed=False) is None
    assert presented_key([auth(f"Bearer {KEY}")], f"api_key={KEY}", query_allowed=False) == KEY
    with pytest.raises(AmbiguousCredentials):
        presented_key([auth(f"Bearer {KEY}")], f"api_key={OTHER}", query_allowed=False)
