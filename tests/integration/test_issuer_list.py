"""The key list on SQLite and PostgreSQL, through the issuer's use case and store: every status filter
means the status a key has now (`domain.effective_status`), pages return every key once even while keys
are being created, each filter reads an index in `seq` order, and the list body is what the
`KeyList` response model would have written."""

from __future__ import annotations

import asyncio
import base64
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite

from services.issuer import api, domain
from services.issuer.domain import Key
from services.issuer.listing import STORED_STATUSES, page_query
from services.issuer.schemas import CreateKey, KeyList, Notify
from services.issuer.service import IssuerService, Principal, new_key_id
from services.issuer.store import IssuerStore
from services.issuer.tables import IssuerKey, key_row
from shared.crypto import FieldCipher

CIPHER = FieldCipher([base64.b64encode(b"k" * 32).decode()])
NOW = datetime(2026, 11, 30, 12, 0, 0, 250_000, tzinfo=UTC)
ROOT = Principal(account_id="acct", key_id="root", scopes=["admin:admin", "compute:admin"])
FILTERS = [None, "active", "rotating", "expired", "revoked"]
ENVIRONMENTS = [None, "prod", "stg", "dev"]


def service_for(issuer_store: IssuerStore, clock: Any = lambda: NOW) -> IssuerService:
    return IssuerService(issuer_store, peppers=[b"p" * 32], cipher=CIPHER, clock=clock)


def stored_key(account: str, n: int, **fields: Any) -> Key:
    values: dict[str, Any] = {
        "id": new_key_id(),
        "account_id": account,
        "digest": f"digest-{account}-{n}-{new_key_id()}",
        "prefix": "cnx_prod_abcd",
        "name": f"k{n}",
        "environment": "prod",
        "scopes": ["compute:read"],
        "plan": "professional",
        "rate_limit": {"requests_per_minute": 1000, "burst": 2000},
        "status": "active",
        "created_at": NOW - timedelta(days=1),
        "expires_at": NOW + timedelta(days=30),
    }
    return Key(**(values | fields))


async def insert(issuer_store: IssuerStore, keys: list[Key]) -> None:
    """Keys in any stored state, in this order (their `seq` ascending), without events."""
    async with issuer_store.engine.begin() as conn:
        for key in keys:
            await conn.execute(IssuerKey.__table__.insert(), key_row(key))  # type: ignore[attr-defined]


async def all_pages(service: IssuerService, limit: int, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        keys, cursor = await service.list_keys(ROOT, limit=limit, cursor=cursor, **filters)
        assert len(keys) <= limit
        ids.extend(k.id for k in keys)
        if cursor is None:
            return ids
    raise AssertionError("pagination did not end")


async def test_every_filter_lists_the_keys_whose_status_is_that_now(issuer_store: IssuerStore) -> None:
    times = [None, NOW - timedelta(seconds=1), NOW, NOW + timedelta(seconds=1)]
    keys = [
        stored_key("acct", n, status=status, environment=env, expires_at=expires, grace_until=grace)
        for n, (status, env, expires, grace) in enumerate(
            itertools.product(STORED_STATUSES, ["prod", "stg", "dev"], times, times)
        )
    ]
    keys.append(stored_key("other", 0))  # another account's key is never listed
    await insert(issuer_store, keys)
    newest_first = list(reversed(keys[:-1]))
    service = service_for(issuer_store)

    for status, environment in itertools.product(FILTERS, ENVIRONMENTS):
        expected = [
            k.id
            for k in newest_first
            if (
                status is None
                or domain.effective_status(k.status, k.expires_at, k.grace_until, NOW) == status
            )
            and (environment is None or k.environment == environment)
        ]
        for limit in (1, 7, 100):
            listed = await all_pages(service, limit, status=status, environment=environment)
            assert listed == expected, (status, environment, limit)


async def test_pages_hold_every_key_once_while_keys_are_created(issuer_store: IssuerStore) -> None:
    service = service_for(issuer_store, clock=lambda: datetime.now(UTC))
    body = CreateKey(name="k", environment="prod", scopes=["compute:read"])
    existing = {(await service.create_key(ROOT, body))[0].id for _ in range(40)}
    created: set[str] = set()

    async def create_more() -> None:
        for _ in range(40):
            created.add((await service.create_key(ROOT, body))[0].id)

    writer = asyncio.create_task(create_more())
    listed: list[str] = []
    cursor = None
    while True:
        keys, cursor = await service.list_keys(ROOT, status=None, environment=None, limit=3, cursor=cursor)
        listed.extend(k.id for k in keys)
        await asyncio.sleep(0)  # let the writer commit between pages
        if cursor is None:
            break
    await writer
    assert len(listed) == len(set(listed)), "a key appeared on two pages"
    assert existing <= set(listed), "a key that existed before the first page was skipped"
    assert set(listed) <= existing | created


async def test_each_filter_reads_an_index_in_seq_order(issuer_store: IssuerStore, backend: str) -> None:
    """No full scan and no sort of the account's keys for any filter (the lagging-expiry branch of
    `expired` aside: it reads the account's active keys until it has a page)."""
    dialect = sqlite.dialect() if backend == "sqlite" else postgresql.dialect()
    for status, environment in itertools.product(FILTERS, ENVIRONMENTS):
        query = page_query("acct", status=status, environment=environment, now=NOW, limit=21, before_seq=99)
        sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        async with issuer_store.engine.connect() as conn:
            if backend == "sqlite":
                plan = "\n".join(row[3] for row in await conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
                assert "SCAN issuer_keys" not in plan, (status, environment, plan)
            else:
                # A small test table is cheaper to scan; what matters is that an index can serve it.
                await conn.execute(text("SET enable_seqscan = off"))
                plan = "\n".join(row[0] for row in await conn.execute(text("EXPLAIN " + sql)))
                assert "Seq Scan" not in plan, (status, environment, plan)
        wanted = "ix_issuer_keys_account_seq"
        if environment is not None:
            wanted = "ix_issuer_keys_account_env_status_seq"
        elif status is not None:
            wanted = "ix_issuer_keys_account_status_seq"
        assert wanted in plan, (status, environment, plan)


async def test_the_list_body_is_what_the_response_model_writes(issuer_store: IssuerStore) -> None:
    service = service_for(issuer_store)
    notify = Notify.model_validate({"webhook_url": "https://hooks.example.com"})
    variants: list[dict[str, Any]] = [
        {},
        {"rate_limit": {"requests_per_minute": 50, "burst": None}, "plan": "enterprise"},
        {"notify_sealed": service._seal_notify(notify), "key_metadata": {"team": "ü-payments"}},
        {"status": "rotating", "grace_until": NOW + timedelta(hours=1), "last_used_at": NOW},
        {"status": "rotating", "grace_until": NOW - timedelta(microseconds=10), "ip_allowlist": ["::1/128"]},
        {"expires_at": None, "last_used_at": NOW.replace(microsecond=0), "auto_renew": True},
    ]
    await insert(issuer_store, [stored_key("acct", n, **fields) for n, fields in enumerate(variants)])
    listed, cursor = await service.list_keys(ROOT, status=None, environment=None, limit=4, cursor=None)
    assert cursor is not None
    full = [await issuer_store.get_key("acct", k.id) for k in listed]
    expected = KeyList.model_validate(
        {"data": [api.key_object(service, k) for k in full if k], "next_cursor": cursor}
    ).model_dump_json()
    assert api.key_list_body(service, listed, cursor) == expected.encode()
    with_notify = orjson.loads(expected)["data"][3]
    assert with_notify["notify"] == {"email": None, "webhook_url": str(notify.webhook_url)}
