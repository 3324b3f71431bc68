"""One contract for both stores: the embedded in-memory store and Redis behave the same."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from detector.errors import StaleProgress
from detector.state.base import AlertChange, Commit, Delta, Gate, Progress, Read, Store
from detector.state.keys import Keys
from detector.state.memory import MemoryStore
from detector.state.redis import RedisStore

TTL = 3600.0


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.stack)])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore(Keys("t:", 60, 60), TTL)
        return
    import redis

    prefix = request.getfixturevalue("redis_prefix")
    url = request.getfixturevalue("redis_url")
    s = RedisStore(redis.Redis.from_url(url), Keys(prefix, 60, 60), TTL)
    yield s
    s.close()


def k(store: Store) -> Keys:
    return store._keys  # type: ignore[attr-defined,no-any-return]


def test_counters_add_up_across_batches(store: Store) -> None:
    key = k(store).campaign_counts("C1", 100)
    for _ in range(3):
        d = Delta()
        d.incr(key, "n100", 2)
        d.incr(key, "s100", 0.5)
        store.apply(d, None)
    res = store.read(Read(fields=[(key, ["n100", "s100", "n101"])]))
    assert res.fields == [[6.0, 1.5, 0.0]]


def test_distinct_members_keep_their_latest_time_and_count_by_window(store: Store) -> None:
    key = k(store).code_distinct("C1")
    d = Delta()
    d.seen(key, "a:1", 1000.0, 100)
    d.seen(key, "a:2", 1500.0, 100)
    store.apply(d, None)
    d = Delta()
    d.seen(key, "a:1", 1200.0, 100)  # later sighting moves a:1 forward
    d.seen(key, "a:2", 900.0, 100)  # an older one does not move a:2 back
    store.apply(d, None)
    res = store.read(Read(counts=[(key, 1100.0), (key, 1300.0)], members=[(key, 0.0)]))
    assert res.counts == [2, 1]
    assert sorted(res.members[0]) == [("a:1", 1200.0), ("a:2", 1500.0)]


def test_distinct_sets_are_capped_to_the_most_recent_members(store: Store) -> None:
    key = k(store).code_distinct("C2")
    d = Delta()
    for i in range(20):
        d.seen(key, f"a:{i:02d}", 1000.0 + i, 5)
    store.apply(d, None)
    res = store.read(Read(members=[(key, 0.0)]))
    assert sorted(m for m, _ in res.members[0]) == [f"a:{i}" for i in range(15, 20)]


def test_distinct_members_older_than_retention_are_dropped(store: Store) -> None:
    key = k(store).account_codes("acc")
    d = Delta()
    d.seen(key, "OLD", 1000.0, 100)
    store.apply(d, None)
    d = Delta()
    d.seen(key, "NEW", 1000.0 + TTL + 10, 100)
    store.apply(d, None)
    res = store.read(Read(members=[(key, 0.0)]))
    assert [m for m, _ in res.members[0]] == ["NEW"]


def test_distinct_set_trim_does_not_depend_on_the_order_batches_are_applied_in(
    store: Store,
) -> None:
    """Instances of a group apply one bucket's partitions in any order: the same set results."""
    key = k(store).account_codes("acc2")
    d = Delta()
    d.seen(key, "NEW", 1000.0 + TTL + 10, 100)
    store.apply(d, None)
    d = Delta()
    d.seen(key, "OLD", 1000.0, 100)  # applied after, older than the set's window
    store.apply(d, None)
    res = store.read(Read(members=[(key, 0.0)]))
    assert [m for m, _ in res.members[0]] == ["NEW"]


def test_claim_is_new_once_then_duplicate_but_same_position_reclaims(store: Store) -> None:
    assert store.claim([("e1", "p0:1"), ("e2", "p0:2"), ("e1", "p0:3")], 60) == [True, True, False]
    # A redelivery of the same record (same position) after a crash is still "new".
    assert store.claim([("e1", "p0:1"), ("e2", "p1:9")], 60) == [True, False]


def test_progress_is_stored_with_the_batch_and_read_back(store: Store) -> None:
    d = Delta()
    d.incr(k(store).orders(5), "n5")
    store.apply(d, Progress("src", {0: 10, 1: 7}, {0: 123.5, 1: 99.0}, {0: None, 1: None}))
    prog = store.progress("src", [0, 1, 2])
    assert prog.offsets == {0: 10, 1: 7}
    assert prog.max_ts == {0: 123.5, 1: 99.0}


def test_apply_refuses_a_stale_writer_and_writes_nothing(store: Store) -> None:
    store.apply(Delta(), Progress("src", {0: 10}, {}, {0: None}))
    d = Delta()
    d.incr(k(store).orders(5), "n5")
    with pytest.raises(StaleProgress):
        store.apply(d, Progress("src", {0: 20}, {}, {0: 5}))
    assert store.progress("src", [0]).offsets == {0: 10}
    assert store.read(Read(fields=[(k(store).orders(5), ["n5"])])).fields == [[0.0]]


def test_alert_changes_are_compare_and_set_with_an_outbox(store: Store) -> None:
    first = store.commit(Commit(changes=[AlertChange("r\x1fk", None, b"v1", b"rec1")]))
    again = store.commit(Commit(changes=[AlertChange("r\x1fk", None, b"v2", b"rec2")]))
    assert first == [True] and again == [False]
    assert store.alert_states() == {"r\x1fk": b"v1"}
    pending = store.outbox()
    assert [raw for _, raw in pending] == [b"rec1"]
    store.ack_outbox([i for i, _ in pending])
    assert store.outbox() == []
    assert store.commit(Commit(changes=[AlertChange("r\x1fk", b"v1", None, b"rec3")])) == [True]
    assert store.alert_states() == {}


def test_dirty_entities_are_kept_until_committed_clean(store: Store) -> None:
    d = Delta()
    d.dirty = {"x", "y"}
    store.apply(d, None)
    assert store.dirty() == {"x", "y"}
    store.commit(Commit(clean={"x"}))
    assert store.dirty() == {"y"}


def test_gated_entities_turn_dirty_only_once_their_set_holds_enough_members(
    store: Store,
) -> None:
    key = k(store).code_distinct("G1")
    d = Delta()
    d.seen(key, "a:1", 1000.0, 100)
    d.gated = {"small": Gate(key, 2)}
    assert store.apply(d, None) == set()
    assert store.dirty() == set()
    d = Delta()
    d.seen(key, "a:1", 1010.0, 100)  # seen again: a member once
    d.seen(key, "a:2", 1010.0, 100)
    d.gated = {"both": Gate(key, 2), "three": Gate(key, 3)}
    assert store.apply(d, None) == {"both"}
    assert store.dirty() == {"both"}


def test_snapshots_are_written_only_by_the_lease_holder(store: Store) -> None:
    assert store.try_lease("models", "A", 30)
    assert not store.try_lease("models", "B", 30)
    store.commit(Commit(snapshots={"m1": b"from-A"}, lease_owner="A"))
    store.commit(Commit(snapshots={"m1": b"from-B"}, lease_owner="B"))
    assert store.snapshots(["m1", "missing"]) == {"m1": b"from-A"}
    store.commit(Commit(snapshots={"m2": b"also-A"}, lease_owner="A"))
    assert store.snapshots() == {"m1": b"from-A", "m2": b"also-A"}  # a new writer loads all
    store.release_lease("models", "A")
    assert store.try_lease("models", "B", 30)


def test_whole_hashes_can_be_read(store: Store) -> None:
    key = k(store).campaign_volume(3)
    d = Delta()
    d.incr(key, "CAMP-A", 3)
    d.incr(key, "CAMP-B")
    store.apply(d, None)
    assert store.read(Read(hashes=[key])).hashes == [{"CAMP-A": 3.0, "CAMP-B": 1.0}]


def _seen(store: Store, key: str, members: dict[str, float], cap: int = 100) -> None:
    """One batch of a per-entity set (compact while it holds one member set)."""
    d = Delta()
    for m, ts in members.items():
        d.seen(key, m, ts, cap, None, True)
    store.apply(d, None)


def _members(store: Store, key: str, since: float = 0.0) -> list[tuple[str, float]]:
    res = store.read(Read(members=[(key, since)], compact={key: None}))
    return sorted(res.members[0])


def test_a_set_seen_again_with_the_same_members_keeps_their_latest_times(store: Store) -> None:
    key = k(store).code_distinct("K1")
    _seen(store, key, {"a:1": 1000.0, "d:1": 1000.0, "i:1": 1000.0})
    _seen(store, key, {"a:1": 1200.5, "i:1": 900.0})  # an older sighting moves nothing back
    assert _members(store, key) == [("a:1", 1200.5), ("d:1", 1000.0), ("i:1", 1000.0)]
    assert _members(store, key, 1100.0) == [("a:1", 1200.5)]


def test_a_second_member_set_keeps_every_member_of_the_first(store: Store) -> None:
    key = k(store).code_distinct("K2")
    _seen(store, key, {"a:1": 1000.0, "d:1": 1000.0})
    _seen(store, key, {"a:2": 1100.0, "d:1": 1100.0})
    _seen(store, key, {"a:3": 1050.0})
    assert _members(store, key) == [
        ("a:1", 1000.0),
        ("a:2", 1100.0),
        ("a:3", 1050.0),
        ("d:1", 1100.0),
    ]


def test_a_compact_set_is_trimmed_relative_to_its_newest_member_and_capped(store: Store) -> None:
    key = k(store).account_codes("K3")
    _seen(store, key, {"OLD": 1000.0})
    _seen(store, key, {"OLD": 1000.0 + TTL + 10, "NEW": 1000.0})
    assert _members(store, key) == [("OLD", 1000.0 + TTL + 10)]
    small = k(store).account_codes("K4")
    _seen(store, small, {"x": 1.0, "y": 2.0, "z": 3.0}, cap=2)
    assert _members(store, small) == [("y", 2.0), ("z", 3.0)]


def test_a_compact_set_counts_for_the_dirty_gate(store: Store) -> None:
    key = k(store).code_distinct("K5")
    d = Delta()
    d.seen(key, "a:1", 1000.0, 100, None, True)
    d.seen(key, "d:1", 1000.0, 100, None, True)
    d.gated = {"two": Gate(key, 2), "three": Gate(key, 3)}
    assert store.apply(d, None) == {"two"}


def test_a_stale_writer_leaves_no_compact_set_behind(store: Store) -> None:
    key = k(store).account_codes("K6")
    store.apply(Delta(), Progress("src", {0: 10}, {}, {0: None}))
    d = Delta()
    d.seen(key, "C", 1000.0, 100, None, True)
    with pytest.raises(StaleProgress):
        store.apply(d, Progress("src", {0: 20}, {}, {0: 5}))
    assert _members(store, key) == []


@pytest.mark.parametrize("compact", [True, False])
def test_any_text_in_keys_and_members_and_exact_times_come_back_unchanged(
    store: Store, compact: bool
) -> None:
    # Events may carry NUL, quotes, backslashes, control and non-BMP characters in their ids;
    # Redis gets a batch as one JSON document, which must not alter a byte or a time.
    for name in ["a\x00b", 'q"\\\x1f\n', "ü☃😀"]:
        key = k(store).code_distinct(name)
        d = Delta()
        d.seen(key, name + "\x1fd\x1f", 1_000_000_000.123456789, 60, None, compact)
        d.incr(k(store).campaign_counts(name, 7), "n7", 0.1)
        store.apply(d, None)
        store.apply(d, None)
        res = store.read(
            Read(
                fields=[(k(store).campaign_counts(name, 7), ["n7"])],
                members=[(key, 0.0)],
                compact={key: None} if compact else {},
            )
        )
        assert res.members == [[(name + "\x1fd\x1f", 1_000_000_000.123456789)]]
        assert res.fields == [[0.1 + 0.1]]
