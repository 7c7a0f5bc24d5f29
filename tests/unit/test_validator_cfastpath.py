"""The compiled first part of `decide` (services/validator/_fastpath.c) gives the answers of the Python
code it replaces and of shared.tokens, for well-formed tokens and every kind of near miss; it never
shows a pepper; and CI runs it, not the fallback."""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.validator import domain
from services.validator.domain import decide
from services.validator.keyring import Keyring, digest_bytes, keyring
from services.validator.projection import Projection
from services.validator.token_shape import well_formed
from shared import tokens
from shared.validation import Code
from tests.support.factories import key_view

fastpath: Any = pytest.importorskip("services.validator._fastpath") if domain.COMPILED else None

PEPPERS = (b"p", b"unit-pepper", b"x" * 63, b"y" * 64, b"z" * 65, bytes(range(256)) * 2)
NOW = 1_800_000_000.0
NOW_DT = datetime.fromtimestamp(NOW, UTC)


def test_ci_runs_the_compiled_path() -> None:
    if os.environ.get("CI") == "true":
        assert domain.COMPILED, "CI must build services/validator/_fastpath.c (gcc, libssl-dev, python3-dev)"


needs_c = pytest.mark.skipif(not domain.COMPILED, reason="the extension was not built")


def reference_well_formed(key: object) -> bool:
    """shared.tokens.is_well_formed, which raises for what is not a str (the validator answers those
    MALFORMED)."""
    return isinstance(key, str) and tokens.is_well_formed(key)


def candidates(rng: random.Random, count: int) -> Iterator[object]:
    """Valid tokens and, for each, a few of the ways one can be almost right."""
    for n in range(count):
        token = tokens.generate(tokens.ENVIRONMENTS[n % 3])
        yield token
        i = rng.randrange(len(token))
        yield token[:i] + rng.choice(tokens.ALPHABET + "_-é\u0660\0 \n") + token[i + 1 :]
        yield token[:i] + token[i + 1 :]
        yield token[:i] + rng.choice(tokens.ALPHABET) + token[i:]
        yield token[:-1]
        yield token + rng.choice(tokens.ALPHABET)
        yield token.swapcase()
        yield token[:4] + token[4:].lower()
        yield token[:4] + token[4:].upper()
        yield token + "\n"
        yield " " + token
        yield token.encode()


def edge_cases() -> list[object]:
    valid = {env: tokens.generate(env) for env in tokens.ENVIRONMENTS}
    prod, stg = valid["prod"], valid["stg"]
    body = stg[len("cnx_stg_") :]
    head = "cnx_prod_" + body[:-6]
    cases: list[object] = [
        *valid.values(),
        "",
        "cnx_",
        "cnx_prod_",
        "cnx_prod_" + body,  # a stg body under another environment: the checksum covers the prefix
        "cnx_dev_" + body,
        "cnx_qa_" + "a" * 36,
        "cnx_prd_" + "a" * 36,
        "CNX_prod_" + prod[9:],
        "cnx-prod-" + prod[9:],
        "cnx_prod_" + "a" * 35,
        "cnx_prod_" + "a" * 37,
        "cnx_stg_" + "a" * 37,  # 45 characters, the length of a prod token
        "cnx_prod" + "a" * 37,  # 45 characters without the second underscore
        head + tokens.checksum(head),
        head + "\u0660" * 6,  # Arabic-Indic digits: \d would take them, base62 must not
        head + "\uff5a" * 6,  # full-width letters
        prod[:-1] + "é",
        prod[:20] + "\0" + prod[21:],
        prod[:20] + "\udcff" + prod[21:],  # a lone surrogate: not even encodable
        prod + "\0",
        prod * 100,
        "x" * 10_000,
        "é" * 45,
        "é" * 44,
        None,
        0,
        45,
        1.5,
        prod.encode(),
        bytearray(prod.encode()),
        memoryview(prod.encode()),
        [prod],
        (prod,),
        {prod: 1},
        object(),
    ]

    class Sub(str):
        pass

    cases.append(Sub(prod))
    cases.append(Sub(prod[:-1] + "0"))
    return cases


@needs_c
def test_well_formed_is_the_reference_for_every_input() -> None:
    rng = random.Random(11)
    seen = 0
    for key in [*candidates(rng, 3000), *edge_cases()]:
        expected = reference_well_formed(key)
        assert (fastpath.find_row(key, (), {}) != -1) == expected, repr(key)
        if isinstance(key, str):
            assert well_formed(key) == expected, key
        seen += expected
    assert seen > 3000  # the valid tokens were among them


@needs_c
@pytest.mark.parametrize("pepper", PEPPERS, ids=lambda p: f"{len(p)}-byte")
def test_digest_is_the_reference_for_short_block_and_long_peppers(pepper: bytes) -> None:
    hmac = fastpath.Hmac(pepper)
    texts = [tokens.generate(env) for env in tokens.ENVIRONMENTS] + ["", "é", "x" * 1000, "\0", "\u0660"]
    for text in texts:
        assert hmac.digest(text).hex() == tokens.digest(pepper, text)
        assert hmac.digest(text) == digest_bytes(pepper, text)
    assert fastpath.Hmac(bytearray(pepper)).digest("k") == hmac.digest("k")


@needs_c
def test_find_row_with_one_and_with_two_peppers() -> None:
    old, new = b"old-pepper", b"new-pepper" * 10
    known = [tokens.generate(tokens.ENVIRONMENTS[n % 3]) for n in range(500)]
    rows = {digest_bytes(old if n % 2 else new, token): n for n, token in enumerate(known)}
    unknown = [tokens.generate("prod") for _ in range(100)]
    both = (fastpath.Hmac(new), fastpath.Hmac(old))
    only_new = both[:1]
    for n, token in enumerate(known):
        assert fastpath.find_row(token, both, rows) == n  # under the second pepper for odd n
        assert fastpath.find_row(token, only_new, rows) == (None if n % 2 else n)
        assert fastpath.find_row(token, (), rows) is None
        assert fastpath.find_row(token[:-1] + "!", both, rows) == -1
    for token in unknown:
        assert fastpath.find_row(token, both, rows) is None
    # The row is whatever the dict holds, returned as the same object.
    marker = object()
    assert fastpath.find_row(known[0], both, {digest_bytes(new, known[0]): marker}) is marker


@needs_c
def test_find_row_refuses_wrong_arguments_without_echoing_them() -> None:
    token = tokens.generate("dev")
    hmac = fastpath.Hmac(b"p")
    with pytest.raises(TypeError):
        fastpath.find_row(token, [hmac], {})
    with pytest.raises(TypeError):
        fastpath.find_row(token, (hmac,), [])
    with pytest.raises(TypeError, match="hmacs\\[1\\]"):
        fastpath.find_row(token, (hmac, b"p"), {})
    with pytest.raises(TypeError):
        fastpath.find_row(token, (hmac,))  # type: ignore[call-arg]

    class Boom(bytes):
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("compared")

        __hash__ = bytes.__hash__

    rows = {Boom(hmac.digest(token)): 1}  # same hash as the digest, so the lookup compares
    with pytest.raises(RuntimeError, match="compared"):
        fastpath.find_row(token, (hmac,), rows)


@needs_c
def test_no_pepper_in_reprs_errors_or_pickles() -> None:
    pepper = b"s3cret-pepper-VALUE"
    hmac = fastpath.Hmac(pepper)
    ring = Keyring([pepper])
    for shown in (repr(hmac), str(hmac), repr(ring), str(ring), repr([hmac, ring])):
        assert "s3cret" not in shown and "VALUE" not in shown, shown
    for call in (
        lambda: pickle.dumps(hmac),
        lambda: hmac.digest(pepper),
        lambda: fastpath.Hmac(pepper.decode()),
        lambda: fastpath.Hmac(pepper, pepper),
        lambda: fastpath.Hmac(pepper=[pepper]),
        lambda: fastpath.find_row(pepper.decode(), (hmac, pepper), {}),
    ):
        with pytest.raises(TypeError) as raised:
            call()
        assert "s3cret" not in str(raised.value), raised.value
    # A keyring pickles as its peppers (the compiled states are rebuilt, never written).
    assert pickle.loads(pickle.dumps(ring)).hmacs[0].digest("k") == hmac.digest("k")


def test_keyring_is_built_once_per_set_of_peppers() -> None:
    ring = keyring([b"a", b"b"])
    assert ring == (b"a", b"b") and isinstance(ring, Keyring)
    assert keyring((b"a", b"b")) is ring
    assert len(ring.pads) == 2 and len(ring.hmacs) == (2 if domain.COMPILED else 0)


def projection_of(pepper: bytes, tokens_: list[str]) -> Projection:
    projection = Projection()
    for n, token in enumerate(tokens_):
        projection.apply(
            key_view(
                NOW_DT - timedelta(days=1),
                key_id=f"k{n}",
                account_id=f"a{n}",
                prefix=tokens.display_prefix(token),
                digest=tokens.digest(pepper, token),
                environment=tokens.parse(token).environment,
            )
        )
    return projection


@pytest.fixture(params=["compiled", "python"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "compiled" and not domain.COMPILED:
        pytest.skip("the extension was not built")
    monkeypatch.setattr(domain, "COMPILED", request.param == "compiled")
    return str(request.param)


def test_decide_answers_alike_on_both_paths(path: str) -> None:
    """The same codes from either path, with a keyring or a plain list of peppers, the key's pepper
    first or second: the Python path's answers are the reference."""
    rng = random.Random(5)
    old, new = b"old", b"new" * 30
    known = [tokens.generate(tokens.ENVIRONMENTS[n % 3]) for n in range(60)]
    projection = projection_of(old, known)
    keys: list[object] = [*known, *candidates(rng, 60), *edge_cases()]
    answers = {}
    for peppers in ([old], Keyring([new, old]), (new,), []):
        for key in keys:
            reply, entry = decide(projection, peppers, key, None, None, None, NOW)  # type: ignore[arg-type]
            if not key:
                expected = Code.MISSING
            elif not reference_well_formed(key):
                expected = Code.MALFORMED
            elif old in peppers and key in known:
                expected = Code.VALID
            else:
                expected = Code.NOT_FOUND
            assert reply["code"] == expected, (path, peppers, key)
            assert (entry is not None) == (expected == Code.VALID)
            if entry is not None:
                assert reply["key_id"] == entry.key_id == f"k{known.index(key)}"  # type: ignore[arg-type]
            answers[repr(key), len(peppers)] = reply["code"]
    assert Code.VALID in answers.values() and Code.NOT_FOUND in answers.values()
