"""Kafka ingestion through `detector run` (CONTRACT.md §1-§4, issue 3).

Each test drives a real `detector run` subprocess against the local stack: fresh topics (the
events topic plus its `.dlq` and `.alerts` topics), its own consumer group and Redis key prefix.
What they prove:

- every kind of bad message is dead-lettered with its original key and bytes and the right
  reason, good ones are processed, an old `ts` is late (not bad), and both the Kafka group offsets
  and the offsets stored with state reach the partition ends;
- a clean restart (SIGTERM, exit 0) reprocesses nothing and then consumes new messages;
- a repeated `event_id` counts once, within a partition and across partitions;
- a SIGKILL mid-stream followed by a restart leaves the same Redis state and the same alerts as an
  uninterrupted run over the same messages;
- live consumption and `replay` of the same simulated stream give the same alerts (§4);
- every compression codec, with and without keys and headers, is consumed; a tombstone is
  dead-lettered.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import TopicPartition
from kafka_io import end_offsets, produce
from state_dump import dump_state

from detector.alerts.record import Alert
from detector.app import replay
from detector.config import load_config
from detector.features.extract import SEP, redeemer
from detector.simulate.scenario import ScenarioParams, generate, write_jsonl
from detector.state.keys import Keys
from detector.state.redis import RedisStore

pytestmark = pytest.mark.stack

BUCKET_S = 60.0
# Families of windowed state (detector/state/keys.py); bookkeeping (offsets, claims, alert
# states, outbox, models, leases) is deliberately not compared.
DLQ_HEADERS = (
    "dlq.reason",
    "dlq.detail",
    "dlq.source.topic",
    "dlq.source.partition",
    "dlq.source.offset",
)
# `run` advances its clock with the wall clock after this much idleness (CONTRACT.md §2). The
# comparisons below are about the messages, not about how long a process idled after them.
NO_IDLE_ADVANCE = {"events": {"idle_advance_s": 3600}}
EVENT_AND_MODEL_RULES = (
    "code_shared",
    "bot_farm",
    "account_stacking",
    "discount_anomaly",
    "campaign_rate",
)


# ---------------------------------------------------------------- helpers --


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def order(n: int, at: float, **fields: Any) -> dict[str, Any]:
    """A valid order event; ``fields`` override or (with ``...``) remove fields."""
    ev: dict[str, Any] = {
        "event_id": f"ev-{n}-{uuid.uuid4().hex[:8]}",
        "ts": iso(at),
        "order_id": f"o-{n}",
        "account_id": f"acc-{n}",
        "promo_code": f"CODE{n % 7}",
        "campaign_id": "SPRING",
        "order_total": 1000.0 + n,
        "discount": 100.0,
        "currency": "RUB",
        "account_created_at": "2025-01-01T00:00:00Z",
        "ip": f"10.0.{n % 5}.{n % 250}",
        "device_id": f"dev-{n}",
    }
    for k, v in fields.items():
        if v is ...:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


def enc(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev).encode()


def outcome(d: Any, name: str) -> float:
    return float(d.metric(f'detector_events_total{{outcome="{name}"}}'))


def consumed(d: Any) -> float:
    m = d.metrics()
    return sum(v for k, v in m.items() if k.startswith("detector_events_total{"))


def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        # kafka-python 3: list_group_offsets (list_consumer_group_offsets in 2.x).
        offs = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in offs.items() if tp.topic == topic}


def store_offsets(
    r: redis.Redis, prefix: str, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int]:
    out = {}
    for p in partitions:
        raw = r.get(f"{prefix}off:kafka:{group}:{topic}:{p}")
        if raw is not None:
            out[p] = int(raw)
    return out


def read_topic(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list[Any]:
    """The first ``n`` records of every partition of ``topic`` (no consumer group)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        parts: set[int] = set()
        while not parts and time.monotonic() < deadline:
            parts = c.partitions_for_topic(topic) or set()
            if not parts:
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[Any] = []
        while len(out) < n and time.monotonic() < deadline:
            for msgs in c.poll(timeout_ms=500).values():
                out.extend(msgs)
        # Anything beyond n would be a bug too: drain briefly.
        for msgs in c.poll(timeout_ms=1000).values():
            out.extend(msgs)
        return out
    finally:
        c.close()


def assert_same_state(
    got: dict[str, dict[str, float]], want: dict[str, dict[str, float]], what: str
) -> None:
    assert want, f"{what}: the reference state is empty"
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"{what}: keys missing {missing[:10]}, extra {extra[:10]}"
    diffs = []
    for key, fields in want.items():
        other = got[key]
        if set(other) != set(fields):
            diffs.append((key, sorted(set(fields) ^ set(other))[:5]))
            continue
        for f, v in fields.items():
            if not math.isclose(other[f], v, rel_tol=1e-9, abs_tol=1e-6):
                diffs.append((key, f, v, other[f]))
    assert not diffs, f"{what}: {len(diffs)} differences, e.g. {diffs[:10]}"


def state_total(state: dict[str, dict[str, float]], family: str) -> float:
    return sum(sum(h.values()) for k, h in state.items() if k.startswith(family))


def redemptions(state: dict[str, dict[str, float]]) -> float:
    """Redemptions counted in the campaign counters (their ``n{bucket}`` fields)."""
    return sum(
        v for k, h in state.items() if k.startswith("g:") for f, v in h.items() if f[0] == "n"
    )


def read_alerts(path: Path) -> list[Alert]:
    if not path.exists():
        return []
    return [Alert.from_json(line) for line in path.read_bytes().splitlines() if line.strip()]


def episodes(alerts: Iterable[Alert]) -> dict[tuple[str, str, str], list[float]]:
    """(rule, key, status) -> sorted detected_at (epoch seconds) of each episode."""
    out: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for a in alerts:
        at = datetime.fromisoformat(a.detected_at.replace("Z", "+00:00")).timestamp()
        out[(a.rule, a.key, a.status)].append(at)
    return {k: sorted(v) for k, v in out.items()}


def assert_same_alerts(got: list[Alert], want: list[Alert], what: str) -> None:
    """CONTRACT.md §4: same (rule, key, status) episodes, detected_at within one bucket."""
    g, w = episodes(got), episodes(want)
    assert set(g) == set(w), (
        f"{what}: episodes only in the first: {sorted(set(g) - set(w))}; "
        f"only in the second: {sorted(set(w) - set(g))}"
    )
    far = []
    for k in w:
        assert len(g[k]) == len(w[k]), f"{what}: {k}: {len(g[k])} vs {len(w[k])} episodes"
        far += [
            (k, iso(a), iso(b)) for a, b in zip(g[k], w[k], strict=True) if abs(a - b) > BUCKET_S
        ]
    assert not far, f"{what}: detected_at more than a bucket apart: {far}"


# --------------------------------------------------------------- fixtures --


@pytest.fixture
def io_topics(topic: Callable[..., str], kafka_bootstrap: str) -> Iterator[Callable[[int], str]]:
    """Factory: an events topic with N partitions plus its `.dlq` and `.alerts` topics."""
    made: list[str] = []

    def make(partitions: int = 1) -> str:
        t = topic(partitions=partitions)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_topics(
                [NewTopic(f"{t}.{s}", 1, 1) for s in ("dlq", "alerts")], wait_for_metadata=True
            )
        finally:
            admin.close()
        made.extend([f"{t}.dlq", f"{t}.alerts"])
        return t

    yield make
    if made:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.delete_topics(made, raise_errors=False)
        finally:
            admin.close()


@pytest.fixture
def other_prefix(redis_client: redis.Redis, redis_prefix: str) -> Iterator[str]:
    """A second key prefix (for a reference run), deleted afterwards."""
    prefix = f"{redis_prefix[:-1]}-ref:"  # not under redis_prefix: dumps stay apart
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        redis_client.unlink(*keys[i : i + 500])


# ---------------------------------------------------- 1. good and bad kinds --


def bad_messages(now: float, base: float) -> list[tuple[str, bytes | None]]:
    """(expected dlq.reason, value) for every kind of bad message."""
    ok = order(9000, base + 1)
    pad = "x" * 70_000  # > events.max_message_bytes (default 65536), still a valid event
    deep = 5000
    return [
        ("not_utf8", b'{"event_id": "\xff\xfe"}'),
        ("not_json", b"{this is not json"),
        ("not_object", b"[1, 2, 3]"),
        ("not_object", b'"an order, honestly"'),
        ("missing_field", enc(order(9001, base + 2, account_id=...))),
        ("missing_field", enc(order(9002, base + 2, ts=...))),
        ("wrong_type", enc(order(9003, base + 3, order_total="1000"))),
        ("wrong_type", enc(order(9004, base + 3, order_total=True))),
        ("wrong_type", enc(order(9005, base + 3, event_id=12345))),
        ("bad_value", enc(order(9006, base + 4, order_total=-5.0))),
        ("bad_value", enc(order(9007, base + 4, order_total=100.0, discount=250.0))),
        ("bad_value", enc(order(9008, base + 4, ts=iso(base + 4)[:-1]))),  # naive ts
        ("future_ts", enc(order(9009, now + 86_400))),
        ("too_large", enc({**ok, "padding": pad})),
        ("tombstone", None),
        ("not_json", enc(ok)[:-1] + b', "deep": ' + b"[" * deep + b"]" * deep + b"}"),
    ]


def test_good_and_every_bad_kind_processed_dead_lettered_with_reason_and_offsets_at_end(
    io_topics: Callable[[int], str],
    kafka_bootstrap: str,
    detector_config: Callable[..., Path],
    start_detector: Callable[..., Any],
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    t = io_topics(2)
    now = time.time()
    base = math.floor(now / BUCKET_S) * BUCKET_S - 3600  # an hour ago, bucket-aligned
    n_good = 40
    goods = [enc(order(i, base + 15 + 20 * i)) for i in range(n_good)]  # 3 per bucket
    bads = bad_messages(now, base)
    # Interleave: a bad message after every few good ones, both partitions, keys and no keys.
    msgs: list[tuple[bytes | None, bytes | None, int | None]] = []
    expected: list[str | None] = []  # dlq reason per message (None: good)
    bi = 0
    for i, g in enumerate(goods):
        msgs.append((f"o-{i}".encode(), g, i % 2))
        expected.append(None)
        if i % 3 == 2 and bi < len(bads):
            reason, value = bads[bi]
            key = None if bi % 4 == 0 else f"bad-{bi}".encode()
            msgs.append((key, value, bi % 2))
            expected.append(reason)
            bi += 1
    for reason, value in bads[bi:]:
        msgs.append((f"bad-{bi}".encode(), value, bi % 2))
        expected.append(reason)
        bi += 1
    # An old ts is not bad: behind the clock by more than the allowed lateness, it is late.
    # (Last on its partition, after buckets of newer events have set the watermark.)
    msgs.append((b"old", enc(order(7777, 1_577_836_800.0)), 0))  # 2020-01-01
    expected.append("late")
    n_bad = len(bads)
    assert bi == n_bad

    sent = produce(kafka_bootstrap, t, msgs, max_request_size=2_000_000)
    cfg = detector_config(t, **NO_IDLE_ADVANCE)
    group = f"g-{t}"
    d = start_detector(cfg)
    d.wait_events(len(msgs), timeout=120)

    assert outcome(d, "ok") == n_good
    assert outcome(d, "dead_letter") == n_bad
    assert outcome(d, "late") == 1
    assert outcome(d, "duplicate") == 0
    by_reason: dict[str, int] = defaultdict(int)
    for reason, _ in bads:
        by_reason[reason] += 1
    for reason, n in by_reason.items():
        assert d.metric(f'detector_dead_letters_total{{reason="{reason}"}}') == n, reason

    # The dead-letter topic: original key and value bytes, reason and position in headers.
    dlq = read_topic(kafka_bootstrap, f"{t}.dlq", n_bad)
    assert len(dlq) == n_bad
    want = {
        (s.partition, s.offset): (s, reason)
        for s, reason in zip(sent, expected, strict=True)
        if reason not in (None, "late")
    }
    seen = set()
    for rec in dlq:
        h = {k: v.decode() for k, v in rec.headers}
        assert set(DLQ_HEADERS) <= set(h), h
        assert h["dlq.source.topic"] == t
        pos = (int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
        assert pos in want, f"dead letter for a message that was not bad: {pos} {h}"
        src, reason = want[pos]
        assert h["dlq.reason"] == reason, (reason, h)
        assert h["dlq.detail"].strip(), h
        assert rec.key == src.key
        assert rec.value == src.value
        seen.add(pos)
    assert seen == set(want)

    # Offsets: Kafka's (for lag tools) and the store's (authoritative) reach the partition ends.
    ends = end_offsets(kafka_bootstrap, t)
    assert sum(ends.values()) == len(msgs)
    d.wait_for(
        lambda: group_offsets(kafka_bootstrap, group, t) == ends, 30, "group offsets at the ends"
    )
    assert store_offsets(redis_client, redis_prefix, group, t, ends) == ends

    # Only the good events reached the windows.
    state = dump_state(redis_client, redis_prefix)
    assert state_total(state, "o:") == n_good
    assert d.proc.poll() is None, "a bad message stopped the consumer"
    assert d.stop() == 0


# ----------------------------------------------------------- 2. restart --


def test_clean_restart_reprocesses_nothing_then_consumes_new_messages(
    io_topics: Callable[[int], str],
    kafka_bootstrap: str,
    detector_config: Callable[..., Path],
    start_detector: Callable[..., Any],
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    t = io_topics(2)
    base = math.floor(time.time() / BUCKET_S) * BUCKET_S - 7200
    first = [order(i, base + 10 * i) for i in range(30)]
    produce(kafka_bootstrap, t, [(e["order_id"].encode(), enc(e), None) for e in first])
    cfg = detector_config(t, **NO_IDLE_ADVANCE)
    group = f"g-{t}"

    d1 = start_detector(cfg)
    d1.wait_events(len(first))
    assert outcome(d1, "ok") == len(first)
    ends = end_offsets(kafka_bootstrap, t)
    d1.wait_for(lambda: group_offsets(kafka_bootstrap, group, t) == ends, 30, "group offsets")
    assert d1.stop() == 0, d1.log.read_text()[-2000:]
    before = dump_state(redis_client, redis_prefix)
    assert state_total(before, "o:") == len(first)
    assert store_offsets(redis_client, redis_prefix, group, t, ends) == ends

    d2 = start_detector(cfg)

    def polled_all() -> bool:
        m = d2.metrics()
        lags = [
            m.get(f'detector_consumer_lag_records{{partition="{p}",topic="{t}"}}') for p in ends
        ]
        return all(v is not None for v in lags)

    d2.wait_for(polled_all, 60, "the restarted consumer to be assigned and to poll")
    time.sleep(2.0)  # a few more polls: anything it were to reprocess would show by now
    assert consumed(d2) == 0, d2.metrics()
    assert dump_state(redis_client, redis_prefix) == before

    later = [order(100 + i, base + 400 + 10 * i) for i in range(12)]
    produce(kafka_bootstrap, t, [(e["order_id"].encode(), enc(e), None) for e in later])
    d2.wait_events(len(later))
    time.sleep(1.0)
    assert outcome(d2, "ok") == len(later)
    assert consumed(d2) == len(later)
    after = dump_state(redis_client, redis_prefix)
    assert state_total(after, "o:") == len(first) + len(later)
    ends = end_offsets(kafka_bootstrap, t)
    assert store_offsets(redis_client, redis_prefix, group, t, ends) == ends
    assert d2.stop() == 0


# -------------------------------------------------------- 3. duplicates --


@pytest.mark.parametrize("where", ["same_partition", "other_partition"])
def test_repeated_event_id_counts_once(
    where: str,
    io_topics: Callable[[int], str],
    kafka_bootstrap: str,
    detector_config: Callable[..., Path],
    start_detector: Callable[..., Any],
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    t = io_topics(2)
    base = math.floor(time.time() / BUCKET_S) * BUCKET_S - 3600
    events = [order(i, base + 5 * i, promo_code=f"DUP{i}") for i in range(10)]
    msgs: list[tuple[bytes | None, bytes | None, int | None]] = [
        (e["order_id"].encode(), enc(e), i % 2) for i, e in enumerate(events)
    ]
    again = events[3]  # on partition 1
    msgs.append((again["order_id"].encode(), enc(again), 1 if where == "same_partition" else 0))
    produce(kafka_bootstrap, t, msgs)

    path = detector_config(t, **NO_IDLE_ADVANCE)
    d = start_detector(path)
    d.wait_events(len(msgs))
    time.sleep(0.5)
    assert outcome(d, "duplicate") == 1
    assert outcome(d, "ok") == len(events)
    state = dump_state(redis_client, redis_prefix)
    assert state_total(state, "o:") == len(events)
    assert redemptions(state) == len(events)  # the repeated event counted once
    assert set(state["u:DUP3"]) == {redeemer("acc-3", "dev-3", "10.0.3.3")}
    # The claim outlives the run: the id sent once more, from anywhere else, is still a duplicate.
    cfg = load_config(path)
    store = RedisStore(redis_client, Keys.for_config(cfg), cfg.retention_s)
    assert store.claim([(again["event_id"], "elsewhere:0:0")], cfg.dedupe_horizon_s) == [False]
    assert d.stop() == 0


# ------------------------------------------------------- 4. crash (SIGKILL) --


# After a SIGKILL the dead process's models lease stays taken for `models.lease_ttl_s`: the
# restarted process consumes the rest of the backlog meanwhile (hours of event time), then takes
# the lease and catches the models up from their snapshot's clock, every bucket since (their
# counters are still stored), raising the model-based alerts (campaign_rate) the uninterrupted
# run raised, late in wall time but at the same event times.


@pytest.mark.slow
@pytest.mark.parametrize(
    "lease_ttl_s",
    [
        pytest.param(0.5, id="short_lease"),
        pytest.param(15.0, id="default_lease"),
    ],
)
def test_sigkill_mid_stream_then_restart_leaves_same_state_and_alerts_as_uninterrupted_run(
    lease_ttl_s: float,
    io_topics: Callable[[int], str],
    kafka_bootstrap: str,
    detector_config: Callable[..., Path],
    start_detector: Callable[..., Any],
    redis_client: redis.Redis,
    redis_prefix: str,
    other_prefix: str,
    tmp_path: Path,
) -> None:
    # ~3k events, 3 partitions; alerts from event rules and from the models (campaign_rate).
    sc = generate(
        ScenarioParams.from_seed(
            4,
            hours=12,
            scale=0.3,
            incidents=("leak", "discount_misconfig", "bot_farm"),
            benign=(),
        )
    )
    events = list(sc.events)
    t = io_topics(3)
    produce(kafka_bootstrap, t, [(e["order_id"].encode(), enc(e), None) for e in events])
    n = len(events)
    common: dict[str, Any] = {
        **NO_IDLE_ADVANCE,
        "campaigns": {c: {"kind": k} for c, k in sc.campaigns.items()},
        "alerts": {"kafka": False},
        # Small polls: many batches, so that the kill lands in the middle of the stream.
        "kafka": {"max_poll_records": 100},
        "models": {"lease_ttl_s": lease_ttl_s},
    }

    # Reference: one uninterrupted run over the same messages, in another group and prefix.
    ref_alerts = tmp_path / "ref-alerts.jsonl"
    ref_cfg = detector_config(
        t,
        name="ref.yaml",
        **{
            **common,
            # Default poll size: other batch boundaries must not change the outcome either.
            "kafka": {"group_id": f"ref-{t}"},
            "redis": {"key_prefix": other_prefix},
            "alerts": {"kafka": False, "jsonl_path": str(ref_alerts)},
        },
    )
    ref = start_detector(ref_cfg)

    # Crash run, meanwhile: SIGKILL once 30-60 % is consumed, restart, consume the rest.
    crash_alerts = tmp_path / "crash-alerts.jsonl"
    cfg = detector_config(
        t,
        name="crash.yaml",
        **{**common, "alerts": {"kafka": False, "jsonl_path": str(crash_alerts)}},
    )
    d1 = start_detector(cfg)
    deadline = time.monotonic() + 180
    at = 0.0
    while time.monotonic() < deadline:
        at = consumed(d1)
        if at >= 0.3 * n:
            break
        assert d1.proc.poll() is None, d1.log.read_text()[-2000:]
        time.sleep(0.02)
    d1.kill()
    assert 0 < at < n, f"killed at {at} of {n}: not mid-stream"
    d2 = start_detector(cfg)
    d2.wait_for(
        lambda: (
            store_offsets(redis_client, redis_prefix, f"g-{t}", t, range(3))
            == end_offsets(kafka_bootstrap, t)
        ),
        180,
        "all messages applied after restart",
    )
    d2.wait_for(
        lambda: (
            not redis_client.exists(f"{redis_prefix}dirty")
            and not redis_client.hlen(f"{redis_prefix}ob")
        ),
        30,
        "dirty and outbox empty",
    )
    assert 0 < consumed(d2) <= n - at  # the rest, and nothing the first process had applied
    ref.wait_events(n, timeout=180)
    assert outcome(ref, "ok") == n

    def clock(prefix: str) -> bytes | None:
        return redis_client.hget(f"{prefix}m", "__clock__")  # type: ignore[return-value]

    ref.wait_for(lambda: clock(other_prefix) is not None, 30, "the reference's models")
    d2.wait_for(
        lambda: (
            clock(redis_prefix) == clock(other_prefix)
            and not redis_client.hlen(f"{redis_prefix}ob")
        ),
        lease_ttl_s + 60,
        "the models caught up once the dead owner's lease expired",
    )
    assert d2.stop() == 0
    assert ref.stop() == 0
    # Nothing counted twice: the restarted process applied exactly what the first had not.
    assert_same_state(
        dump_state(redis_client, redis_prefix),
        dump_state(redis_client, other_prefix),
        "state after SIGKILL + restart vs uninterrupted",
    )
    want = read_alerts(ref_alerts)
    assert want, "the scenario should raise alerts"
    got = read_alerts(crash_alerts)
    assert len({(a.alert_id, a.status) for a in got}) == len(got), "an alert written twice"
    assert_same_alerts(got, want, "alerts after SIGKILL + restart vs uninterrupted")


# ------------------------------------------------------ 5. replay vs run --


@pytest.mark.slow
def test_live_run_and_replay_of_one_stream_give_the_same_alerts(
    io_topics: Callable[[int], str],
    kafka_bootstrap: str,
    detector_config: Callable[..., Path],
    start_detector: Callable[..., Any],
    tmp_path: Path,
) -> None:
    # 36 h, every incident kind, declared campaigns; scale 0.4 (~45k events) keeps it short
    # and still raises and resolves alerts of every rule.
    sc = generate(ScenarioParams.from_seed(3, hours=36, scale=0.4, declared=True))
    events_path = tmp_path / "events.jsonl"
    write_jsonl(sc.events, events_path)
    campaigns = {c: {"kind": k} for c, k in sc.campaigns.items()}
    lines = events_path.read_bytes().splitlines()
    assert len(lines) > 40_000

    t = io_topics(3)
    produce(
        kafka_bootstrap,
        t,
        ((orjson.loads(v)["order_id"].encode(), v, None) for v in lines),
        linger_ms=20,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=5,
    )
    run_out = tmp_path / "run-alerts.jsonl"
    d = start_detector(
        detector_config(
            t,
            **NO_IDLE_ADVANCE,
            campaigns=campaigns,
            alerts={"kafka": False, "jsonl_path": str(run_out)},
        )
    )
    # The replay runs here while the detector consumes (two cores).
    replay_out = tmp_path / "replay-alerts.jsonl"
    stats = replay(
        load_config(None, {"campaigns": campaigns}), str(events_path), alerts_out=str(replay_out)
    )
    want = read_alerts(replay_out)
    assert stats.ok == len(lines)
    assert {a.rule for a in want} >= set(EVENT_AND_MODEL_RULES), {a.rule for a in want}

    d.wait_events(len(lines), timeout=400)
    assert outcome(d, "ok") == len(lines)
    assert d.stop() == 0  # SIGTERM finishes the batch: its alerts are written
    got = read_alerts(run_out)
    assert_same_alerts(got, want, "run vs replay")


# ------------------------------------------------------------ 6. codecs --


def test_every_compression_codec_with_and_without_keys_and_headers_is_consumed(
    io_topics: Callable[[int], str],
    kafka_bootstrap: str,
    detector_config: Callable[..., Path],
    start_detector: Callable[..., Any],
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    from confluent_kafka import Producer

    t = io_topics(2)
    base = math.floor(time.time() / BUCKET_S) * BUCKET_S - 3600
    codecs = ("gzip", "snappy", "lz4", "zstd")
    per_codec = 25
    n = 0
    for ci, codec in enumerate(codecs):
        p = Producer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "compression.type": codec,
                "linger.ms": 50,
                "acks": "all",
            }
        )
        for j in range(per_codec):
            e = order(n, base + ci * 120 + j, promo_code=f"{codec.upper()}-{j % 3}")
            kw: dict[str, Any] = {}
            if j % 2 == 0:
                kw["key"] = e["order_id"].encode()
            if j % 3 == 0:
                kw["headers"] = [("source", b"checkout"), ("codec", codec.encode())]
            p.produce(t, value=enc(e), **kw)
            n += 1
        if ci == 0:
            p.produce(t, value=None, key=b"tombstone-key", partition=1)
        assert p.flush(30) == 0, f"{codec}: messages not delivered"
    assert sum(end_offsets(kafka_bootstrap, t).values()) == n + 1

    d = start_detector(detector_config(t, **NO_IDLE_ADVANCE))
    d.wait_events(n + 1)
    assert outcome(d, "ok") == n
    assert outcome(d, "dead_letter") == 1
    assert d.metric('detector_dead_letters_total{reason="tombstone"}') == 1
    (dl,) = read_topic(kafka_bootstrap, f"{t}.dlq", 1)
    h = {k: v.decode() for k, v in dl.headers}
    assert h["dlq.reason"] == "tombstone" and h["dlq.source.partition"] == "1"
    assert dl.key == b"tombstone-key" and dl.value is None
    state = dump_state(redis_client, redis_prefix)
    for codec in codecs:  # one distinct account per event of the codec's codes
        accounts = [m for k, z in state.items() if k.startswith(f"u:{codec.upper()}-") for m in z]
        assert len({m.split(SEP)[0] for m in accounts}) == per_codec, codec
    assert d.stop() == 0
