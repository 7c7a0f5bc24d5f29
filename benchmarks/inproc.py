"""Figure 3: the decision function alone, in-process, on one core, with the key set loaded.

Measured three ways over the same request mix: `decide()` (parse, checksum, digest, lookup, expiry, IP,
environment, scope); `decide()` and the key's token bucket (the figure: the issue's "decision
function"); and `ValidatorService.validate()` (the same plus the address throttle, the reply's rate
limit state and usage counting: what a request costs the validator besides its transport). The
ceiling is the irreducible part of the same work: HMAC-SHA256 of the token and one dict lookup, the
HMAC done the fastest way Python has (the pepper's pads hashed once, two hash states copied per call,
as `decide`'s Python path does; `hmac.new` per call, the ceiling of earlier runs, is kept as
`ceiling_hmac_new`); with the compiled fast path (services/validator/_fastpath.c), the same work in C,
`find_row` as `decide` calls it (`ceiling_c`), is the ceiling the figure is set against.
As in a validator process (`ValidatorService(freeze_heap=True)`), the loaded key set is frozen out of
the garbage collector's full passes.
Rates are per second of the process's CPU time (one core's worth, robust to a noisy machine), with the
wall-clock rates alongside in results.json.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import os
import time
from typing import Any

from . import common


def _rate(fn: Any, items: list[Any], seconds: float, rates: dict[str, float], name: str) -> None:
    """Calls per second of `fn(item)` cycling through `items` for about `seconds`: per second of wall
    time (`<name>_wall_per_s`) and per second of this process's CPU time (`<name>_per_s`: what one core
    does, whatever else the machine runs; the process is single-threaded)."""
    done = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = start + seconds
    n = len(items)
    while True:
        for item in items[: min(n, 20_000)]:
            fn(item)
        done += min(n, 20_000)
        if time.perf_counter() >= deadline:
            break
        items = items[20_000:] + items[:20_000]
    rates[f"{name}_wall_per_s"] = round(done / (time.perf_counter() - start))
    rates[f"{name}_per_s"] = round(done / (time.process_time() - cpu_start))


def run(keys: int, seconds: float) -> dict[str, Any]:
    affinity = os.sched_getaffinity(0)
    if 1 in affinity:
        os.sched_setaffinity(0, {1})
    try:
        return _run(keys, seconds)
    finally:
        # Children of this process (the other figures' servers) must not inherit the one core.
        os.sched_setaffinity(0, affinity)


def _run(keys: int, seconds: float) -> dict[str, Any]:
    built = time.perf_counter()
    projection, known = common.build_projection(keys)
    build_s = time.perf_counter() - built
    items = common.requests(known, 200_000)
    gc.collect()
    gc.freeze()
    try:
        return _measure(projection, items, seconds, build_s)
    finally:
        gc.unfreeze()


def _measure(projection: Any, items: list[dict[str, Any]], seconds: float, build_s: float) -> dict[str, Any]:
    from services.validator.domain import decide
    from services.validator.keyring import COMPILED, hmac_pads, keyring
    from services.validator.ratelimit import KeyLimiter
    from services.validator.service import ValidatorService

    peppers = [common.PEPPER]
    now = time.time()

    def one_decide(item: dict[str, Any]) -> Any:
        return decide(projection, peppers, item["key"], item["scope"], item["ip"], None, now)

    limiter = KeyLimiter()

    def one_decide_bucket(item: dict[str, Any]) -> Any:
        # The "decision function": parse, checksum, digest, lookup, expiry, scope, IP, bucket.
        reply, entry = decide(projection, peppers, item["key"], item["scope"], item["ip"], None, now)
        if entry is not None and reply["valid"]:
            shape = entry.shape
            if shape is not None:
                limiter.admit(entry.key_id, shape, now)
        return reply

    service = ValidatorService(None, peppers=peppers)  # type: ignore[arg-type]  (no store is touched)
    service.projection = projection
    validate = service.validate

    def one_validate(item: dict[str, Any]) -> Any:
        return validate(item["key"], item["scope"], item["ip"])

    # The projection's own digest -> row dict (a million keys, as decide() reads; a small dict of the
    # known keys, as earlier runs had, would stay in the CPU's cache and flatter the ceiling).
    table = projection.rows

    inner_pad, outer_pad = hmac_pads(common.PEPPER)

    def one_ceiling(item: dict[str, Any]) -> Any:
        inner = inner_pad.copy()
        inner.update(item["key"].encode())
        outer = outer_pad.copy()
        outer.update(inner.digest())
        return table.get(outer.digest())

    def one_ceiling_hmac_new(item: dict[str, Any]) -> Any:
        return table.get(hmac.new(common.PEPPER, item["key"].encode(), hashlib.sha256).digest())

    def one_ceiling_c(item: dict[str, Any]) -> Any:
        # The same in C, as decide() does it when compiled (shape, checksum, HMAC, lookup: find_row).
        return find_row(item["key"], hmacs, table)

    codes: dict[str, int] = {}
    for item in items[:20_000]:
        code = str(validate(item["key"], item["scope"], item["ip"])["code"])
        codes[code] = codes.get(code, 0) + 1
    rates: dict[str, float] = {}
    _rate(one_decide, items, seconds, rates, "decide")
    _rate(one_decide_bucket, items, seconds, rates, "decide_bucket")
    _rate(one_validate, items, seconds, rates, "validate")
    _rate(one_ceiling, items, seconds, rates, "ceiling")
    _rate(one_ceiling_hmac_new, items, seconds, rates, "ceiling_hmac_new")
    if COMPILED:
        from services.validator._fastpath import find_row

        hmacs = keyring(peppers).hmacs
        _rate(one_ceiling_c, items, seconds, rates, "ceiling_c")
    return {
        "keys": len(projection),
        "build_s": round(build_s, 2),
        "compiled": COMPILED,
        **rates,
        "codes": codes,
    }
