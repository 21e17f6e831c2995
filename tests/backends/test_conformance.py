"""
The storage contract, checked on every backend in the ``backend`` fixture.

Nothing here may depend on how a backend stores things. Two facts of the contract shape
these tests: a version is opaque (it may be a counter or a content hash, so writing the
same bytes twice may or may not give the same version), and no key is stored together
with keys below it (``a/b`` and ``a/b/c``), which the files backend cannot do.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from substantial.backends import Backend

# Marked here, not only by the conftest hook: anyio's plugin must see the marker at
# collection, or it re-parametrizes the test over every event loop and drops its own
# parameters.
pytestmark = pytest.mark.anyio


async def gather(calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``calls`` concurrently, at most 32 at a time; results in call order."""
    results: list[Any] = [None] * len(calls)
    limiter = anyio.CapacityLimiter(32)

    async def one(index: int) -> None:
        async with limiter:
            results[index] = await calls[index]()

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(one, index)
    return results


async def fill(backend: Backend, keys: list[str]) -> None:
    versions = await gather([partial(backend.create, k, k.encode()) for k in keys])
    assert all(v is not None for v in versions)


# -- get / put -----------------------------------------------------------------------------


async def test_get_missing_is_none(backend: Backend) -> None:
    assert await backend.get("nothing/here") is None


async def test_put_then_get_returns_data_and_version(backend: Backend) -> None:
    version = await backend.put("k/a", b"one")
    assert isinstance(version, str)
    assert await backend.get("k/a") == (b"one", version)


async def test_put_overwrites_and_changes_version(backend: Backend) -> None:
    first = await backend.put("k/a", b"one")
    second = await backend.put("k/a", b"two")
    assert second != first
    assert await backend.get("k/a") == (b"two", second)


# -- create --------------------------------------------------------------------------------


async def test_create_absent_key(backend: Backend) -> None:
    version = await backend.create("k/a", b"one")
    assert version is not None
    assert await backend.get("k/a") == (b"one", version)


async def test_create_existing_key_returns_none_and_keeps_value(backend: Backend) -> None:
    version = await backend.create("k/a", b"one")
    assert await backend.create("k/a", b"two") is None
    assert await backend.get("k/a") == (b"one", version)


async def test_create_after_delete(backend: Backend) -> None:
    await backend.create("k/a", b"one")
    assert await backend.delete("k/a")
    version = await backend.create("k/a", b"two")
    assert version is not None
    assert await backend.get("k/a") == (b"two", version)


async def test_concurrent_creates_have_one_winner(backend: Backend) -> None:
    results = await gather(
        [partial(backend.create, "race/key", f"writer {i}".encode()) for i in range(50)]
    )
    winners = [i for i, version in enumerate(results) if version is not None]
    assert len(winners) == 1
    assert await backend.get("race/key") == (f"writer {winners[0]}".encode(), results[winners[0]])


# -- replace -------------------------------------------------------------------------------


async def test_replace_with_current_version(backend: Backend) -> None:
    old = await backend.put("k/a", b"one")
    new = await backend.replace("k/a", b"two", old)
    assert new is not None
    assert new != old
    assert await backend.get("k/a") == (b"two", new)


async def test_replace_with_stale_version_fails_and_keeps_value(backend: Backend) -> None:
    stale = await backend.put("k/a", b"one")
    current = await backend.put("k/a", b"two")
    assert await backend.replace("k/a", b"three", stale) is None
    assert await backend.get("k/a") == (b"two", current)


async def test_replace_missing_key_fails(backend: Backend) -> None:
    version = await backend.put("k/a", b"one")
    assert await backend.replace("k/b", b"two", version) is None
    assert await backend.get("k/b") is None
    assert await backend.delete("k/a")
    assert await backend.replace("k/a", b"two", version) is None
    assert await backend.get("k/a") is None


async def test_concurrent_replaces_of_one_version_have_one_winner(backend: Backend) -> None:
    base = await backend.put("race/key", b"base")
    results = await gather(
        [partial(backend.replace, "race/key", f"writer {i}".encode(), base) for i in range(20)]
    )
    winners = [i for i, version in enumerate(results) if version is not None]
    assert len(winners) == 1
    assert await backend.get("race/key") == (f"writer {winners[0]}".encode(), results[winners[0]])


# -- delete --------------------------------------------------------------------------------


async def test_delete_unconditional(backend: Backend) -> None:
    await backend.put("k/a", b"one")
    assert await backend.delete("k/a") is True
    assert await backend.get("k/a") is None
    assert await backend.delete("k/a") is False


async def test_delete_missing_key_returns_false(backend: Backend) -> None:
    assert await backend.delete("k/never") is False
    assert await backend.delete("k/never", "some-version") is False


async def test_delete_with_current_version(backend: Backend) -> None:
    version = await backend.put("k/a", b"one")
    assert await backend.delete("k/a", version) is True
    assert await backend.get("k/a") is None


async def test_delete_with_stale_version_fails_and_keeps_value(backend: Backend) -> None:
    stale = await backend.put("k/a", b"one")
    current = await backend.put("k/a", b"two")
    assert await backend.delete("k/a", stale) is False
    assert await backend.get("k/a") == (b"two", current)


async def test_concurrent_conditional_deletes_have_one_winner(backend: Backend) -> None:
    version = await backend.put("race/key", b"x")
    results = await gather([partial(backend.delete, "race/key", version) for _ in range(20)])
    assert results.count(True) == 1
    assert await backend.get("race/key") is None


# -- list ----------------------------------------------------------------------------------

# Chosen to trip up ordering: '-' < '/' < '0' < 'a', a prefix ending inside a component,
# a key at several depths, and neighbours outside the prefix ("ls2/", "ls-").
LISTED = [
    "ls/a-1",
    "ls/a.b",
    "ls/a0",
    "ls/a/x",
    "ls/a/y/deep",
    "ls/a/y-z",
    "ls/b",
    "ls/sched/000000169-r",
    "ls/sched/000000170-a",
    "ls/sched/000000170-b",
    "ls/sched/0000001700-c",
    "ls/sched/000000171-a",
    "ls/sched/00000017a/sub",
]
OUTSIDE = ["ls-", "ls2/a", "lr/z", "lt"]


async def test_list_is_ordered_and_bounded_by_prefix(backend: Backend) -> None:
    await fill(backend, LISTED + OUTSIDE)
    assert await backend.list("ls/") == sorted(LISTED)
    assert await backend.list("ls") == sorted([*LISTED, "ls-", "ls2/a"])
    assert await backend.list("ls/a/") == ["ls/a/x", "ls/a/y-z", "ls/a/y/deep"]
    assert await backend.list("nothing/") == []


async def test_list_prefix_inside_a_component(backend: Backend) -> None:
    await fill(backend, LISTED)
    assert await backend.list("ls/sched/00000017") == [
        "ls/sched/000000170-a",
        "ls/sched/000000170-b",
        "ls/sched/0000001700-c",
        "ls/sched/000000171-a",
        "ls/sched/00000017a/sub",
    ]
    assert await backend.list("ls/sched/000000170") == [
        "ls/sched/000000170-a",
        "ls/sched/000000170-b",
        "ls/sched/0000001700-c",
    ]
    assert await backend.list("ls/a-") == ["ls/a-1"]
    assert await backend.list("ls/sched/9") == []


async def test_list_after_and_limit(backend: Backend) -> None:
    await fill(backend, LISTED + OUTSIDE)
    expected = sorted(LISTED)
    for limit in (1, 2, 3, 1000):
        for start in [None, *expected]:
            tail = [k for k in expected if start is None or k > start]
            assert await backend.list("ls/", after=start, limit=limit) == tail[:limit]
    # `after` need not be a stored key, and may sort inside a folder or before the prefix.
    assert await backend.list("ls/", after="ls/a/a") == [k for k in expected if k > "ls/a/a"]
    assert await backend.list("ls/", after="ls/sched/000000170") == [
        k for k in expected if k > "ls/sched/000000170"
    ]
    assert await backend.list("ls/", after="a") == expected
    assert await backend.list("ls/", after="zzz") == []


async def test_list_many_keys_in_pages(backend: Backend) -> None:
    keys = [f"many/{i:05d}" for i in range(0, 600, 3)] + [f"many/{i}" for i in range(1, 400, 7)]
    random.Random(7).shuffle(keys)
    await fill(backend, keys)
    expected = sorted(keys)
    seen: list[str] = []
    after: str | None = None
    while True:
        page = await backend.list("many/", after=after, limit=17)
        assert len(page) <= 17
        seen.extend(page)
        if len(page) < 17:
            break
        after = page[-1]
    assert seen == expected


async def test_list_skips_deleted_keys(backend: Backend) -> None:
    await fill(backend, ["del/a", "del/b", "del/c/d"])
    assert await backend.delete("del/b")
    assert await backend.delete("del/c/d")
    assert await backend.list("del/") == ["del/a"]


async def test_list_all_pages_past_one_thousand(backend: Backend) -> None:
    keys = [f"all/{i:06d}" for i in range(1234)]
    await fill(backend, keys)
    assert await backend.list_all("all/") == keys
    assert await backend.list_all("all/", after="all/001000") == keys[1001:]


# -- values and keys -----------------------------------------------------------------------


async def test_get_many_keeps_order(backend: Backend) -> None:
    versions = {k: await backend.put(k, k.encode()) for k in ["gm/c", "gm/a", "gm/b"]}
    keys = ["gm/b", "gm/missing", "gm/a", "gm/c", "gm/a"]
    expected = [None if k not in versions else (k.encode(), versions[k]) for k in keys]
    assert await backend.get_many(keys) == expected
    assert await backend.get_many([]) == []


async def test_values_are_binary_safe(backend: Backend) -> None:
    values = {
        "bin/every-byte": bytes(range(256)) * 3,
        "bin/empty": b"",
        "bin/mebibyte": random.Random(1).randbytes(1 << 20),
        "bin/newlines": b"\r\n\n\r\0\xff",
    }
    for key, value in values.items():
        version = await backend.create(key, value)
        assert await backend.get(key) == (value, version)
    version = await backend.put("bin/empty", bytes(range(255, -1, -1)))
    assert await backend.get("bin/empty") == (bytes(range(255, -1, -1)), version)
    version = await backend.replace("bin/empty", b"", version)
    assert version is not None
    assert await backend.get("bin/empty") == (b"", version)


ODD_KEYS = [
    "odd/with space",
    "odd/colon:at@plus+eq=pct%20",
    "odd/ünïcödé-ключ-鍵",
    "odd/dots.in...name",
    "odd/..leading-dots",
    "odd/~tilde,comma;semi!bang",
    "odd/under_score/(paren)[bracket]{brace}",
]


async def test_odd_legal_key_characters(backend: Backend) -> None:
    for key in ODD_KEYS:
        version = await backend.create(key, key.encode())
        assert version is not None, key
        assert await backend.get(key) == (key.encode(), version)
        assert await backend.create(key, b"again") is None
        new = await backend.replace(key, b"new", version)
        assert new is not None
        assert await backend.get(key) == (b"new", new)
    assert await backend.list("odd/") == sorted(ODD_KEYS)
    for key in ODD_KEYS:
        assert await backend.delete(key)
    assert await backend.list("odd/") == []


async def test_requests_count_each_operation(backend: Backend) -> None:
    before = dict(backend.requests)

    def counted() -> dict[str, int]:
        ops = ["get", "put", "create", "replace", "delete", "list"]
        return {op: backend.requests[op] - before.get(op, 0) for op in ops}

    version = await backend.put("req/a", b"1")
    await backend.create("req/b", b"2")
    await backend.create("req/b", b"2")
    await backend.get("req/a")
    await backend.get("req/missing")
    await backend.replace("req/a", b"3", version)
    await backend.list("req/")
    await backend.delete("req/a")
    await backend.delete("req/b", "stale")
    await backend.delete("req/b")
    assert counted() == {"get": 2, "put": 1, "create": 2, "replace": 1, "delete": 3, "list": 1}


# -- against a model -----------------------------------------------------------------------

MODEL_KEYS = ["a", "a-1", "b/1", "b/2", "b-1", "c/d/e", "c/d-e", "c/d0"]
_namespaces = itertools.count()

keys_st = st.sampled_from(MODEL_KEYS)
data_st = st.binary(max_size=16)
#: 0: the key's current version, 1: a version no one wrote, n: the n-th version seen so far
version_st = st.integers(min_value=0, max_value=12)
operation_st = st.one_of(
    st.tuples(st.just("get"), keys_st),
    st.tuples(st.just("put"), keys_st, data_st),
    st.tuples(st.just("create"), keys_st, data_st),
    st.tuples(st.just("replace"), keys_st, data_st, version_st),
    st.tuples(st.just("delete"), keys_st, st.none() | version_st),
    st.tuples(
        st.just("list"), st.sampled_from(["", "b", "b/", "c/d", "a-"]), keys_st, st.integers(1, 4)
    ),
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=st.lists(operation_st, max_size=30))
async def test_matches_a_dict_model(backend: Backend, operations: list[tuple[Any, ...]]) -> None:
    space = f"model/{next(_namespaces)}/"
    model: dict[str, tuple[bytes, str]] = {}
    seen: list[str] = []

    def pick(key: str, choice: int) -> str:
        if choice == 0 and key in model:
            return model[key][1]
        if choice <= 1 or not seen:
            return "not-a-version"
        return seen[choice % len(seen)]

    for op, key, *args in operations:
        full = space + key
        if op == "get":
            assert await backend.get(full) == model.get(key)
        elif op == "put":
            written = await backend.put(full, args[0])
            model[key] = (args[0], written)
            seen.append(written)
        elif op == "create":
            version = await backend.create(full, args[0])
            if key in model:
                assert version is None
            else:
                assert version is not None
                model[key] = (args[0], version)
                seen.append(version)
        elif op == "replace":
            expected = pick(key, args[1])
            version = await backend.replace(full, args[0], expected)
            if key in model and model[key][1] == expected:
                assert version is not None
                model[key] = (args[0], version)
                seen.append(version)
            else:
                assert version is None
        elif op == "delete":
            expected_version = None if args[0] is None else pick(key, args[0])
            deleted = await backend.delete(full, expected_version)
            should = key in model and expected_version in (None, model[key][1])
            assert deleted is should
            if should:
                del model[key]
        else:
            prefix, after, limit = key, args[0], args[1]
            want = sorted(k for k in model if k.startswith(prefix) and k > after)[:limit]
            got = await backend.list(space + prefix, after=space + after, limit=limit)
            assert got == [space + k for k in want]
    assert await backend.list_all(space) == [space + k for k in sorted(model)]
    assert await backend.get_many([space + k for k in MODEL_KEYS]) == [
        model.get(k) for k in MODEL_KEYS
    ]
