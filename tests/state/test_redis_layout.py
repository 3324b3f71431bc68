"""The Redis store's own layout: claims held for the horizon, then gone; stale writers refused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from detector.errors import StaleProgress
from detector.state.base import Delta, Progress, Read
from detector.state.keys import Keys
from detector.state.redis import CLAIM_SHARDS, RedisStore

pytestmark = pytest.mark.stack


@pytest.fixture
def store(redis_client: redis.Redis, redis_prefix: str) -> Iterator[RedisStore]:
    s = RedisStore(redis_client, Keys(redis_prefix, 60, 60), 3600.0)
    yield s


def test_many_claims_share_a_few_keys_each_kept_one_to_one_and_a_quarter_horizons(
    store: RedisStore, redis_client: redis.Redis, redis_prefix: str
) -> None:
    n, horizon = 60_000, 600
    ids = [f"ev-{i:06d}" for i in range(n)]
    assert all(store.claim([(e, f"src:0:{i}") for i, e in enumerate(ids)], horizon))
    keys = list(redis_client.scan_iter(match=f"{redis_prefix}e:*", count=1000))
    assert len(keys) <= CLAIM_SHARDS  # per time slice, however many claims
    assert sum(redis_client.hlen(k) for k in keys) == n
    for k in keys:
        assert horizon <= redis_client.ttl(k) <= horizon * 1.25
    # Every id is still held: another position is a duplicate, the same one a redelivery.
    again = store.claim([(e, f"src:1:{i}") for i, e in enumerate(ids[:100])], horizon)
    assert not any(again)
    assert all(store.claim([(e, f"src:0:{i}") for i, e in enumerate(ids[:100])], horizon))


def test_claims_are_forgotten_and_their_keys_gone_once_the_horizon_has_passed(
    store: RedisStore, redis_client: redis.Redis, redis_prefix: str
) -> None:
    assert store.claim([("e1", "src:0:1"), ("e2", "src:0:2")], 1) == [True, True]
    assert store.claim([("e1", "src:1:7")], 1) == [False]
    deadline = time.monotonic() + 5
    while list(redis_client.scan_iter(match=f"{redis_prefix}e:*")):
        assert time.monotonic() < deadline, "claim keys outlived twice the horizon"
        time.sleep(0.2)
    assert store.claim([("e1", "src:1:7")], 1) == [True]


def test_a_stale_writer_on_one_partition_writes_nothing_for_any_partition(
    store: RedisStore,
) -> None:
    k = store._keys
    store.apply(Delta(), Progress("src", {0: 10, 1: 4}, {0: 5.0, 1: 6.0}, {0: None, 1: None}))
    d = Delta()
    d.incr(k.orders(5), "n5")
    d.dirty = {"x"}
    with pytest.raises(StaleProgress, match="partition 1 of src is at offset 4, not 3"):
        store.apply(d, Progress("src", {0: 20, 1: 9}, {0: 7.0, 1: 8.0}, {0: 10, 1: 3}))
    prog = store.progress("src", [0, 1])
    assert prog.offsets == {0: 10, 1: 4} and prog.max_ts == {0: 5.0, 1: 6.0}
    assert store.read(Read(fields=[(k.orders(5), ["n5"])])).fields == [[0.0]]
    assert store.dirty() == set()


def test_a_batch_larger_than_the_cap_leaves_the_same_set_as_one_member_at_a_time(
    store: RedisStore,
) -> None:
    k = store._keys
    big, small = k.campaign_ratios("big"), k.campaign_ratios("small")
    # Ties at the cap's edge included: Redis breaks them by member, so must the batch.
    members = [(f"m{i % 7}-{i}", 1000.0 + i // 3) for i in range(60)]
    d = Delta()
    for m, ts in members:
        d.seen(big, m, ts, 8)
    store.apply(d, None)
    for m, ts in members:
        one = Delta()
        one.seen(small, m, ts, 8)
        store.apply(one, None)
    res = store.read(Read(members=[(big, 0.0), (small, 0.0)]))
    assert len(res.members[0]) == 8
    assert sorted(res.members[0]) == sorted(res.members[1])


def test_sets_seen_once_live_in_shared_hashes_until_a_second_member_set_promotes_them(
    store: RedisStore, redis_client: redis.Redis, redis_prefix: str
) -> None:
    k = store._keys
    codes = [f"C{i:05d}" for i in range(2000)]
    d = Delta()
    for c in codes:
        for m in (f"a:acc-{c}", f"d:dev-{c}", f"i:ip-{c}"):
            d.seen(k.code_distinct(c), m, 1000.0, 300, 7200.0, True)
    store.apply(d, None)
    assert not any(redis_client.exists(k.code_distinct(c)) for c in codes[:50])
    hashes = list(redis_client.scan_iter(match=f"{redis_prefix}c:*", count=1000))
    assert sum(redis_client.hlen(h) for h in hashes) == len(codes)
    for h in hashes:
        assert 7200 <= redis_client.ttl(h) <= 7200 * 1.25
        assert redis_client.object("encoding", h) == b"listpack"
    # A second account on one code: that code gets its own zset, with every member.
    d = Delta()
    d.seen(k.code_distinct(codes[0]), "a:other", 1010.0, 300, 7200.0, True)
    store.apply(d, None)
    assert redis_client.exists(k.code_distinct(codes[0]))
    assert sum(redis_client.hlen(h) for h in hashes) == len(codes) - 1
    res = store.read(
        Read(
            members=[(k.code_distinct(codes[0]), 0.0)], compact={k.code_distinct(codes[0]): 7200.0}
        )
    )
    assert sorted(m for m, _ in res.members[0]) == sorted(
        ["a:other", f"a:acc-{codes[0]}", f"d:dev-{codes[0]}", f"i:ip-{codes[0]}"]
    )
