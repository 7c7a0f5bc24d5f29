"""Scopes `<resource>:<action>` and the order read < write < admin: pure functions.

A granted `storage:admin` satisfies a required `storage:read`. `admin:*` governs the management API.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

RESOURCES: Final = ("compute", "storage", "network", "billing", "admin")
ACTIONS: Final = ("read", "write", "admin")
LEVEL: Final = {action: rank for rank, action in enumerate(ACTIONS, start=1)}
ALL_SCOPES: Final = tuple(f"{r}:{a}" for r in RESOURCES for a in ACTIONS)
FULL_ACCESS: Final = tuple(f"{r}:admin" for r in RESOURCES)


class UnknownScope(ValueError):
    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__(
            f"unknown scope {scope!r}: use <resource>:<action> with resource in "
            f"{'|'.join(RESOURCES)} and action in {'|'.join(ACTIONS)}"
        )


def parse(scope: str) -> tuple[str, int]:
    """`storage:write` -> ("storage", 2)."""
    resource, sep, action = scope.partition(":")
    if not sep or resource not in RESOURCES or action not in LEVEL:
        raise UnknownScope(scope)
    return resource, LEVEL[action]


def normalize(scopes: Iterable[str]) -> list[str]:
    """Validate, de-duplicate and keep only the highest action per resource, in a stable order."""
    best: dict[str, int] = {}
    for scope in scopes:
        resource, level = parse(scope)
        best[resource] = max(best.get(resource, 0), level)
    return [f"{r}:{ACTIONS[best[r] - 1]}" for r in RESOURCES if r in best]


def grants(scopes: Iterable[str]) -> dict[str, int]:
    """The granted level per resource, the form the validator keeps in memory."""
    levels: dict[str, int] = {}
    for scope in scopes:
        resource, level = parse(scope)
        levels[resource] = max(levels.get(resource, 0), level)
    return levels


def satisfies(granted: dict[str, int], required: str) -> bool:
    resource, level = parse(required)
    return granted.get(resource, 0) >= level


def covers(granted: Iterable[str], requested: Iterable[str]) -> list[str]:
    """The requested scopes that `granted` does not cover (empty: no escalation)."""
    levels = grants(granted)
    return [scope for scope in requested if not satisfies(levels, scope)]
