import pytest

from shared import scopes


def test_actions_are_ordered_read_write_admin() -> None:
    granted = scopes.grants(["storage:admin"])
    assert scopes.satisfies(granted, "storage:read")
    assert scopes.satisfies(granted, "storage:write")
    assert scopes.satisfies(granted, "storage:admin")
    assert not scopes.satisfies(granted, "compute:read")
    assert not scopes.satisfies(scopes.grants(["compute:read"]), "compute:write")


@pytest.mark.parametrize(
    "bad", ["storage", "storage:delete", "files:read", ":read", "compute:", "COMPUTE:READ"]
)
def test_unknown_scopes_are_named(bad: str) -> None:
    with pytest.raises(scopes.UnknownScope) as info:
        scopes.parse(bad)
    assert repr(bad) in str(info.value)


def test_normalize_keeps_the_highest_action_once() -> None:
    assert scopes.normalize(["compute:read", "compute:write", "storage:read", "compute:read"]) == [
        "compute:write",
        "storage:read",
    ]


def test_covers_lists_what_would_be_an_escalation() -> None:
    assert scopes.covers(["compute:write", "admin:write"], ["compute:read", "storage:read"]) == [
        "storage:read"
    ]
    assert scopes.covers(scopes.FULL_ACCESS, scopes.ALL_SCOPES) == []
