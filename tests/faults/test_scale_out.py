"""Scale-out: three `detector run` processes in one consumer group over a 6-partition topic.

CONTRACT §4 on scale-out: the instances together raise the same alert episodes
``(rule, key, status)``, ``detected_at`` within one bucket, as one process over the same messages
(the ``reference``: one instance over the same events, pre-loaded, its own group and key prefix),
and leave the same windowed state in Redis (every event applied once, whichever instance had its
partition). The models have one writer: the ``lease:models`` key names one owner, snapshots are
written, and ``detector_model_score`` is exported by one process at a time.

The instances advance by the group clock (docs/architecture.md): each publishes its partitions'
event-time holds in Redis, and none applies, evaluates or closes a bucket before every partition of
the topic is past what that bucket needs.

1. Three instances, the stream produced at a controlled pace (``PACE_S``), no fault.
2. Three instances, the whole stream produced at once (a backlog: the instances would race
   through their partitions at their own speeds without the group clock); repeated
   ``FAULTS_SCALE_REPEAT`` times (default 1) against one reference.
3. Three instances, the models' writer SIGKILLed mid-stream: its partitions move to the others
   after the session timeout (a rebalance), another instance takes the models' lease over and
   continues from the last persisted models.
4. One instance draining the pre-loaded stream in tiny polls, two more joining mid-way: the
   rebalances come while it has batches polled ahead of its pipeline.

Helpers come from ``test_crash_and_outages`` (same directory; pytest's default import mode puts
it on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaProducer
from kafka_io import end_offsets, produce_events
from test_crash_and_outages import (
    Run,
    Runs,
    Stream,
    assert_same_alerts,
    assert_same_models,
    create_topics,
    delete_prefix,
    delete_topics,
    dump_models,
    dump_state,
    group_members,
    merge,
    read_alerts,
    scenario_events,
    state_diff,
    stored_offsets,
    wait_done,
    wait_until,
)
from test_crash_and_outages import run_config as _run_config

pytestmark = [pytest.mark.stack, pytest.mark.slow]

PARTITIONS = 6
INSTANCES = 3
# Wall-clock seconds over which the ~4,300 events (8 hours of event time) are produced.
PACE_S = float(os.environ.get("FAULTS_SCALE_PACE_S", "50"))
REPEAT = int(os.environ.get("FAULTS_SCALE_REPEAT", "1"))


# -------------------------------------------------------------------- helpers --


def run_config(t: Stream, group: str, prefix: str, alerts: Path, **over: Any) -> dict[str, Any]:
    base = _run_config(t, group, prefix, alerts)
    scale = {
        # The writer's lease lapses soon after it dies: the next one continues at once.
        "models": {"lease_ttl_s": 5.0},
        "kafka": {"session_timeout_ms": 4000, "heartbeat_interval_ms": 500},
    }
    return merge(merge(base, scale), over)


def pid_of(owner: bytes | None) -> int | None:
    """Owner ids are ``host:pid:random`` (detector/app.py owner_id)."""
    return int(owner.decode().split(":")[-2]) if owner else None


class PacedProducer(threading.Thread):
    """Sends the events in order, spread evenly over ``seconds`` of wall clock."""

    def __init__(self, bootstrap: str, topic: str, events: list[dict[str, Any]], seconds: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.seconds = bootstrap, topic, events, seconds
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            p = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
            try:
                t0 = time.monotonic()
                step = self.seconds / len(self.events)
                for i, ev in enumerate(self.events):
                    lag = t0 + i * step - time.monotonic()
                    if lag > 0:
                        p.flush()
                        time.sleep(lag)
                    p.send(self.topic, key=ev["order_id"].encode(), value=orjson.dumps(ev))
                    self.sent += 1
                p.flush(timeout=60)
            finally:
                p.close()
        except BaseException as e:  # reported by the test
            self.error = e


@dataclass
class Watch:
    """Samples the lease owner and which processes export model scores, twice a second."""

    r: redis.Redis
    lease_key: str
    runs: list[Run]
    owners: list[int | None] = field(default_factory=list)
    exporters: list[tuple[int, ...]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(redis.RedisError):
                self.owners.append(pid_of(self.r.get(self.lease_key)))
            live = [x for x in self.runs if x.alive()]
            exporting = tuple(
                x.proc.pid
                for x in live
                if any(k.startswith("detector_model_score{") for k in x.metrics())
            )
            self.exporters.append(exporting)
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


# --------------------------------------------------------------- fixtures --


@pytest.fixture(scope="module")
def day(stack: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    return scenario_events()


@pytest.fixture(scope="module")
def topics(stack: Any) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"test-scale-{uuid.uuid4().hex[:8]}"
        create_topics(stack.kafka_bootstrap, {name: PARTITIONS})
        made.append(name)
        return name

    yield make
    delete_topics(stack.kafka_bootstrap, made)


@dataclass
class Reference:
    state: dict[str, dict[str, float]]
    alerts: list[dict[str, Any]]
    models: dict[str, bytes]


@pytest.fixture(scope="module")
def reference(
    stack: Any,
    day: tuple[list[dict[str, Any]], dict[str, str]],
    topics: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Reference]:
    """One process over the whole stream, pre-loaded in the 6 partitions."""
    events, campaigns = day
    name = topics()
    n = produce_events(stack.kafka_bootstrap, name, events)
    t = Stream(
        stack.kafka_bootstrap,
        stack.redis_url,
        name,
        n,
        end_offsets(stack.kafka_bootstrap, name),
        campaigns,
    )
    workdir = tmp_path_factory.mktemp("scale-ref")
    prefix = f"test:scale-ref:{uuid.uuid4().hex[:8]}:"
    group = f"ref-{name}"
    r = redis.Redis.from_url(stack.redis_url, socket_timeout=10)
    runs = Runs(workdir)
    alerts = workdir / "alerts.jsonl"
    try:
        run = runs.start("reference", runs.config("ref", run_config(t, group, prefix, alerts)))
        wait_done(r, prefix, group, t, [run], timeout=240)
        assert run.stop() == 0, run.tail()
        ref = Reference(dump_state(r, prefix), read_alerts(alerts), dump_models(r, prefix))
        assert ref.alerts
        yield ref
    finally:
        runs.close()
        delete_prefix(r, prefix)
        r.close()


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    rs = Runs(tmp_path)
    yield rs
    rs.close()


# --------------------------------------------------------------------- tests --


def start_group(
    runs: Runs, t: Stream, group: str, prefix: str, tmp_path: Path
) -> tuple[list[Run], list[Path]]:
    """Three instances, started together; returns once the group is stable with all three."""
    procs, files = [], []
    for i in range(INSTANCES):
        alerts = tmp_path / f"alerts-{i}.jsonl"
        cfg = runs.config(f"i{i}", run_config(t, group, prefix, alerts))
        procs.append(runs.start(f"instance{i}", cfg))
        files.append(alerts)

    def stable() -> bool:
        return len(group_members(t.bootstrap, group)) == INSTANCES

    wait_until(stable, 90, f"{INSTANCES} members in the group", procs, every=0.5)
    time.sleep(2.0)  # the last join's rebalance settles (assignments, seeks)
    return procs, files


def union_alerts(files: list[Path]) -> tuple[list[dict[str, Any]], int]:
    """Every instance's alert records, once per (alert_id, status); and how many were repeated.

    The outbox is shared: two instances delivering at the same moment may both send a record
    (at-least-once delivery; sinks and consumers are idempotent on (alert_id, status)).
    """
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    total = 0
    for f in files:
        for a in read_alerts(f):
            total += 1
            seen.setdefault((a["alert_id"], a["status"]), a)
    return list(seen.values()), total - len(seen)


def check_models(
    r: redis.Redis, prefix: str, watch: Watch, record: Callable[[str, object], None], tag: str
) -> set[int]:
    snaps = [k.decode() for k in r.hkeys(f"{prefix}m")]
    assert any(s.startswith("rate:") for s in snaps), snaps
    assert any(s.startswith("ratio:") for s in snaps), snaps
    assert "__clock__" in snaps, snaps
    owners = {o for o in watch.owners if o is not None}
    assert owners, "no instance ever held the models' lease"
    multi = [e for e in watch.exporters if len(e) > 1]
    exporters = Counter(p for e in watch.exporters for p in e)
    print(f"[faults] {tag}.lease_owners (pids over time) = {sorted(owners)}")
    print(f"[faults] {tag}.model_score_exporters (pid: samples) = {dict(exporters)}")
    record(f"{tag}.lease_owners", len(owners))
    assert not multi, f"detector_model_score exported by several processes at once: {multi[:5]}"
    return owners


def assert_same_as_reference(
    r: redis.Redis,
    prefix: str,
    files: list[Path],
    reference: Reference,
    tag: str,
    record: Callable[[str, object], None],
) -> None:
    """CONTRACT §4: the same episodes (detected_at within a bucket), state and models."""
    got, repeated = union_alerts(files)
    print(f"[faults] {tag}.alert_records = {len(got)}, delivered twice = {repeated}")
    worst = assert_same_alerts(got, reference.alerts, f"{tag}: 3 instances vs 1")
    print(f"[faults] {tag}.detected_at_max_diff_s = {worst}")
    record(f"{tag}.detected_at_max_diff_s", worst)
    diffs = state_diff(dump_state(r, prefix), reference.state)
    assert not diffs, f"{tag}: state of 3 instances vs 1: {len(diffs)} differences: {diffs[:10]}"
    assert_same_models(dump_models(r, prefix), reference.models, f"{tag}: 3 instances")


def test_three_instances_raise_the_same_alerts_as_one_with_one_model_writer(
    reference: Reference,
    day: tuple[list[dict[str, Any]], dict[str, str]],
    topics: Callable[[], str],
    stack: Any,
    runs: Runs,
    redis_client: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    events, campaigns = day
    name = topics()
    t = Stream(stack.kafka_bootstrap, stack.redis_url, name, len(events), {}, campaigns)
    group = f"scale-{name}"
    procs, files = start_group(runs, t, group, redis_prefix, tmp_path)
    watch = Watch(redis_client, f"{redis_prefix}lease:models", procs)
    watch.start()
    producer = PacedProducer(t.bootstrap, name, events, PACE_S)
    t0 = time.monotonic()
    producer.start()
    try:
        producer.join(PACE_S + 120)
        assert producer.error is None and producer.sent == len(events), producer.error
        t.ends = end_offsets(t.bootstrap, name)
        wait_done(redis_client, redis_prefix, group, t, procs, timeout=180)
    finally:
        watch.stop()
    seconds = time.monotonic() - t0
    for x in procs:
        assert x.stop() == 0, x.tail()
    record_property("scale.seconds", round(seconds, 1))
    print(f"[faults] scale.three_instances_seconds = {seconds:.1f} (paced over {PACE_S:.0f} s)")

    owners = check_models(redis_client, redis_prefix, watch, record_property, "scale")
    assert len(owners) == 1, f"the models' lease changed hands without a fault: {owners}"
    assert_same_as_reference(redis_client, redis_prefix, files, reference, "scale", record_property)


@pytest.mark.parametrize("attempt", range(REPEAT))
def test_three_instances_through_a_backlog_raise_the_same_alerts_as_one(
    attempt: int,
    reference: Reference,
    day: tuple[list[dict[str, Any]], dict[str, str]],
    topics: Callable[[], str],
    stack: Any,
    runs: Runs,
    redis_client: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    events, campaigns = day
    name = topics()
    t = Stream(stack.kafka_bootstrap, stack.redis_url, name, len(events), {}, campaigns)
    group = f"scale-backlog-{name}"
    procs, files = start_group(runs, t, group, redis_prefix, tmp_path)
    t0 = time.monotonic()
    produce_events(t.bootstrap, name, events)
    t.ends = end_offsets(t.bootstrap, name)
    wait_done(redis_client, redis_prefix, group, t, procs, timeout=240)
    seconds = time.monotonic() - t0
    for x in procs:
        assert x.stop() == 0, x.tail()
    tag = f"scale_backlog[{attempt}]"
    print(f"[faults] {tag}.seconds = {seconds:.1f}")
    record_property(f"{tag}.seconds", round(seconds, 1))
    assert_same_as_reference(redis_client, redis_prefix, files, reference, tag, record_property)


def test_instances_joining_while_the_first_drains_a_backlog_apply_every_event_once(
    reference: Reference,
    day: tuple[list[dict[str, Any]], dict[str, str]],
    topics: Callable[[], str],
    stack: Any,
    runs: Runs,
    redis_client: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """The rebalances land while the first instance has batches polled ahead of its pipeline:
    those are dropped and fetched again by the partitions' owners, so the state, alerts and
    models are those of one instance (nothing lost, nothing applied twice)."""
    events, campaigns = day
    name = topics()
    n = produce_events(stack.kafka_bootstrap, name, events)
    t = Stream(
        stack.kafka_bootstrap,
        stack.redis_url,
        name,
        n,
        end_offsets(stack.kafka_bootstrap, name),
        campaigns,
    )
    group = f"scale-join-{name}"
    procs: list[Run] = []
    files: list[Path] = []

    def start(i: int) -> None:
        alerts = tmp_path / f"alerts-{i}.jsonl"
        # Tiny polls: the first instance is hundreds of batches from the end when others join.
        cfg = run_config(t, group, redis_prefix, alerts, kafka={"max_poll_records": 5})
        procs.append(runs.start(f"instance{i}", runs.config(f"i{i}", cfg)))
        files.append(alerts)

    start(0)
    wait_until(lambda: procs[0].consumed() > 0, 90, "the first instance consuming", procs)
    for i in range(1, INSTANCES):
        start(i)
    wait_until(
        lambda: len(group_members(t.bootstrap, group)) == INSTANCES,
        90,
        f"{INSTANCES} members in the group",
        procs,
        every=0.2,
    )
    at_join = procs[0].consumed()
    wait_done(redis_client, redis_prefix, group, t, procs, timeout=240)
    for x in procs:
        assert x.stop() == 0, x.tail()
    print(f"[faults] scale_join.first_instance_events_at_join = {at_join:.0f} of {n}")
    record_property("scale_join.first_instance_events_at_join", at_join)
    assert at_join < n, "the backlog was drained before the others joined: no rebalance mid-way"
    assert_same_as_reference(
        redis_client, redis_prefix, files, reference, "scale_join", record_property
    )


def test_killing_the_model_writer_mid_stream_rebalances_and_keeps_the_same_alerts(
    reference: Reference,
    day: tuple[list[dict[str, Any]], dict[str, str]],
    topics: Callable[[], str],
    stack: Any,
    runs: Runs,
    redis_client: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    events, campaigns = day
    name = topics()
    t = Stream(stack.kafka_bootstrap, stack.redis_url, name, len(events), {}, campaigns)
    group = f"scale-kill-{name}"
    procs, files = start_group(runs, t, group, redis_prefix, tmp_path)
    watch = Watch(redis_client, f"{redis_prefix}lease:models", procs)
    watch.start()
    producer = PacedProducer(t.bootstrap, name, events, PACE_S)
    producer.start()
    lease = f"{redis_prefix}lease:models"
    try:
        wait_until(
            lambda: (
                sum(stored_offsets(redis_client, redis_prefix, group, name, PARTITIONS).values())
                >= 0.4 * len(events)
            ),
            PACE_S + 120,
            "40 % applied",
            procs,
            every=0.1,
        )
        writer = wait_until(
            lambda: pid_of(redis_client.get(lease)), 30, "a models' writer", procs, every=0.05
        )
        victim = next(x for x in procs if x.proc.pid == writer)
        at = sum(stored_offsets(redis_client, redis_prefix, group, name, PARTITIONS).values())
        t_kill = time.monotonic()
        victim.kill()
        survivors = [x for x in procs if x is not victim]
        wait_until(
            lambda: len(group_members(t.bootstrap, group)) == INSTANCES - 1,
            60,
            "the rebalance without the killed instance",
            survivors,
            every=0.25,
        )
        rebalance_s = time.monotonic() - t_kill
        wait_until(
            lambda: pid_of(redis_client.get(lease)) not in (None, writer),
            60,
            "another instance to take the models' lease",
            survivors,
            every=0.1,
        )
        takeover_s = time.monotonic() - t_kill
        producer.join(PACE_S + 120)
        assert producer.error is None and producer.sent == len(events), producer.error
        t.ends = end_offsets(t.bootstrap, name)
        wait_done(redis_client, redis_prefix, group, t, survivors, timeout=180)
    finally:
        watch.stop()
    for x in survivors:
        assert x.stop() == 0, x.tail()
    print(f"[faults] scale_kill.killed_writer_at_applied = {at} of {len(events)}")
    print(
        f"[faults] scale_kill.rebalance_s = {rebalance_s:.1f}, lease_takeover_s = {takeover_s:.1f}"
    )
    record_property("scale_kill.rebalance_s", round(rebalance_s, 1))
    record_property("scale_kill.lease_takeover_s", round(takeover_s, 1))

    owners = check_models(redis_client, redis_prefix, watch, record_property, "scale_kill")
    assert writer in owners and len(owners) == 2, owners
    got, repeated = union_alerts(files)
    print(f"[faults] scale_kill.alert_records = {len(got)}, delivered twice = {repeated}")
    diffs = state_diff(dump_state(redis_client, redis_prefix), reference.state)
    assert not diffs, f"state after the kill vs 1 instance: {len(diffs)} differences: {diffs[:10]}"
    # Buckets closed by the new writer while the killed instance's partitions waited for the
    # rebalance were learned without their events (each instance closes buckets by its own
    # clock): the snapshots' contents may differ, not the buckets learned.
    got_models = dump_models(redis_client, redis_prefix)
    same = got_models == reference.models
    print(f"[faults] scale_kill.model_snapshots_identical = {same}")
    assert_same_models(got_models, reference.models, "3 instances, writer killed", exact=False)
    worst = assert_same_alerts(got, reference.alerts, "3 instances, writer killed, vs 1")
    print(f"[faults] scale_kill.detected_at_max_diff_s = {worst}")


def test_an_instance_that_lost_the_models_lease_stops_exporting_model_scores(
    day: tuple[list[dict[str, Any]], dict[str, str]],
    topics: Callable[[], str],
    stack: Any,
    runs: Runs,
    redis_client: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    """The writer stalls (SIGSTOP) past its lease, another takes the models over; once it runs
    again, only the lease's owner exports ``detector_model_score``."""
    events, campaigns = day
    name = topics()
    t = Stream(stack.kafka_bootstrap, stack.redis_url, name, len(events), {}, campaigns)
    group = f"lease-{name}"
    procs = []
    for i in range(2):
        cfg = run_config(
            t, group, redis_prefix, tmp_path / f"alerts-{i}.jsonl", models={"lease_ttl_s": 2.0}
        )
        procs.append(runs.start(f"instance{i}", runs.config(f"i{i}", cfg)))
    wait_until(lambda: len(group_members(t.bootstrap, group)) == 2, 90, "2 members", procs)
    produce_events(t.bootstrap, name, events)
    t.ends = end_offsets(t.bootstrap, name)
    wait_done(redis_client, redis_prefix, group, t, procs, timeout=240)
    lease = f"{redis_prefix}lease:models"

    def exporters() -> list[int]:
        return [
            x.proc.pid
            for x in procs
            if any(k.startswith("detector_model_score{") for k in x.metrics())
        ]

    writer = pid_of(redis_client.get(lease))
    assert exporters() == [writer]
    victim = next(x for x in procs if x.proc.pid == writer)
    other = next(x for x in procs if x is not victim)
    victim.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: pid_of(redis_client.get(lease)) == other.proc.pid,
            60,
            "the other instance to take the models' lease",
            [other],
        )
    finally:
        victim.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: exporters() == [other.proc.pid], 30, "one exporter: the lease's owner")
    time.sleep(3.0)  # and it stays so
    assert exporters() == [other.proc.pid]
    assert pid_of(redis_client.get(lease)) == other.proc.pid
    for x in procs:
        assert x.stop() == 0, x.tail()
