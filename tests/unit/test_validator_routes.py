"""The forward-auth route table: patterns, methods, order, and refusal of bad entries."""

from __future__ import annotations

import pytest

from services.validator.routes import RouteError, RouteTable

TABLE = RouteTable(
    [
        "GET /v2/instances=compute:read",
        "POST /v2/instances=compute:write",
        "GET|HEAD /v2/instances/{id}=compute:read",
        "DELETE /v2/instances/*=compute:admin@prod",
        "* /v2/storage/**=storage:read",
        "GET /public/**=-",
        "* /**=admin:admin",
    ]
)


@pytest.mark.parametrize(
    ("method", "uri", "expected"),
    [
        ("GET", "/v2/instances", ("compute:read", None)),
        ("get", "/v2/instances/", ("compute:read", None)),
        ("GET", "/v2/instances?limit=5&api_key=x", ("compute:read", None)),
        ("POST", "/v2/instances", ("compute:write", None)),
        ("HEAD", "/v2/instances/i-0a1b", ("compute:read", None)),
        ("GET", "/v2/instances/i-0a1b/disks", ("admin:admin", None)),
        ("DELETE", "/v2/instances/i-0a1b", ("compute:admin", "prod")),
        ("PUT", "/v2/storage", ("storage:read", None)),
        ("PUT", "/v2/storage/a/b/c", ("storage:read", None)),
        ("GET", "/v2/storagex", ("admin:admin", None)),
        ("GET", "/public/docs/index.html", (None, None)),
        ("PATCH", "/v2/instances", ("admin:admin", None)),
    ],
)
def test_lookup(method: str, uri: str, expected: tuple[str | None, str | None]) -> None:
    assert TABLE.lookup(method, uri) == expected


def test_no_match_and_empty_table() -> None:
    table = RouteTable(["GET /v2/instances=compute:read"])
    assert table.lookup("GET", "/v2/other") == (None, None)
    assert table.lookup("GET", "/v2/instances.json") == (None, None), "literal segments are not prefixes"
    assert not RouteTable([]) and not RouteTable(None)


def test_first_match_wins() -> None:
    table = RouteTable(["GET /v2/**=compute:read", "GET /v2/instances=compute:admin"])
    assert table.lookup("GET", "/v2/instances") == ("compute:read", None)


def test_regex_characters_are_literal() -> None:
    table = RouteTable(["GET /v2/a.b=compute:read"])
    assert table.lookup("GET", "/v2/a.b") == ("compute:read", None)
    assert table.lookup("GET", "/v2/axb") == (None, None)


@pytest.mark.parametrize(
    "entry",
    [
        "GET /v2/instances",
        "GET=compute:read",
        "GET v2/instances=compute:read",
        "GET /v2/instances=compute:fly",
        "GET /v2/**/x=compute:read",
        "GET /v2=compute:read@qa",
    ],
)
def test_bad_entries_are_refused_naming_them(entry: str) -> None:
    with pytest.raises(RouteError, match=r"route|\*\*"):
        RouteTable([entry])
