"""The in-memory stores the use-case tests run on behave as the real ones: the same contract tests that
tests/integration runs on SQLite and PostgreSQL (test_lifecycle_store, test_notifier_store), here on the
fakes. And the unit tier stays without a database: no module of it reaches a store or an engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from services.notifier.ports import NotifierStore
from services.rotator.ports import RotatorStore
from tests.support.fake_stores import FakeNotifierStore, FakeRotatorStore
from tests.support.store_contracts import NotifierStoreContract, RotatorStoreContract

UNIT = Path(__file__).parent
TESTS = UNIT.parent
# What opens a database: the stores, their tables, the engines and the drivers. (sqlalchemy.exc's error
# classes are plain exceptions; test_http_store_errors raises them.)
FORBIDDEN = ("sqlmodel", "sqlalchemy.ext", "sqlalchemy.engine", "aiosqlite", "asyncpg", "shared.db")
# (A service's `app` builds its store's engine but opens nothing until its lifespan runs:
# test_k8s_tooling reads /metrics from apps never started.)
FORBIDDEN_IN_SERVICES = ("store", "tables", "migrations")


class TestFakeRotatorStore(RotatorStoreContract):
    @pytest.fixture
    def store(self) -> FakeRotatorStore:
        return FakeRotatorStore()


class TestFakeNotifierStore(NotifierStoreContract):
    @pytest.fixture
    def store(self) -> FakeNotifierStore:
        return FakeNotifierStore()


def test_the_fakes_answer_the_protocols() -> None:
    # Checked statically too (mypy): assigning a fake to the Protocol type.
    rotator: RotatorStore = FakeRotatorStore()
    notifier: NotifierStore = FakeNotifierStore()
    assert rotator is not None and notifier is not None


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def reached(path: Path, seen: set[Path]) -> set[str]:
    """The modules `path` imports, and those of the test-support modules it imports, transitively."""
    seen.add(path)
    names = imported_modules(path)
    for name in list(names):
        if name.startswith("tests."):
            module = TESTS.parent / (name.replace(".", "/") + ".py")
            if module.is_file() and module not in seen:
                names |= reached(module, seen)
    return names


def opens_a_database(name: str) -> bool:
    parts = name.split(".")
    if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
        return True
    return parts[0] == "services" and len(parts) >= 3 and parts[2] in FORBIDDEN_IN_SERVICES


@pytest.mark.parametrize("module", sorted(p.name for p in UNIT.glob("test_*.py")))
def test_no_unit_module_reaches_a_store_or_an_engine(module: str) -> None:
    found = sorted(name for name in reached(UNIT / module, set()) if opens_a_database(name))
    assert found == [], (
        f"{module} imports {found}: the unit tier runs on fakes (tests/support/fake_stores.py)"
    )


def test_the_check_sees_a_store_import() -> None:
    assert opens_a_database("services.rotator.store.RotatorStore")
    assert opens_a_database("services.issuer.tables")
    assert opens_a_database("sqlalchemy.ext.asyncio")
    assert not opens_a_database("services.rotator.ports")
    assert not opens_a_database("sqlalchemy.exc")
