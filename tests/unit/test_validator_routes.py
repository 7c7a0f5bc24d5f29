"""The forward-auth route table: patterns, methods, order, refusal of bad entries, and of paths an
upstream could read as another path (dot segments, encoded slashes, case, ...)."""

from __future__ import annotations

import pytest

from services.validator.routes import REFUSED, RouteError, RouteTable, canonical_path

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


def needs(table: RouteTable, method: str, uri: str) -> tuple[str | None, str | None] | None:
    """(scope, environment) of the matching route; None when none matches; "refused" when refused."""
    route = table.lookup(method, uri)
    if route is REFUSED:
        return ("refused", "refused")
    return (route.scope, route.environment) if route else None


@pytest.mark.parametrize(
    ("method", "uri", "expected"),
    [
        ("GET", "/v2/instances", ("compute:read", None)),
        ("GET", "/v2/instances/", ("compute:read", None)),
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
        ("DELETE", "/v2/%69nstances/i-1", ("compute:admin", "prod")),  # decoded as an upstream does
    ],
)
def test_lookup(method: str, uri: str, expected: tuple[str | None, str | None]) -> None:
    assert needs(TABLE, method, uri) == expected


# Each of these reaches DELETE /v2/instances/i-1 (or another path) on some upstream; none may fall
# through to the catch-all's weaker or different requirement: refused, whatever the table holds.
AMBIGUOUS = [
    "/v2/instances/../instances/i-1",
    "/v2/x/../instances/i-1",
    "/v2/./instances/i-1",
    "//v2/instances/i-1",
    "/v2//instances/i-1",
    "/v2/instances/i-1//",
    "/v2/%2e%2e/v2/instances/i-1",
    "/v2/%2E/instances/i-1",
    "/v2/instances%2Fi-1",
    "/v2/instances%2fi-1",
    "/v2/instances%5Ci-1",
    "/v2/instances\\i-1",
    "/v2/instances%252Fi-1",  # decoded twice by some stacks
    "/v2/instances./i-1",
    "/v2/instances/i-1.",
    "/v2/instances;x=1/i-1",
    "/v2/instances/i-1%00",
    "/v2/instances/i-1%0A",
    "/v2/instances/i-1%20",
    "/v2/instances/%zz",
    "/v2/instances/%ff",  # not UTF-8
    "/v2/instances/i-1#x",
    "v2/instances/i-1",
    "",
]


@pytest.mark.parametrize("uri", AMBIGUOUS)
def test_ambiguous_paths_are_refused_not_matched(uri: str) -> None:
    assert canonical_path(uri) is None
    assert TABLE.lookup("DELETE", uri) is REFUSED
    assert RouteTable(["* /**=compute:read"]).lookup("DELETE", uri) is REFUSED


@pytest.mark.parametrize("uri", ["/V2/instances/i-1", "/v2/INSTANCES/i-1", "/v2/\u0131nstances/i-1"])
def test_a_path_that_matches_another_route_when_case_is_ignored_is_refused(uri: str) -> None:
    assert TABLE.lookup("DELETE", uri) is REFUSED
    # With no entry to confuse it with, the case does not matter: no route (or the catch-all).
    assert RouteTable(["GET /other=compute:read"]).lookup("DELETE", uri) is None


@pytest.mark.parametrize("method", ["delete", "Delete", ""])
def test_methods_are_upper_case_or_refused(method: str) -> None:
    assert TABLE.lookup(method, "/v2/instances/i-1") is REFUSED


def test_clean_paths_are_kept() -> None:
    assert canonical_path("/") == "/"
    assert canonical_path("/v2/instances/i-1?x=../..") == "/v2/instances/i-1"
    assert canonical_path("/v2/files/a.b/c") == "/v2/files/a.b/c"
    assert canonical_path("/v2/caf%C3%A9") == "/v2/caf\u00e9"


def test_no_match_and_empty_table() -> None:
    table = RouteTable(["GET /v2/instances=compute:read"])
    assert table.lookup("GET", "/v2/other") is None
    assert table.lookup("GET", "/v2/instances.json") is None, "literal segments are not prefixes"
    assert table.lookup("PUT", "/v2/instances") is None
    assert not RouteTable([]) and not RouteTable(None)


def test_first_match_wins() -> None:
    table = RouteTable(["GET /v2/**=compute:read", "GET /v2/instances=compute:admin"])
    assert needs(table, "GET", "/v2/instances") == ("compute:read", None)


def test_regex_characters_are_literal() -> None:
    table = RouteTable(["GET /v2/a.b=compute:read"])
    assert needs(table, "GET", "/v2/a.b") == ("compute:read", None)
    assert table.lookup("GET", "/v2/axb") is None


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
