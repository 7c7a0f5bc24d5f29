"""The retention rule of the validator's projection (pure, `now` an argument): a revoked or expired key
answers REVOKED/EXPIRED until `retention` after its end, then is out of memory and answers NOT_FOUND;
live keys never move; a view already past its end plus the retention is never taken in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.validator.domain import decide
from services.validator.projection import INF, Projection, ends_at, prunable, view_ends_at
from shared import tokens
from shared.events import KeyView
from shared.validation import Code
from tests.support.factories import token_view

PEPPER = b"unit-pepper"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
T = NOW.timestamp()
DAY = 86400.0
RETENTION = 7 * DAY


def make_view(token: str, revision: int = 1, **changes: object) -> KeyView:
    return token_view(token, PEPPER, NOW, revision, **changes)


def code(projection: Projection, token: str, at: float) -> str:
    reply, _ = decide(projection, [PEPPER], token, None, None, None, at)
    return str(reply["code"])


def test_a_keys_end_is_its_expiry_grace_end_or_revocation_whichever_comes_first() -> None:
    assert ends_at("active", INF, None, T) == INF  # no expiry: never ends
    assert ends_at("active", T + 5, None, T) == T + 5  # the rotator may never say so: expiry is the end
    assert ends_at("rotating", T + 30, T + 10, T) == T + 10
    assert ends_at("rotating", T + 5, T + 10, T) == T + 5
    assert ends_at("revoked", INF, None, T + 3) == T + 3
    assert ends_at("revoked", T + 1, None, T + 3) == T + 1  # expired first, revoked later
    assert ends_at("expired", T + 1, None, T + 3) == T + 1
    assert ends_at("expired", INF, None, T + 3) == T + 3
    assert ends_at("revoked", INF, None, INF) == INF  # no event time known: not pruned by it


def test_a_suspension_is_no_end() -> None:
    view = make_view(tokens.generate("prod"), suspended=True, expires_at=None)
    assert view_ends_at(view, T) == INF
    revoked = make_view(tokens.generate("prod"), suspended=True, status="revoked", expires_at=None)
    assert view_ends_at(revoked, T) == T


def test_prunable_exactly_retention_after_the_end() -> None:
    assert not prunable(T, T + RETENTION - 0.001, RETENTION)
    assert prunable(T, T + RETENTION, RETENTION)
    assert not prunable(INF, T + 1e12, RETENTION)


def test_revoked_answers_revoked_within_retention_and_not_found_after_prune() -> None:
    live, revoked = tokens.generate("prod"), tokens.generate("prod")
    projection = Projection()
    projection.apply(make_view(live, key_id="key_live", expires_at=None), T)
    projection.apply(make_view(revoked, key_id="key_gone", expires_at=None), T)
    assert projection.apply(
        make_view(revoked, 2, key_id="key_gone", status="revoked", expires_at=None), T + 10
    )

    assert projection.prune(T + 10 + RETENTION - 1, RETENTION) == 0
    assert code(projection, revoked, T + 10 + RETENTION - 1) == Code.REVOKED
    assert projection.prune(T + 10 + RETENTION, RETENTION) == 1
    assert code(projection, revoked, T + 10 + RETENTION) == Code.NOT_FOUND
    assert projection.entry("key_gone") is None
    assert code(projection, live, T + 10 + RETENTION) == Code.VALID
    assert len(projection) == 1 and projection.slots == 2


def test_a_key_past_its_expiry_is_pruned_without_any_expired_event() -> None:
    token = tokens.generate("prod")
    expires = NOW + timedelta(days=1)
    projection = Projection()
    projection.apply(make_view(token, expires_at=expires), T)
    assert projection.prune(expires.timestamp() + RETENTION - 1, RETENTION) == 0
    assert code(projection, token, expires.timestamp() + RETENTION - 1) == Code.EXPIRED
    assert projection.prune(expires.timestamp() + RETENTION, RETENTION) == 1
    assert code(projection, token, expires.timestamp() + RETENTION) == Code.NOT_FOUND


def test_a_rotated_key_goes_retention_after_its_grace() -> None:
    token = tokens.generate("prod")
    grace = T + DAY
    projection = Projection()
    projection.apply(
        make_view(token, status="rotating", grace_until=datetime.fromtimestamp(grace, UTC), expires_at=None),
        T,
    )
    assert projection.prune(grace + RETENTION - 1, RETENTION) == 0
    assert code(projection, token, grace + 1) == Code.REVOKED
    assert projection.prune(grace + RETENTION, RETENTION) == 1
    assert projection.grace == {}


def test_a_freed_slot_goes_to_the_next_key_and_live_rows_never_move() -> None:
    tokens_ = [tokens.generate("prod") for _ in range(4)]
    projection = Projection()
    for n, token in enumerate(tokens_):
        projection.apply(make_view(token, key_id=f"key_{n:024d}", expires_at=None), T)
    rows_before = dict(projection.rows)
    projection.apply(make_view(tokens_[1], 2, key_id=f"key_{1:024d}", status="revoked", expires_at=None), T)
    assert projection.prune(T + RETENTION, RETENTION) == 1
    for n in (0, 2, 3):
        digest = bytes.fromhex(make_view(tokens_[n]).digest)
        assert projection.rows[digest] == rows_before[digest]
    newcomer = tokens.generate("prod")
    projection.apply(make_view(newcomer, key_id="key_" + "n" * 24, expires_at=None), T)
    assert projection.slots == 4 and len(projection) == 4
    entry = projection.entry("key_" + "n" * 24)
    assert entry is not None and entry.status == "active" and entry.revision == 1
    assert code(projection, newcomer, T + RETENTION) == Code.VALID
    assert code(projection, tokens_[1], T + RETENTION) == Code.NOT_FOUND
    assert {projection.key_id_at(row) for row in projection.rows.values()} == {
        f"key_{0:024d}",
        f"key_{2:024d}",
        f"key_{3:024d}",
        "key_" + "n" * 24,
    }


def test_rows_with_usage_not_yet_reported_stay_until_the_next_prune() -> None:
    token = tokens.generate("prod")
    projection = Projection()
    projection.apply(make_view(token, status="revoked", expires_at=None), T)
    row = next(iter(projection.rows.values()))
    assert projection.prune(T + RETENTION, RETENTION, keep={row}) == 0
    assert projection.prune(T + RETENTION, RETENTION) == 1


def test_prune_in_slices_covers_every_row() -> None:
    projection = Projection()
    for n in range(10):
        projection.apply(
            make_view(tokens.generate("prod"), key_id=f"k{n}", status="revoked", expires_at=None), T
        )
    removed = sum(projection.prune(T + RETENTION, RETENTION, start, start + 3) for start in range(0, 10, 3))
    assert removed == 10 and len(projection) == 0


def test_a_view_already_past_retention_is_never_taken_in() -> None:
    """A replay from the stream's start: the creation, then a revocation long ago. The key lands dead
    and is out at once; a creation whose expiry is past by the retention is never in."""
    cutoff = T + 30 * DAY - RETENTION
    projection = Projection()
    token = tokens.generate("prod")
    assert projection.apply(make_view(token, expires_at=None), T, cutoff)
    assert projection.apply(make_view(token, 2, status="revoked", expires_at=None), T + DAY, cutoff)
    assert len(projection) == 0 and code(projection, token, T + 30 * DAY) == Code.NOT_FOUND
    # The same event again (a redelivery) brings nothing back.
    assert not projection.apply(make_view(token, 2, status="revoked", expires_at=None), T + DAY, cutoff)
    lapsed = tokens.generate("prod")
    assert not projection.apply(make_view(lapsed, expires_at=NOW + timedelta(days=2)), T, cutoff)
    assert len(projection) == 0
    # Within the retention it is taken in, and answers what it is.
    recent = tokens.generate("prod")
    assert projection.apply(make_view(recent, status="revoked", expires_at=None), T + 29 * DAY, cutoff)
    assert code(projection, recent, T + 30 * DAY) == Code.REVOKED


def test_hydration_skips_stored_views_past_retention() -> None:
    live, dead = tokens.generate("prod"), tokens.generate("prod")
    stored = [
        (make_view(live, key_id="key_live", expires_at=None).model_dump_json(), None),
        (make_view(dead, key_id="key_dead", status="revoked", expires_at=None).model_dump_json(), T),
    ]
    projection = Projection()
    assert projection.load_json(stored, cutoff=T) == 1
    assert code(projection, live, T) == Code.VALID and code(projection, dead, T) == Code.NOT_FOUND
    again = Projection()
    assert again.load_json(stored, cutoff=T - 1) == 2
    assert code(again, dead, T) == Code.REVOKED
    assert again.prune(T + RETENTION, RETENTION) == 1


def test_the_digest_dict_is_rebuilt_once_mostly_deleted() -> None:
    projection = Projection()
    for n in range(10):
        status = "revoked" if n < 6 else "active"
        projection.apply(
            make_view(tokens.generate("prod"), key_id=f"k{n}", status=status, expires_at=None), T
        )
    before = projection.rows
    assert projection.prune(T + RETENTION, RETENTION) == 6
    assert projection.compact_index()
    assert projection.rows is not before and projection.rows == before and len(projection.rows) == 4
    assert not projection.compact_index()
