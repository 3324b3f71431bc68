"""Fault injection on the real stack: crashes, a Redis outage, a Kafka restart.

Every test runs `detector run` over one pre-loaded simulated stream (an 8-hour day with a leak of
personal codes, a few thousand events over several partitions) and compares what it leaves behind
with an uninterrupted run over the same messages (the ``reference``: its own consumer group and
Redis key prefix):

- the windowed Redis state (families ``k: u: v: a: g: gc: gm: o: cv: dr:``; hashes and sorted
  sets, floats with a tolerance): every effect applied exactly once;
- the models' snapshots and their clock (every closed bucket learned once; values up to float
  noise);
- the set of alert episodes ``(rule, key, status)``, ``detected_at`` within one bucket.

1. ``detector run`` SIGKILLed 10 times at seeded random points (mid-batch, mid-recovery, during
   start-up) and restarted each time; no alert record twice in the alerts file, and duplicates on
   the alerts topic (allowed: at-least-once) byte-identical.
2. Redis stopped (SIGTERM, AOF written) for 60 s mid-stream: consumption stalls instead of
   dropping, ``detector_store_up`` is 0, the log says so, and it resumes on its own. Then Redis
   SIGKILLed and restarted from its AOF, and made to miss its last writes (as after a host crash
   with ``appendfsync everysec``): the detector re-applies exactly what was lost. Both on a Redis
   of the test's own (same stack.sh and redis.conf, its own port), not the shared one.
3. The Kafka broker restarted mid-stream: the detector reconnects and resumes from the offsets
   stored with its state.

The Kafka test restarts the broker other test runs share (about 10 s): it is started again in a
``finally``. The tests run serially. Figures are printed (``-s`` or ``-rP``) and recorded as junit
properties. ``FAULTS_KILL_SEED`` picks other kill points.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import TopicPartition
from kafka_io import end_offsets, produce_events
from state_dump import dump_state

from detector.simulate.scenario import ScenarioParams, generate

pytestmark = [pytest.mark.stack, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / ".venv" / "bin" / "detector"
BUCKET_S = 60.0
PARTITIONS = 3
# The comparisons are about the messages, not about how long a process idled after them: the
# wall clock neither advances the watermark nor lets a quiet partition stop holding it back.
NO_WALL_CLOCK = {"events": {"idle_advance_s": 3600, "idle_partition_s": 3600}}


# -------------------------------------------------------------------- helpers --


def scenario_events() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """An 8-hour day at 0.3 scale with one leak after a 6-hour warm-up (~4,300 events)."""
    sc = generate(
        ScenarioParams.from_seed(
            3,
            hours=8.0,
            warmup_h=6.0,
            scale=0.3,
            incidents=("leak",),
            benign=(),
            declared=True,
        )
    )
    assert [i.kind for i in sc.truth] == ["leak"], sc.dropped
    return list(sc.events), dict(sc.campaigns)


def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_topics(bootstrap: str, names: Mapping[str, int]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pytest-faults")
    try:
        admin.create_topics([NewTopic(n, p, 1) for n, p in names.items()], wait_for_metadata=True)
    finally:
        admin.close()


def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    names = list(names)
    if not names:
        return
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="pytest-faults", bootstrap_timeout_ms=5000
        )
        try:
            admin.delete_topics(names, raise_errors=False)
        finally:
            admin.close()
    except Exception as exc:  # best effort: a fault test may have left Kafka down
        print(f"could not delete topics {names}: {exc}")


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every record of ``topic`` up to its current end offsets."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = sorted(c.partitions_for_topic(topic) or set())
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        ends = c.end_offsets(tps)
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while any(c.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for msgs in c.poll(timeout_ms=500).values():
                out.extend(msgs)
        return out
    finally:
        c.close()


def group_members(bootstrap: str, group: str) -> list[Any]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pytest-faults")
    try:
        return list(admin.describe_groups([group])[group]["members"])
    finally:
        admin.close()


def stored_offsets(
    r: redis.Redis, prefix: str, group: str, topic: str, partitions: int = PARTITIONS
) -> dict[int, int]:
    """The offsets `detector run` stored with its state (the authoritative ones)."""
    raw = r.mget([f"{prefix}off:kafka:{group}:{topic}:{p}" for p in range(partitions)])
    return {p: int(v) for p, v in enumerate(raw) if v is not None}


def applied(r: redis.Redis, prefix: str, group: str, topic: str) -> int:
    return sum(stored_offsets(r, prefix, group, topic).values())


def state_diff(got: dict[str, dict[str, float]], want: dict[str, dict[str, float]]) -> list[Any]:
    """Differences between two dumps (keys, fields/members, values beyond float noise)."""
    diffs: list[Any] = [("missing key", k) for k in sorted(set(want) - set(got))]
    diffs += [("extra key", k) for k in sorted(set(got) - set(want))]
    for key in sorted(set(want) & set(got)):
        a, b = got[key], want[key]
        if set(a) != set(b):
            diffs.append(("fields", key, sorted(set(a) ^ set(b))[:5]))
            continue
        diffs += [
            ("value", key, f, b[f], a[f])
            for f in sorted(b)
            if not math.isclose(a[f], b[f], rel_tol=1e-9, abs_tol=1e-6)
        ]
    return diffs


def assert_same_state(
    got: dict[str, dict[str, float]], want: dict[str, dict[str, float]], what: str
) -> None:
    assert want, f"{what}: the reference state is empty"
    diffs = state_diff(got, want)
    assert not diffs, f"{what}: {len(diffs)} differences, e.g. {diffs[:10]}"


def dump_models(r: redis.Redis, prefix: str) -> dict[str, bytes]:
    """The models' snapshots and their clock (the last bucket they learned)."""
    return {k.decode(): v for k, v in r.hgetall(f"{prefix}m").items()}


def _decode_model(name: str, blob: bytes) -> Any:
    if name.startswith("rate:"):
        return json.loads(zlib.decompress(blob))
    return json.loads(blob)


def _close(a: Any, b: Any) -> bool:
    """Equal up to float noise: counters summed by HINCRBYFLOAT in other groupings (slices cut
    elsewhere after a restart or a rewind) differ in their last bits."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and (math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return bool(a == b)


def assert_same_models(
    got: dict[str, bytes], want: dict[str, bytes], what: str, exact: bool = True
) -> None:
    """The single writer learned every closed bucket once, in order: the same snapshots.

    ``exact=False``: only as many buckets learned per campaign (none skipped or learned twice),
    for runs where a bucket may be closed before every partition's events for it were applied.
    """
    assert want, f"{what}: the reference persisted no models"
    diffs = []
    for name in sorted(set(got) | set(want)):
        a, b = got.get(name), want.get(name)
        if a == b:
            continue
        if a is None or b is None:
            diffs.append(f"{name} {'missing' if a is None else 'extra'}")
            continue
        da, db = _decode_model(name, a), _decode_model(name, b)
        if name.startswith("rate:") and da["n"] != db["n"]:
            diffs.append(f"{name}: {da['n']} buckets learned, not {db['n']}")
        elif exact and not _close(da, db):
            diffs.append(f"{name}: {str(da)[:80]} vs {str(db)[:80]}")
    assert not diffs, f"{what}: model snapshots differ: {diffs}"


def read_alerts(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def episodes(alerts: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], list[float]]:
    """(rule, key, status) -> sorted detected_at (epoch seconds) of each record."""
    out: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for a in alerts:
        out[(a["rule"], a["key"], a["status"])].append(epoch(a["detected_at"]))
    return {k: sorted(v) for k, v in out.items()}


def assert_same_alerts(got: list[dict[str, Any]], want: list[dict[str, Any]], what: str) -> float:
    """CONTRACT §4: same (rule, key, status) episodes, detected_at within one bucket.

    Returns the largest detected_at difference (seconds).
    """
    g, w = episodes(got), episodes(want)
    assert set(g) == set(w), (
        f"{what}: episodes only here: {sorted(set(g) - set(w))}; "
        f"only in the reference: {sorted(set(w) - set(g))}"
    )
    worst = 0.0
    for k in w:
        assert len(g[k]) == len(w[k]), f"{what}: {k}: {len(g[k])} vs {len(w[k])} records"
        for a, b in zip(g[k], w[k], strict=True):
            worst = max(worst, abs(a - b))
    assert worst <= BUCKET_S, f"{what}: detected_at {worst:.0f} s from the reference's"
    return worst


def unique_pairs(alerts: list[dict[str, Any]], what: str) -> None:
    pairs = [(a["alert_id"], a["status"]) for a in alerts]
    twice = sorted({p for p in pairs if pairs.count(p) > 1})
    assert not twice, f"{what}: records written more than once: {twice}"


# ------------------------------------------------------------ detector runs --


@dataclass
class Run:
    """One `detector run` subprocess."""

    name: str
    config: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=3) as r:
                body = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def consumed(self) -> float:
        """Records this process counted (ok + dead letter + late + duplicate)."""
        m = self.metrics()
        return sum(v for k, v in m.items() if k.startswith("detector_events_total{"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: a clean stop finishes its batch and exits 0."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()


class Runs:
    """Starts `detector run` processes; whatever is left is killed by ``close``."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.all: list[Run] = []

    def config(self, name: str, cfg: Mapping[str, Any]) -> Path:
        path = self.dir / f"{name}.yaml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        return path

    def start(self, name: str, config: Path, timeout: float = 60.0) -> Run:
        port = json.loads(config.read_text())["metrics"]["port"]
        log = self.dir / f"{name}-{len(self.all)}.log"
        with log.open("wb") as f:
            proc = subprocess.Popen(
                [str(DETECTOR), "run", "--config", str(config)], stdout=f, stderr=subprocess.STDOUT
            )
        run = Run(name, config, port, log, proc)
        self.all.append(run)
        wait_until(run.metrics, timeout, "the metrics endpoint", [run])
        return run

    def close(self) -> None:
        for run in self.all:
            run.kill()


def wait_until(
    pred: Callable[[], Any], timeout: float, what: str, runs: Iterable[Run] = (), every: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    runs = list(runs)
    while True:
        out = pred()
        if out:
            return out
        for run in runs:
            if not run.alive():
                raise AssertionError(
                    f"{run.name} exited with {run.proc.returncode} while waiting for {what}:\n"
                    + run.tail()
                )
        if time.monotonic() >= deadline:
            tails = "\n".join(f"--- {r.name}:\n{r.tail(1500)}" for r in runs)
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
        time.sleep(every)


def run_config(
    stream: Stream, group: str, prefix: str, alerts_path: Path, **over: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "state": "redis",
        "kafka": {
            "bootstrap_servers": stream.bootstrap,
            "group_id": group,
            "topics": {
                "events": stream.topic,
                "dead_letters": f"{stream.topic}.dlq",
                "alerts": f"{stream.topic}.alerts",
            },
            # Small polls: many batches, so that faults land between and inside them.
            "max_poll_records": 100,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        "redis": {
            "url": stream.redis_url,
            "key_prefix": prefix,
            "socket_timeout_s": 2.0,
            "retry_backoff_max_s": 1.0,
        },
        "campaigns": {c: {"kind": k} for c, k in stream.campaigns.items()},
        "metrics": {"port": free_port()},
        "alerts": {"kafka": False, "jsonl_path": str(alerts_path)},
        # A restarted process takes the models' lease over at once.
        "models": {"lease_ttl_s": 0.5},
        "logging": {"level": "info"},
    }
    return merge(merge(cfg, NO_WALL_CLOCK), over)


def wait_done(
    r: redis.Redis, prefix: str, group: str, stream: Stream, runs: Iterable[Run], timeout: float
) -> None:
    """Every message applied (stored offsets at the ends), evaluated and delivered."""
    assert stream.ends, f"no end offsets for {stream.topic}"
    n = len(stream.ends)

    def done() -> bool:
        return (
            stored_offsets(r, prefix, group, stream.topic, n) == stream.ends
            and not r.exists(f"{prefix}dirty")
            and not r.hlen(f"{prefix}ob")
        )

    try:
        wait_until(done, timeout, "every message applied, evaluated and delivered", runs)
    except AssertionError as e:
        raise AssertionError(
            f"{e}\nstored offsets {stored_offsets(r, prefix, group, stream.topic, n)}, "
            f"dirty {r.smembers(f'{prefix}dirty')}, "
            f"outbox {r.hlen(f'{prefix}ob')}"
        ) from None


def delete_prefix(r: redis.Redis, prefix: str) -> None:
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        r.unlink(*keys[i : i + 500])


def report(record: Callable[[str, object], None], name: str, value: object) -> None:
    print(f"[faults] {name} = {value}")
    record(name, value)


# --------------------------------------------------------------- fixtures --


@dataclass
class Stream:
    bootstrap: str
    redis_url: str
    topic: str
    n: int
    ends: dict[int, int]
    campaigns: dict[str, str]
    extra_topics: list[str] = field(default_factory=list)

    def alerts_topic(self, tag: str) -> str:
        """A fresh one-partition alerts topic for one run (deleted with the stream)."""
        name = f"{self.topic}.{tag}.alerts"
        create_topics(self.bootstrap, {name: 1})
        self.extra_topics.append(name)
        return name


@dataclass
class Reference:
    state: dict[str, dict[str, float]]
    alerts: list[dict[str, Any]]
    models: dict[str, bytes]
    seconds: float


@pytest.fixture(scope="module")
def stream(stack: Any) -> Iterator[Stream]:
    """The simulated day, produced once to a fresh topic with several partitions."""
    events, campaigns = scenario_events()
    topic = f"test-faults-{uuid.uuid4().hex[:8]}"
    create_topics(stack.kafka_bootstrap, {topic: PARTITIONS})
    s = Stream(stack.kafka_bootstrap, stack.redis_url, topic, 0, {}, campaigns)
    try:
        s.n = produce_events(stack.kafka_bootstrap, topic, events)
        s.ends = end_offsets(stack.kafka_bootstrap, topic)
        assert sum(s.ends.values()) == s.n
        assert all(s.ends.values()), s.ends
        yield s
    finally:
        delete_topics(stack.kafka_bootstrap, [topic, *s.extra_topics])


@pytest.fixture(scope="module")
def reference(stream: Stream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    """One uninterrupted run over the stream: its state and alerts."""
    workdir = tmp_path_factory.mktemp("reference")
    prefix = f"test:faults-ref:{uuid.uuid4().hex[:8]}:"
    group = f"ref-{stream.topic}"
    r = redis.Redis.from_url(stream.redis_url, socket_timeout=10)
    runs = Runs(workdir)
    alerts = workdir / "alerts.jsonl"
    try:
        t0 = time.monotonic()
        run = runs.start("reference", runs.config("ref", run_config(stream, group, prefix, alerts)))
        wait_done(r, prefix, group, stream, [run], timeout=240)
        seconds = time.monotonic() - t0
        assert run.stop() == 0, run.tail()
        ref = Reference(dump_state(r, prefix), read_alerts(alerts), dump_models(r, prefix), seconds)
        assert ref.alerts, "the scenario should raise alerts"
        orders = sum(sum(h.values()) for k, h in ref.state.items() if k.startswith("o:"))
        assert orders == stream.n, "the reference did not count every order once"
        print(f"[faults] reference run: {stream.n} events in {seconds:.1f} s")
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


# ------------------------------------------------------------------ 1. crash --

KILLS = 10
# Another seed gives other kill points: FAULTS_KILL_SEED=7 pytest tests/faults -k sigkill
KILL_SEED = int(os.environ.get("FAULTS_KILL_SEED", "20261125"))


def test_sigkill_ten_times_then_state_and_alerts_equal_an_uninterrupted_run(
    stream: Stream,
    reference: Reference,
    runs: Runs,
    redis_client: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    group = f"crash-{stream.topic}"
    alerts_path = tmp_path / "crash-alerts.jsonl"  # one file across every restart
    alerts_topic = stream.alerts_topic("crash")
    cfg = runs.config(
        "crash",
        run_config(
            stream,
            group,
            redis_prefix,
            alerts_path,
            alerts={"kafka": True},
            kafka={
                "topics": {"alerts": alerts_topic},
                # A SIGKILLed member leaves the group after this: restarts rejoin sooner.
                "session_timeout_ms": 3000,
                "heartbeat_interval_ms": 500,
            },
        ),
    )
    # Seeded kill points: most at a share of the stream applied (plus a random delay, so the kill
    # lands anywhere in a batch: parse, claim, apply, evaluate, deliver, commit); two during
    # start-up (group join, recovery of the dirty set and the outbox, first batches).
    rng = random.Random(KILL_SEED)
    n = stream.n
    # (mode, share of the stream applied before the kill, delay before the kill): the shares
    # spread over the whole day, the leak and its alerts (the last third) included.
    plan: list[tuple[str, float, float]] = [
        ("applied", share, rng.uniform(0.0, 0.1))
        for share in sorted(rng.uniform(0.03, 0.92) for _ in range(KILLS - 2))
    ]
    for _ in range(2):
        plan.insert(rng.randrange(0, len(plan)), ("startup", 0.0, rng.uniform(0.1, 1.0)))
    log: list[str] = []
    t0 = time.monotonic()
    for i, (mode, share, delay) in enumerate(plan):
        run = runs.start(f"crash{i}", cfg)
        if mode == "applied":
            target = int(share * n)
            wait_until(
                lambda t=target: applied(redis_client, redis_prefix, group, stream.topic) >= t,
                180,
                f"{target} of {n} applied",
                [run],
                every=0.02,
            )
        time.sleep(delay)
        at = applied(redis_client, redis_prefix, group, stream.topic)
        run.kill()
        after = applied(redis_client, redis_prefix, group, stream.topic)
        assert after < n, f"kill {i + 1} came after the end of the stream ({after} of {n})"
        log.append(f"{mode}:{at}")
        # As a supervisor's restart delay would: the next process joins once the killed member
        # has left the group (session timeout), so that it is given every partition at once.
        wait_until(
            lambda: not group_members(stream.bootstrap, group),
            30,
            "the killed member to leave the group",
            every=0.25,
        )
    last = runs.start("crash-final", cfg)
    wait_done(redis_client, redis_prefix, group, stream, [last], timeout=240)
    assert last.stop() == 0, last.tail()
    seconds = time.monotonic() - t0

    report(record_property, "crash.kills", KILLS)
    report(record_property, "crash.kill_points_applied", " ".join(log))
    report(record_property, "crash.seconds_total", round(seconds, 1))

    assert_same_state(
        dump_state(redis_client, redis_prefix),
        reference.state,
        f"state after {KILLS} SIGKILLs + restarts vs uninterrupted",
    )
    assert_same_models(dump_models(redis_client, redis_prefix), reference.models, "crashes")
    got = read_alerts(alerts_path)
    unique_pairs(got, "alerts file across restarts")
    worst = assert_same_alerts(got, reference.alerts, f"alerts after {KILLS} SIGKILLs")
    report(record_property, "crash.alert_records", len(got))
    report(record_property, "crash.detected_at_max_diff_s", worst)

    # The alerts topic is at-least-once: a crash between the send and the outbox acknowledgement
    # sends the record again on restart. A re-sent record must be the identical bytes (consumers
    # dedupe on key + status).
    by_pair: dict[tuple[bytes, str], list[bytes]] = defaultdict(list)
    for rec in read_topic(stream.bootstrap, alerts_topic):
        by_pair[(rec.key, orjson.loads(rec.value)["status"])].append(rec.value)
    resent = 0
    for (key, status), values in by_pair.items():
        assert len(set(values)) == 1, f"{key!r} {status}: re-sent records differ: {values}"
        resent += len(values) - 1
    assert {(k.decode(), s) for k, s in by_pair} == {(a["alert_id"], a["status"]) for a in got}
    report(record_property, "crash.alerts_topic_resent_identical", resent)


# ------------------------------------------------------------ 2. Redis down --

# The Redis outages are inflicted on a Redis of this test's own: the same stack.sh, binary and
# deploy/redis/redis.conf (AOF, appendfsync everysec) on a port and state directory of its own
# (stack.sh's REDIS_PORT and STACK_DIR). Stopping the shared Redis for a minute broke every other
# run using it, and once let another checkout's `stack.sh up` take its port meanwhile, so that it
# could not be started again.


@dataclass
class OwnRedis:
    url: str
    client: redis.Redis
    env: dict[str, str]
    stack_sh: Callable[..., subprocess.CompletedProcess[str]]

    def sh(self, command: str) -> None:
        self.stack_sh(command, "redis", env=self.env)


@pytest.fixture
def own_redis(
    stack_sh: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> Iterator[OwnRedis]:
    port = free_port()
    env = {"REDIS_PORT": str(port), "STACK_DIR": str(tmp_path / "stack")}
    stack_sh("up", "redis", env=env)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        yield OwnRedis(url, client, env, stack_sh)
    finally:
        client.close()
        stack_sh("down", "redis", env=env, check=False)


OUTAGE_S = 60.0


def test_redis_stopped_60s_stalls_consumption_then_resumes_with_correct_state(
    stream: Stream,
    reference: Reference,
    runs: Runs,
    own_redis: OwnRedis,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    group = f"redis-stop-{stream.topic}"
    alerts_path = tmp_path / "alerts.jsonl"
    redis_client, redis_prefix = own_redis.client, "faults:"
    cfg = runs.config(
        "redis-stop",
        run_config(stream, group, redis_prefix, alerts_path, redis={"url": own_redis.url}),
    )
    run = runs.start("redis-stop", cfg)
    n = stream.n
    wait_until(
        lambda: applied(redis_client, redis_prefix, group, stream.topic) >= 0.3 * n,
        180,
        "30 % applied",
        [run],
        every=0.05,
    )
    samples: list[tuple[float, float, float | None]] = []  # (t since stop, consumed, store_up)
    try:
        own_redis.sh("stop")
        t_down = time.monotonic()
        while (el := time.monotonic() - t_down) < OUTAGE_S:
            m = run.metrics()
            ate = sum(v for k, v in m.items() if k.startswith("detector_events_total{"))
            samples.append((el, ate, m.get("detector_store_up")))
            assert run.alive(), run.tail()
            time.sleep(1.0)
    finally:
        own_redis.sh("start")
    t_up = time.monotonic()
    outage = t_up - t_down
    # Past the batch that was in flight, nothing more is counted while Redis is down.
    settled = [s for s in samples if s[0] >= 5.0]
    assert settled, samples
    stalled_at = settled[0][1]
    assert all(c == stalled_at for _, c, _ in settled), f"consumed while Redis was down: {samples}"
    assert stalled_at < n
    assert all(up == 0 for *_, up in settled), f"detector_store_up not 0 while down: {samples}"
    text = run.log.read_text(errors="replace")
    said = "not consuming until it is back" in text or "state store unavailable" in text
    assert said, text[-2000:]

    wait_until(lambda: run.consumed() > stalled_at, 60, "consumption to resume", [run], every=0.1)
    resumed_s = time.monotonic() - t_up
    wait_done(redis_client, redis_prefix, group, stream, [run], timeout=240)
    assert run.metrics().get("detector_store_up") == 1
    assert run.stop() == 0, run.tail()

    report(record_property, "redis_stop.outage_s", round(outage, 1))
    report(record_property, "redis_stop.consumed_when_stalled", int(stalled_at))
    report(record_property, "redis_stop.resumed_after_restart_s", round(resumed_s, 1))
    assert_same_state(
        dump_state(redis_client, redis_prefix), reference.state, "state after a 60 s Redis outage"
    )
    assert_same_models(dump_models(redis_client, redis_prefix), reference.models, "Redis outage")
    got = read_alerts(alerts_path)
    unique_pairs(got, "alerts file")
    assert_same_alerts(got, reference.alerts, "alerts after a 60 s Redis outage")


def store_calls(run: Run) -> float:
    """State-store operations the process has made (every loop makes some)."""
    m = run.metrics()
    return sum(
        v for k, v in m.items() if k.startswith("detector_store_operation_duration_seconds_count")
    )


def test_redis_down_during_a_rebalance_waits_for_redis_instead_of_exiting(
    stream: Stream,
    reference: Reference,
    runs: Runs,
    own_redis: OwnRedis,
    tmp_path: Path,
) -> None:
    """The survivor's assignment callback finds Redis stopped: it waits, then takes over."""
    group = f"rebalance-{stream.topic}"
    redis_client, redis_prefix = own_redis.client, "faults:"

    def config(name: str, **over: Any) -> Path:
        alerts = tmp_path / f"{name}.jsonl"
        return runs.config(
            name,
            run_config(stream, group, redis_prefix, alerts, redis={"url": own_redis.url}, **over),
        )

    # The survivor polls for 20 s when idle: it is inside poll(), where kafka-python calls the
    # rebalance listener, for most of the outage.
    survivor = runs.start("survivor", config("survivor", kafka={"poll_timeout_ms": 20_000}))
    victim = runs.start("victim", config("victim"))
    wait_until(lambda: len(group_members(stream.bootstrap, group)) == 2, 60, "2 members")
    wait_done(redis_client, redis_prefix, group, stream, [survivor, victim], timeout=240)
    # Right after the survivor's loop touched the store, it is back in a 20 s poll.
    calls = store_calls(survivor)
    wait_until(lambda: store_calls(survivor) > calls, 30, "a loop", [survivor], every=0.02)
    log_at = len(survivor.log.read_bytes())
    try:
        own_redis.sh("stop")
        victim.kill()
        wait_until(lambda: len(group_members(stream.bootstrap, group)) == 1, 30, "the rebalance")
        time.sleep(8.0)  # the assignment callback retries against the stopped Redis
        assert survivor.alive(), survivor.tail()
    finally:
        own_redis.sh("start")
    during = survivor.log.read_bytes()[log_at:].decode(errors="replace")
    assert "partitions revoked" in during and "state store unavailable; retrying" in during
    wait_until(
        lambda: "partitions assigned" in survivor.log.read_bytes()[log_at:].decode(),
        60,
        "the assignment to complete once Redis is back",
        [survivor],
    )
    assert survivor.metrics().get("detector_store_up") == 1
    assert survivor.stop() == 0, survivor.tail()
    assert_same_state(
        dump_state(redis_client, redis_prefix), reference.state, "state after the rebalance"
    )


# Atomic snapshot and restore of one key prefix (every key of this test, nobody else's): with it,
# the restarted Redis is made to have lost this test's last writes, as a Redis that restarts
# without its last second of AOF (appendfsync everysec, a host crash) would. A SIGKILLed
# redis-server alone loses nothing acknowledged: it wrote the AOF to the page cache before
# replying.
_SNAPSHOT_LUA = """
local out = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  out[#out + 1] = k
  out[#out + 1] = tostring(redis.call('PTTL', k))
  out[#out + 1] = redis.call('DUMP', k)
end
return out
"""
_RESTORE_LUA = """
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end
for i = 2, #ARGV, 3 do
  local ttl = tonumber(ARGV[i + 1])
  if ttl < 0 then ttl = 0 end
  redis.call('RESTORE', ARGV[i], ttl, ARGV[i + 2], 'REPLACE')
end
return 1
"""


def test_redis_killed_restarted_from_aof_and_missing_its_last_writes_resumes_correctly(
    stream: Stream,
    reference: Reference,
    runs: Runs,
    own_redis: OwnRedis,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    group = f"redis-kill-{stream.topic}"
    alerts_path = tmp_path / "alerts.jsonl"
    redis_client, redis_prefix = own_redis.client, "faults:"
    cfg = runs.config(
        "redis-kill",
        run_config(stream, group, redis_prefix, alerts_path, redis={"url": own_redis.url}),
    )
    run = runs.start("redis-kill", cfg)
    n = stream.n

    def progress() -> int:
        return applied(redis_client, redis_prefix, group, stream.topic)

    # The lost writes span the leak's first alert (code_shared, at ~66 % of the stream): it is
    # decided and delivered, lost with the rest, decided again, and not written twice.
    wait_until(lambda: progress() >= 0.6 * n, 180, "60 % applied", [run], every=0.02)
    snap = redis_client.eval(_SNAPSHOT_LUA, 0, f"{redis_prefix}*")
    rolled_back_to = progress()  # (a few records later than the snapshot, at most)
    wait_until(lambda: progress() >= 0.72 * n, 180, "72 % applied", [run], every=0.02)
    before = progress()
    try:
        own_redis.sh("kill")  # SIGKILL mid-write: no shutdown, the AOF is what survives
        t_down = time.monotonic()
        time.sleep(3.0)
        assert run.alive(), run.tail()
    finally:
        own_redis.sh("start")  # replays the AOF (aof-load-truncated yes)
    outage = time.monotonic() - t_down
    redis_client.connection_pool.disconnect()
    in_aof = progress()
    # ... and without this test's writes since the snapshot (the detector may have reconnected
    # already: then its next write finds offsets it did not write, and it re-syncs).
    redis_client.eval(_RESTORE_LUA, 0, f"{redis_prefix}*", *snap)
    wait_done(redis_client, redis_prefix, group, stream, [run], timeout=240)
    assert run.metrics().get("detector_store_up") == 1
    assert run.stop() == 0, run.tail()

    report(record_property, "redis_kill.outage_s", round(outage, 1))
    report(record_property, "redis_kill.applied_before_kill", before)
    report(record_property, "redis_kill.applied_in_aof_after_restart", in_aof)
    report(record_property, "redis_kill.applied_after_losing_last_writes", rolled_back_to)
    assert in_aof >= before, "an acknowledged write was not in the AOF"
    assert_same_state(
        dump_state(redis_client, redis_prefix),
        reference.state,
        "state after Redis SIGKILL + AOF restart without the last writes",
    )
    assert_same_models(dump_models(redis_client, redis_prefix), reference.models, "Redis SIGKILL")
    got = read_alerts(alerts_path)
    unique_pairs(got, "alerts file")
    assert_same_alerts(got, reference.alerts, "alerts after Redis SIGKILL + lost writes")


# ------------------------------------------------------------ 3. Kafka down --


def test_kafka_restart_mid_stream_resumes_from_stored_offsets_nothing_lost_or_doubled(
    stream: Stream,
    reference: Reference,
    runs: Runs,
    redis_client: redis.Redis,
    redis_prefix: str,
    stack_sh: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    group = f"kafka-restart-{stream.topic}"
    alerts_path = tmp_path / "alerts.jsonl"
    alerts_topic = stream.alerts_topic("kafka")
    cfg = runs.config(
        "kafka-restart",
        run_config(
            stream,
            group,
            redis_prefix,
            alerts_path,
            alerts={"kafka": True},
            kafka={"topics": {"alerts": alerts_topic}},
        ),
    )
    run = runs.start("kafka-restart", cfg)
    n = stream.n
    wait_until(
        lambda: applied(redis_client, redis_prefix, group, stream.topic) >= 0.3 * n,
        180,
        "30 % applied",
        [run],
        every=0.05,
    )
    at = applied(redis_client, redis_prefix, group, stream.topic)
    t0 = time.monotonic()
    try:
        stack_sh("restart", "kafka")
    finally:
        stack_sh("start", "kafka")  # no-op when the restart went through
    restart_s = time.monotonic() - t0
    mid = applied(redis_client, redis_prefix, group, stream.topic)
    t_up = time.monotonic()
    wait_until(
        lambda: applied(redis_client, redis_prefix, group, stream.topic) > mid or mid == n,
        120,
        "progress after the broker restart",
        [run],
        every=0.1,
    )
    resumed_s = time.monotonic() - t_up
    wait_done(redis_client, redis_prefix, group, stream, [run], timeout=240)
    assert run.stop() == 0, run.tail()

    report(record_property, "kafka_restart.broker_restart_s", round(restart_s, 1))
    report(record_property, "kafka_restart.applied_at_restart", at)
    report(record_property, "kafka_restart.applied_when_broker_back", mid)
    report(record_property, "kafka_restart.progress_after_broker_back_s", round(resumed_s, 1))
    assert_same_state(
        dump_state(redis_client, redis_prefix), reference.state, "state after a Kafka restart"
    )
    assert_same_models(dump_models(redis_client, redis_prefix), reference.models, "Kafka restart")
    got = read_alerts(alerts_path)
    unique_pairs(got, "alerts file")
    assert_same_alerts(got, reference.alerts, "alerts after a Kafka restart")
    topic_pairs = {
        (rec.key.decode(), orjson.loads(rec.value)["status"])
        for rec in read_topic(stream.bootstrap, alerts_topic)
    }
    assert topic_pairs == {(a["alert_id"], a["status"]) for a in got}, "alerts topic lost records"
