"""Throughput, latency and memory of the detector on the real stack (Kafka + Redis).

    python -m bench.run [--smoke] [--only NAMES] [--out bench/results/perf.json]
                        [--soak-minutes N] [--profile DIR]

One run: starts the stack if needed, generates one simulator stream, loads it into a fresh
6-partition topic, and measures on the same events (see bench/README.md for the method):

  ceiling   bare kafka-python consumer, detector's consumer settings, json.loads per message
  run       `detector run` end to end (Kafka + Redis), until detector_events_total = N
  replay    `detector replay` of the same events as a file, embedded store
  quix      a Quix Streams app: group_by code, tumbling window, distinct accounts per code
  latency   fixed produce rate, event ts = now, p50/p99 produce-to-decision of `detector run`
  growth    events/s, Redis memory and RSS with 1k/100k/1M codes (private Redis) + drain
  soak      (optional, --soak-minutes) fixed rate for N minutes: RSS and Redis memory over time
  profile   (optional, --profile DIR) py-spy of `detector replay` and `detector run`

Rates are events per second from the first event processed to the last (start-up and the
consumer group join excluded; both are reported too). Compare ratios within one run: the
machine is shared.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from bench import memory
from bench.memory import (
    PY,
    REPO,
    PrivateRedis,
    free_port,
    peak_rss_bytes,
    rss_bytes,
    wait_child,
)

STACK_SH = REPO / "deploy" / "local" / "stack.sh"
DETECTOR = REPO / ".venv" / "bin" / "detector"
KAFKA = f"127.0.0.1:{os.environ.get('KAFKA_PORT', '29092')}"
REDIS_URL = f"redis://127.0.0.1:{os.environ.get('REDIS_PORT', '26379')}/0"
DEFAULT_OUT = REPO / "bench" / "results" / "perf.json"
SECTIONS = (
    "growth",
    "ceiling",
    "run",
    "run_scaled",
    "replay",
    "quix",
    "latency",
    "soak",
    "profile",
)
DEFAULT_SECTIONS = ("growth", "ceiling", "run", "run_scaled", "replay", "quix", "latency")


@dataclass(frozen=True)
class Params:
    events: int
    seed: int
    gen_hours: float
    gen_scale: float
    gen_start: str
    partitions: int
    latency_rate: int
    latency_seconds: int
    latency_warmup_seconds: int
    growth_pools: tuple[int, ...]
    growth_measure: int
    drain_codes: int
    soak_minutes: float
    soak_rate: int


FULL = Params(
    events=300_000,
    seed=11,
    gen_hours=1.0,
    gen_scale=100.0,
    gen_start="2026-01-12T14:00:00Z",
    partitions=6,
    latency_rate=5000,
    latency_seconds=180,
    latency_warmup_seconds=15,
    growth_pools=(1_000, 100_000, 1_000_000),
    growth_measure=50_000,
    drain_codes=100_000,
    soak_minutes=0,
    soak_rate=5000,
)
SMOKE = Params(
    events=20_000,
    seed=11,
    gen_hours=0.5,
    gen_scale=25.0,
    gen_start="2026-01-12T14:00:00Z",
    partitions=6,
    latency_rate=1000,
    latency_seconds=20,
    latency_warmup_seconds=5,
    growth_pools=(1_000, 20_000),
    growth_measure=10_000,
    drain_codes=20_000,
    soak_minutes=0,
    soak_rate=1000,
)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------- stack --


def _stack_answers() -> bool:
    try:
        c = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        c.ping()
        c.close()
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=KAFKA, bootstrap_timeout_ms=3000, request_timeout_ms=3000
        )
        try:
            return bool(admin.describe_cluster().get("brokers"))
        finally:
            admin.close()
    except Exception:
        return False


def ensure_stack() -> None:
    if _stack_answers():
        return
    say("stack not answering: deploy/local/stack.sh up")
    subprocess.run([str(STACK_SH), "up"], check=True, stdin=subprocess.DEVNULL)
    if not _stack_answers():
        raise SystemExit("stack.sh up finished but Kafka/Redis still do not answer")


class Topics:
    """Topics this run creates; every name holds the run id, so all are found and deleted."""

    def __init__(self, run_id: str) -> None:
        from kafka.admin import KafkaAdminClient

        self.run_id = run_id
        self.admin = KafkaAdminClient(bootstrap_servers=KAFKA, client_id=f"bench-{run_id}")

    def create(self, name: str, partitions: int) -> str:
        self.admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1, "configs": {}}},
            wait_for_metadata=True,
        )
        return name

    def cleanup(self) -> None:
        try:
            mine = [t for t in self.admin.list_topics() if self.run_id in t]
            if mine:
                self.admin.delete_topics(mine, raise_errors=False)
        except Exception as e:
            say(f"could not delete topics: {e}")
        finally:
            self.admin.close()


def stack_pids() -> dict[str, str]:
    """Kafka's and Redis's PIDs (stack.sh status): a change means another user restarted them
    during a measurement (fault-injection tests share the stack)."""
    try:
        out = subprocess.run(
            [str(STACK_SH), "status"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    pids = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] in ("kafka", "redis"):
            pids[parts[0]] = f"{parts[1]}:{parts[3]}"
    return pids


def delete_prefix(url: str, prefix: str) -> int:
    c = redis.Redis.from_url(url, socket_timeout=30)
    n = 0
    try:
        batch: list[bytes] = []
        for key in c.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 2000:
                n += int(c.unlink(*batch))
                batch.clear()
        if batch:
            n += int(c.unlink(*batch))
    finally:
        c.close()
    return n


# --------------------------------------------------------------------------------- stream --


def generate_events(p: Params, path: Path) -> dict[str, Any]:
    """The simulator's baseline traffic (no incidents), dense: ``scale`` high, few hours."""
    import itertools

    from detector.simulate.scenario import ScenarioParams, generate, write_jsonl

    sp = ScenarioParams.from_seed(
        p.seed,
        hours=p.gen_hours,
        scale=p.gen_scale,
        start=p.gen_start,
        incidents=(),
        benign=(),
    )
    t0 = time.perf_counter()
    sc = generate(sp)
    n = write_jsonl(itertools.islice(sc.events, p.events), path)
    if n < p.events:
        raise SystemExit(f"the simulator made only {n} events; raise gen_hours or gen_scale")
    with_code = 0
    first = last = ""
    with path.open("rb") as f:
        for line in f:
            ev = orjson.loads(line)
            if ev.get("promo_code"):
                with_code += 1
            first = first or ev["ts"]
            last = ev["ts"]
    return {
        "events": n,
        "with_promo_code": with_code,
        "first_ts": first,
        "last_ts": last,
        "span_s": round(_ts(last) - _ts(first), 1),
        "events_per_event_minute": round(n / max(1e-9, (_ts(last) - _ts(first)) / 60.0), 1),
        "generate_seconds": round(time.perf_counter() - t0, 1),
        "simulator": {
            "seed": p.seed,
            "hours": p.gen_hours,
            "scale": p.gen_scale,
            "start": p.gen_start,
            "incidents": [],
            "benign": [],
        },
    }


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _producer(linger_ms: int) -> Any:
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": KAFKA,
            "linger.ms": linger_ms,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "enable.idempotence": True,
        }
    )


def load_topic(topic: str, path: Path) -> dict[str, Any]:
    """Produce every line, keyed by order_id like `detector simulate --kafka-topic`."""
    prod = _producer(20)
    errors = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors[0] += 1

    t0 = time.perf_counter()
    n = 0
    with path.open("rb") as f:
        for line in f:
            value = line.rstrip(b"\n")
            key = orjson.loads(value)["order_id"].encode()
            while True:
                try:
                    prod.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    prod.poll(0.05)
            n += 1
            if n % 10000 == 0:
                prod.poll(0)
    prod.flush(120)
    if errors[0]:
        raise RuntimeError(f"{errors[0]} messages failed to load into {topic}")
    return {"topic": topic, "messages": n, "seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------- detector ---


def detector_config(
    workdir: Path,
    name: str,
    topic: str,
    group: str,
    prefix: str,
    redis_url: str = REDIS_URL,
    windows: dict[str, Any] | None = None,
    events: dict[str, Any] | None = None,
) -> Path:
    from detector.config import KafkaConfig

    d = KafkaConfig()
    cfg: dict[str, Any] = {
        "state": "redis",
        "kafka": {
            "bootstrap_servers": KAFKA,
            "group_id": group,
            "client_id": group,
            "topics": {
                "events": topic,
                "dead_letters": f"{topic}.dlq",
                "alerts": f"{topic}.alerts",
            },
            # the defaults, spelled out: the ceiling uses the very same
            "max_poll_records": d.max_poll_records,
            "fetch_max_bytes": d.fetch_max_bytes,
            "max_partition_fetch_bytes": d.max_partition_fetch_bytes,
        },
        "redis": {"url": redis_url, "key_prefix": prefix},
        "metrics": {"port": free_port()},
        "alerts": {"jsonl_path": str(workdir / f"{name}-alerts.jsonl"), "kafka": True},
        "logging": {"level": "info"},
    }
    if windows:
        cfg["windows"] = windows
    if events:
        cfg["events"] = events
    path = workdir / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    return path


class Detector:
    """A `detector run` subprocess (optionally profiled by py-spy attached to it)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.port = json.loads(config.read_text())["metrics"]["port"]
        self.log = log
        self._lf = log.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(DETECTOR), "run", "--config", str(config)],
            stdout=self._lf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.peak_rss = 0
        self.wait_for(lambda: self.samples() is not None, 60, "the metrics endpoint")

    def samples(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                body = r.read().decode()
        except OSError:
            return None
        out: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def events_total(self) -> float:
        m = self.samples() or {}
        return sum(v for k, v in m.items() if k.startswith("detector_events_total{"))

    def histogram(self, name: str) -> dict[float, float]:
        m = self.samples() or {}
        out: dict[float, float] = {}
        pre = f'{name}_bucket{{le="'
        for k, v in m.items():
            if k.startswith(pre):
                le = k[len(pre) : k.index('"', len(pre))]
                out[float("inf") if le == "+Inf" else float(le)] = v
        return out

    def wait_for(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            r = pred()
            if r:
                return r
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"detector exited ({self.proc.returncode}) waiting for {what}:\n"
                    + self.log.read_text()[-3000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out waiting for {what}:\n" + self.log.read_text()[-3000:]
                )
            time.sleep(0.2)

    def assigned(self) -> bool:
        return "partitions assigned" in self.log.read_text(errors="replace")

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None and self.proc.returncode is None:
            self.peak_rss = peak_rss_bytes(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                wait_child(self.proc, 60)
        self._lf.close()
        return self.proc.returncode if self.proc.returncode is not None else -1


# ------------------------------------------------------------------------------- sections --


def _worker_cmd(kind: str, **kw: Any) -> list[str]:
    return [str(PY), "-m", "bench.run", "--worker", kind, "--worker-args", json.dumps(kw)]


def _run_json_worker(cmd: list[str], out: Path, timeout: float) -> dict[str, Any]:
    return memory.run_json_worker(cmd, out, timeout, " ".join(cmd[3:5]))


def section_ceiling(ctx: Ctx) -> dict[str, Any]:
    out = ctx.workdir / "ceiling.json"
    res = _run_json_worker(
        _worker_cmd(
            "ceiling",
            topic=ctx.topic,
            n=ctx.n,
            group=f"bench-{ctx.run_id}-ceiling{ctx.tag}",
            out=str(out),
        ),
        out,
        600,
    )
    return res


def section_run(ctx: Ctx) -> dict[str, Any]:
    return _drain(ctx, "run", 1)


def section_run_scaled(ctx: Ctx) -> dict[str, Any]:
    """As many `detector run` instances as cores, in one consumer group over one state: how the
    detector scales past one process's GIL (docs/operations.md, several instances).

    The instances join an empty copy of the topic and the events are produced once the group is
    stable: on the loaded topic the first instance would drain alone while the others start,
    and a rebalance would pause them all mid-measurement."""
    topic = ctx.topics.create(f"bench-{ctx.run_id}-orders-scaled{ctx.tag}", ctx.p.partitions)
    return _drain(ctx, "run_scaled", os.cpu_count() or 1, topic)


def _stable(ds: list[Detector], quiet_s: float = 2.0, timeout: float = 120) -> None:
    """Until every instance has partitions and no assignment happened for ``quiet_s``."""

    def count() -> list[int]:
        return [d.log.read_text(errors="replace").count("partitions assigned") for d in ds]

    seen, since = count(), time.monotonic()
    deadline = since + timeout
    while min(seen) == 0 or time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the group did not settle: assignments per instance {seen}")
        time.sleep(0.2)
        now = count()
        if now != seen:
            seen, since = now, time.monotonic()


def _drain(ctx: Ctx, name: str, instances: int, empty_topic: str | None = None) -> dict[str, Any]:
    """`instances` detectors drain the topic; events/s from the first event seen to the last.

    With ``empty_topic``, they consume it and the events are loaded into it once they settled."""
    prefix = f"bench:{ctx.run_id}:{name}{ctx.tag}:"
    ctx.prefixes.append(prefix)
    group = f"bench-{ctx.run_id}-{name}{ctx.tag}"
    topic = empty_topic or ctx.topic
    ds: list[Detector] = []
    try:
        for i in range(instances):
            cfg = detector_config(ctx.workdir, f"{name}{ctx.tag}-{i}", topic, group, prefix)
            ds.append(Detector(cfg, ctx.workdir / f"{name}-{i}.log"))
        if empty_topic:
            _stable(ds)
            load_topic(empty_topic, ctx.events_path)
        t_start = ds[0].started
        first: tuple[float, float] | None = None
        deadline = time.monotonic() + 1800
        while True:
            total = sum(d.events_total() for d in ds)
            now = time.monotonic()
            if first is None and total > 0:
                first = (now, total)
            if total >= ctx.n:
                break
            if any(d.proc.poll() is not None for d in ds) or now > deadline:
                logs = "\n".join(d.log.read_text()[-3000:] for d in ds)
                raise RuntimeError(f"detector run did not drain:\n{logs}")
            time.sleep(0.2)
        assert first is not None
        done = (now, total)
        ms = [d.samples() or {} for d in ds]
        rss = [d.rss() for d in ds]
    finally:
        rcs = [d.stop() for d in ds]
    rate = (done[1] - first[1]) / (done[0] - first[0]) if done[0] > first[0] else 0.0
    outcomes: dict[str, float] = {}
    for m in ms:
        for k, v in m.items():
            if k.startswith("detector_events_total{"):
                outcome = k.split('"')[1]
                outcomes[outcome] = outcomes.get(outcome, 0) + v
    return {
        "instances": instances,
        "events": int(done[1]),
        "events_per_s": round(rate),
        "seconds_first_to_drained": round(done[0] - first[0], 2),
        "seconds_start_to_drained": round(done[0] - t_start, 2),
        "events_per_s_from_process_start": round(ctx.n / (done[0] - t_start)),
        "outcomes": outcomes,
        "alerts": int(
            sum(v for m in ms for k, v in m.items() if k.startswith("detector_alerts_total{"))
        ),
        "rss_at_drain": sum(rss),
        "peak_rss": sum(d.peak_rss for d in ds),
        "exit_code": max(rcs),
        "note": "rate from the first metrics poll (every 0.2 s) showing events to the one "
        "showing all N; counters move when a slice's state and offsets are stored in Redis"
        + ("; RSS summed over the instances" if instances > 1 else ""),
    }


def section_replay(ctx: Ctx) -> dict[str, Any]:
    cfg = memory.write_config(
        ctx.workdir / "replay.yaml",
        {"state": "memory", "alerts": {"kafka": False}, "logging": {"level": "warning"}},
    )
    res = memory.run_worker(cfg, "memory", [ctx.events_path], ctx.workdir / "replay.json")
    f = res["files"][0]
    return {
        "events": f["records"],
        "events_per_s": round(f["events_per_s"]),
        "seconds": round(f["seconds"], 2),
        "steady_events_per_s": round(f.get("steady_events_per_s", 0.0)),
        "alerts": f["alerts"],
        "late": f["late"],
        "rss_before": res["rss_start"],
        "rss_after": f["rss_after"],
        "peak_rss": res["peak_rss"],
        "note": "in a fresh interpreter: detector.app.replay(cfg, path, alerts_out=None, "
        "backend='memory'), timed around the call (file reading included, imports not)",
    }


def section_quix(ctx: Ctx) -> dict[str, Any]:
    out = ctx.workdir / "quix.json"
    state = Path(tempfile.mkdtemp(prefix=f"pdperf-quix-{ctx.run_id}-", dir="/tmp"))
    try:
        res = _run_json_worker(
            _worker_cmd(
                "quix",
                topic=ctx.topic,
                n=ctx.n,
                n_code=ctx.stream["with_promo_code"],
                grace_s=int(ctx.stream["span_s"]) + 600,
                group=f"bench-{ctx.run_id}-quix{ctx.tag}",
                state_dir=str(state),
                out=str(out),
            ),
            out,
            1200,
        )
    finally:
        import shutil

        shutil.rmtree(state, ignore_errors=True)
    return res


def _quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """histogram_quantile over the bucket deltas (linear inside a bucket, like Prometheus)."""
    les = sorted(after)
    cum = [after[le] - before.get(le, 0.0) for le in les]
    total = cum[-1] if cum else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, cum, strict=True):
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return les[-2] if len(les) > 1 else None


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    i = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[i]


class _OffsetPoller:
    """Polls the offsets the detector stores in Redis with its state (own latency measure)."""

    def __init__(self, url: str, keys: list[str], every: float = 0.05) -> None:
        self.r = redis.Redis.from_url(url, socket_timeout=5)
        self.keys = keys
        self.every = every
        self.times: list[float] = []
        self.offsets: list[list[int]] = [[] for _ in keys]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, name="offset-poller", daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                vals = self.r.mget(self.keys)
            except redis.RedisError:
                vals = [None] * len(self.keys)
            t = time.time()
            self.times.append(t)
            for i, v in enumerate(vals):
                self.offsets[i].append(int(v) if v is not None else 0)
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.r.close()

    def decided_at(self, partition: int, offset: int) -> float | None:
        """Wall time of the first poll showing the stored next offset past ``offset``."""
        offs = self.offsets[partition]
        i = bisect.bisect_right(offs, offset)
        return self.times[i] if i < len(self.times) else None


def steady(
    ctx: Ctx,
    name: str,
    rate: int,
    seconds: float,
    warmup: float,
    redis_url: str,
    windows: dict[str, Any] | None = None,
    events: dict[str, Any] | None = None,
    sample_every: float = 10.0,
    redis_memory: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Produce at ``rate`` events/s with ts = now while `detector run` consumes."""
    name = f"{name}{ctx.tag}"
    topic = ctx.topics.create(f"bench-{ctx.run_id}-{name}", ctx.p.partitions)
    group = f"bench-{ctx.run_id}-{name}"
    prefix = f"bench:{ctx.run_id}:{name}:"
    if redis_url == REDIS_URL:
        ctx.prefixes.append(prefix)
    cfg = detector_config(ctx.workdir, name, topic, group, prefix, redis_url, windows, events)
    d = Detector(cfg, ctx.workdir / f"{name}.log")
    poller: _OffsetPoller | None = None
    try:
        d.wait_for(d.assigned, 60, "partition assignment")
        source = f"kafka:{group}:{topic}"
        poller = _OffsetPoller(
            redis_url, [f"{prefix}off:{source}:{p}" for p in range(ctx.p.partitions)]
        )
        prod = _producer(5)
        delivered: list[tuple[int, int, int]] = []
        failed = [0]
        # own measure on at most ~1M records (a long soak samples every k-th delivery)
        keep_every = max(1, int(rate * seconds) // 1_000_000)
        n_delivered = [0]

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                failed[0] += 1
                return
            n_delivered[0] += 1
            if n_delivered[0] % keep_every == 0:
                delivered.append((msg.partition(), msg.offset(), msg.timestamp()[1]))

        templates = ctx.lines
        tag = uuid.uuid4().int & 0xFFFFFFFF
        progress = ctx.workdir / f"{name}-samples.jsonl"
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        t_measure = t0 + warmup
        t_end = t_measure + seconds
        next_sample = t0
        hist0: dict[float, float] | None = None
        consumed0 = 0.0
        sent = 0
        sent_at_measure = 0
        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            if hist0 is None and now >= t_measure:
                hist0 = d.histogram("detector_decision_lag_seconds")
                consumed0 = d.events_total()
                sent_at_measure = sent
                w_measure = time.time()
            if now >= next_sample:
                s = {
                    "t_s": round(now - t0, 1),
                    "rss": d.rss(),
                    "sent": sent,
                    "consumed": d.events_total(),
                }
                if redis_memory is not None:
                    s.update(redis_memory())
                samples.append(s)
                with progress.open("a") as pf:  # survives a killed run
                    pf.write(json.dumps(s) + "\n")
                next_sample += sample_every
            due = int((now - t0) * rate)
            wall = time.time()
            ts = memory.fmt_ts(wall)
            while sent < due:
                ev = orjson.loads(templates[sent % len(templates)])
                ev["event_id"] = memory.uuid_like(tag, sent)
                ev["order_id"] = str(500_000_000 + sent)
                ev["ts"] = ts
                try:
                    prod.produce(
                        topic,
                        value=orjson.dumps(ev),
                        key=ev["order_id"].encode(),
                        on_delivery=on_delivery,
                    )
                except BufferError:
                    prod.poll(0.01)
                    continue
                sent += 1
            prod.poll(0)
            time.sleep(0.002)
        hist1 = d.histogram("detector_decision_lag_seconds")
        consumed1 = d.events_total()
        w_end = time.time()
        prod.flush(60)
        t_stop = time.monotonic()
        d.wait_for(lambda: d.events_total() >= sent, 300, f"{sent} events consumed")
        drain_s = time.monotonic() - t_stop
        final = {
            "t_s": round(time.monotonic() - t0, 1),
            "rss": d.rss(),
            "sent": sent,
            "consumed": d.events_total(),
        }
        if redis_memory is not None:
            final.update(redis_memory())
        samples.append(final)
        time.sleep(max(0.0, 2 * poller.every))
    finally:
        if poller is not None:
            poller.stop()
        rc = d.stop()
    assert hist0 is not None
    # own measure: produce timestamp (librdkafka CreateTime) to the stored-offset poll
    lags: list[float] = []
    undecided = 0
    for part, off, ts_ms in delivered:
        t_prod = ts_ms / 1000.0
        if not (w_measure <= t_prod < w_end):
            continue
        t_dec = poller.decided_at(part, off)
        if t_dec is None:
            undecided += 1
        else:
            lags.append(max(0.0, t_dec - t_prod))
    lags.sort()
    achieved = (consumed1 - consumed0) / seconds
    out = {
        "rate_target": rate,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "produced": sent,
        "produced_in_window": sent - sent_at_measure,
        "consumed_rate_in_window": round(achieved),
        "failed_sends": failed[0],
        "drain_after_stop_s": round(drain_s, 2),
        "histogram": {
            "p50_s": _r(_quantile(0.5, hist0, hist1)),
            "p99_s": _r(_quantile(0.99, hist0, hist1)),
            "share_le_1s": _r(_share_le(1.0, hist0, hist1)),
            "count": hist1.get(float("inf"), 0.0) - hist0.get(float("inf"), 0.0),
        },
        "offset_poll": {
            "p50_s": _r(_pct(lags, 0.5)),
            "p99_s": _r(_pct(lags, 0.99)),
            "max_s": _r(lags[-1] if lags else float("nan")),
            "count": len(lags),
            "sampled_every": keep_every,
            "undecided": undecided,
        },
        "rss_start": samples[0]["rss"] if samples else 0,
        "rss_end": final["rss"],
        "peak_rss": d.peak_rss,
        "samples": samples,
        "exit_code": rc,
        "windows": windows or "defaults",
    }
    return out


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or x != x else round(x, nd)


def _share_le(le: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    tot = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    if tot <= 0 or le not in after:
        return None
    return (after[le] - before.get(le, 0.0)) / tot


def redis_state(pr: PrivateRedis, base: int) -> dict[str, Any]:
    """State size and how far Redis's active expiry lags (stale = expired, not yet reclaimed)."""
    stats = pr.client.info("stats")
    return {
        "redis_used_memory": pr.used_memory() - base,
        "redis_keys": pr.dbsize(),
        "redis_expired_keys": int(stats.get("expired_keys", 0)),
        "redis_expired_stale_perc": float(stats.get("expired_stale_perc", 0.0)),
    }


def section_latency(ctx: Ctx) -> dict[str, Any]:
    # A private Redis: 5k events/s leave ~1M dedupe claims (~200 MB) in 3 minutes, too much for
    # the shared 512 MB instance, and fault tests restart the shared one now and then.
    pr = PrivateRedis(ctx.workdir)
    try:
        base = pr.used_memory()
        res = steady(
            ctx,
            "lat",
            ctx.p.latency_rate,
            ctx.p.latency_seconds,
            ctx.p.latency_warmup_seconds,
            pr.url,
            sample_every=max(5.0, ctx.p.latency_seconds / 6),
            redis_memory=lambda: redis_state(pr, base),
        )
    finally:
        pr.stop()
    res["redis"] = "private redis-server (deploy/redis/redis.conf); default windows"
    res["note"] = (
        "histogram: detector_decision_lag_seconds (record timestamp = librdkafka produce time "
        "-> after the slice's rules ran), bucket deltas over the window, interpolated inside "
        "buckets; offset_poll: the same produce time -> first 50 ms poll of the offsets the "
        "detector stores in Redis with the slice's state (before the rules run)"
    )
    return res


SOAK_WINDOWS = {
    "bucket_s": 60,
    "recent_s": 120,
    "short_s": 300,
    "long_s": 600,
    "memory_s": 600,
    "campaign_memory_s": 600,
    "household_s": 600,
}
SOAK_EVENTS = {"allowed_lateness_s": 60}


def section_soak(ctx: Ctx) -> dict[str, Any]:
    pr = PrivateRedis(ctx.workdir)
    try:
        base = pr.used_memory()
        minutes = ctx.p.soak_minutes
        res = steady(
            ctx,
            "soak",
            ctx.p.soak_rate,
            minutes * 60,
            30,
            pr.url,
            windows=SOAK_WINDOWS,
            events=SOAK_EVENTS,
            sample_every=30.0,
            redis_memory=lambda: redis_state(pr, base),
        )
    finally:
        pr.stop()
    res["redis"] = "private redis-server (deploy/redis/redis.conf); state = used_memory - empty"
    res.update(judge_soak(res["samples"]))
    return res


# Soak windows: retention 780 s; dedupe horizon 660 s, and a claim is kept up to 1.25 horizons
# and deleted a slice (a quarter horizon) at a time: the state is at its steady size from
# 1.5 horizons on.
SOAK_STEADY_FROM_S = 1.5 * 660.0


def judge_soak(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth of Redis state and RSS between the first steady-state sample and the last."""
    later = [s for s in samples if s["t_s"] >= SOAK_STEADY_FROM_S]
    out: dict[str, Any] = {
        "steady_after_s": SOAK_STEADY_FROM_S,
        "note": "windows shortened (long 600 s, memory 600 s, lateness 60 s: retention 780 s, "
        "dedupe horizon 660 s, claims kept up to 825 s and dropped per 165 s slice) so that "
        "state reaches its steady size inside the soak; growth is judged from 990 s",
    }
    if len(later) >= 2:
        a, b = later[0], later[-1]
        out["steady_growth"] = {
            "from_t_s": a["t_s"],
            "to_t_s": b["t_s"],
            "redis_state_from": a["redis_used_memory"],
            "redis_state_to": b["redis_used_memory"],
            "redis_growth_pct": round(
                100 * (b["redis_used_memory"] / a["redis_used_memory"] - 1), 1
            ),
            "redis_keys_from": a.get("redis_keys"),
            "redis_keys_to": b.get("redis_keys"),
            "redis_expired_stale_perc_to": b.get("redis_expired_stale_perc"),
            "rss_from": a["rss"],
            "rss_to": b["rss"],
            "rss_growth_pct": round(100 * (b["rss"] / a["rss"] - 1), 1),
        }
    return out


def section_growth(ctx: Ctx) -> dict[str, Any]:
    res, pr, mon = memory.growth(
        ctx.workdir,
        list(ctx.p.growth_pools),
        ctx.p.growth_measure,
        ctx.p.drain_codes,
        ctx.p.seed,
        log=say,
    )
    ctx.pending_drain = (res, pr, mon)
    return res


def section_profile(ctx: Ctx) -> dict[str, Any]:
    pyspy = REPO / ".venv" / "bin" / "py-spy"
    if not pyspy.exists():
        return {"skipped": "py-spy not installed (make venv installs the dev extras)"}
    pdir = ctx.profile_dir or (ctx.workdir / "profile")
    pdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"dir": str(pdir), "sampler": "py-spy record --rate 100 (on-CPU)"}
    # replay, embedded store
    cfg = memory.write_config(
        ctx.workdir / "prof-replay.yaml",
        {"state": "memory", "alerts": {"kafka": False}, "logging": {"level": "warning"}},
    )
    raw = pdir / "replay.pyspy.txt"
    wrap = [str(pyspy), "record", "--rate", "100", "--format", "raw", "-o", str(raw), "--"]
    memory.run_worker(cfg, "memory", [ctx.events_path], ctx.workdir / "prof-replay.json", wrap=wrap)
    out["replay"] = summarize_pyspy(raw)
    # run, Kafka + Redis: py-spy attached while it drains the topic
    prefix = f"bench:{ctx.run_id}:prof{ctx.tag}:"
    ctx.prefixes.append(prefix)
    cfgp = detector_config(
        ctx.workdir, "prof-run", ctx.topic, f"bench-{ctx.run_id}-prof{ctx.tag}", prefix
    )
    d = Detector(cfgp, ctx.workdir / "prof-run.log")
    raw = pdir / "run.pyspy.txt"
    spy = subprocess.Popen(
        [
            str(pyspy),
            "record",
            "--rate",
            "100",
            "--format",
            "raw",
            "-o",
            str(raw),
            "--pid",
            str(d.proc.pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        d.wait_for(lambda: d.events_total() >= ctx.n, 1800, "the topic drained")
    finally:
        spy.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(60)
        d.stop()
    out["run"] = summarize_pyspy(raw)
    return out


_FRAME = re.compile(r"^(.*) \((.*?):(\d+)\)$")


def _short(path: str) -> str:
    for k in ("site-packages/", f"{REPO}/"):
        if k in path:
            return path.split(k, 1)[1]
    return path


def summarize_pyspy(raw: Path, top: int = 20) -> dict[str, Any]:
    """Self time by function and by line, and inclusive time of detector functions."""
    total = 0
    self_fn: dict[str, int] = {}
    self_line: dict[str, int] = {}
    incl: dict[str, int] = {}
    if not raw.exists():
        return {"error": f"no profile written at {raw}"}
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_s)
        total += n
        frames = []
        for fr in stack.split(";"):
            m = _FRAME.match(fr)
            frames.append((m.group(1), _short(m.group(2)), m.group(3)) if m else (fr, "?", "0"))
        fn, path, ln = frames[-1]
        k = f"{fn} ({path})"
        self_fn[k] = self_fn.get(k, 0) + n
        kl = f"{fn} ({path}:{ln})"
        self_line[kl] = self_line.get(kl, 0) + n
        seen = set()
        for fn, path, _ in frames:
            k = f"{fn} ({path})"
            if k not in seen:
                seen.add(k)
                incl[k] = incl.get(k, 0) + n

    def topn(d: dict[str, int], keep: Callable[[str], bool] = lambda _k: True) -> list[Any]:
        items = sorted(((v, k) for k, v in d.items() if keep(k)), reverse=True)[:top]
        return [[round(100 * v / total, 1), k] for v, k in items]

    return {
        "samples": total,
        "self_by_function_pct": topn(self_fn),
        "self_by_line_pct": topn(self_line),
        "inclusive_detector_pct": topn(incl, lambda k: "(detector/" in k),
    }


# ------------------------------------------------------------------------------- workers --


def worker_ceiling(a: dict[str, Any]) -> None:
    """The ceiling: the detector's consumer settings, json.loads per message, nothing else."""
    from kafka import KafkaConsumer

    from detector.config import KafkaConfig
    from detector.sources.kafka import consumer_options

    cfg = KafkaConfig(bootstrap_servers=KAFKA, group_id=a["group"], client_id=a["group"])
    t_start = time.perf_counter()
    c = KafkaConsumer(**consumer_options(cfg))
    c.subscribe([a["topic"]])
    n, target = 0, a["n"]
    first: tuple[float, int] | None = None
    loads = json.loads
    while n < target:
        polled = c.poll(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_poll_records)
        for msgs in polled.values():
            for m in msgs:
                loads(m.value)
                n += 1
        if first is None and n:
            first = (time.perf_counter(), n)
        if time.perf_counter() - t_start > 900:
            break
    t_done = time.perf_counter()
    c.close(autocommit=False)
    assert first is not None
    Path(a["out"]).write_text(
        json.dumps(
            {
                "events": n,
                "events_per_s": round((n - first[1]) / (t_done - first[0])),
                "seconds_first_to_drained": round(t_done - first[0], 2),
                "seconds_start_to_drained": round(t_done - t_start, 2),
                "events_per_s_from_start": round(n / (t_done - t_start)),
                "settings": {
                    "max_poll_records": cfg.max_poll_records,
                    "fetch_max_bytes": cfg.fetch_max_bytes,
                    "max_partition_fetch_bytes": cfg.max_partition_fetch_bytes,
                },
                "rss_end": rss_bytes(),
                "peak_rss": peak_rss_bytes(),
            }
        )
    )


def worker_quix(a: dict[str, Any]) -> None:
    """The peer: per-code distinct accounts in one-minute event-time windows, in Quix Streams.

    Records are re-keyed by promo code (``group_by``: a repartition topic), then a tumbling
    window reduces each code's accounts into a set (a JSON object); Quix's defaults otherwise
    (RocksDB state with changelog topics, at-least-once, 5 s checkpoints).
    """
    import logging
    from datetime import timedelta

    from quixstreams import Application

    n_code = a["n_code"]
    # Quix does not align partitions in event time: after the repartition a record is late
    # when any partition read before it was further ahead, so grace must cover the stream.
    grace = timedelta(seconds=a["grace_s"])
    seen = [0, 0]  # accepted into a window, late
    marks: dict[str, float] = {}

    def tick() -> None:
        k = seen[0] + seen[1]
        if k >= n_code and "done" not in marks:
            marks["done"] = time.perf_counter()
            app.stop()

    def ts_of(value: Any, _headers: Any, timestamp: int, _type: Any) -> int:
        try:
            return int(datetime.fromisoformat(value["ts"]).timestamp() * 1000)
        except (KeyError, TypeError, ValueError):
            return timestamp

    def init(v: dict[str, Any]) -> dict[str, int]:
        seen[0] += 1
        tick()
        return {v["account_id"]: 1}

    def red(agg: dict[str, int], v: dict[str, Any]) -> dict[str, int]:
        seen[0] += 1
        agg[v["account_id"]] = 1
        tick()
        return agg

    def late(*_args: Any, **_kw: Any) -> bool:
        seen[1] += 1
        tick()
        return False

    def has_code(v: dict[str, Any]) -> bool:
        if "first" not in marks:
            marks["first"] = time.perf_counter()
        return v.get("promo_code") is not None

    t_start = time.perf_counter()
    app = Application(
        broker_address=KAFKA,
        consumer_group=a["group"],
        auto_offset_reset="earliest",
        state_dir=a["state_dir"],
        loglevel=logging.WARNING,
    )
    topic = app.topic(a["topic"], value_deserializer="json", timestamp_extractor=ts_of)
    sdf = app.dataframe(topic)
    sdf = sdf.filter(has_code)
    sdf = sdf.group_by(lambda v: v["promo_code"], name="code")
    sdf = (
        sdf.tumbling_window(timedelta(minutes=1), grace_ms=grace, on_late=late)
        .reduce(red, init)
        .final()
    )
    sdf = sdf.apply(lambda w: {"start": w["start"], "accounts": len(w["value"])})
    app.run()
    t_end = time.perf_counter()
    first, done = marks.get("first"), marks.get("done")
    if first is None or done is None:
        raise SystemExit(f"quix did not drain: seen {seen}")
    Path(a["out"]).write_text(
        json.dumps(
            {
                "events": a["n"],
                "events_with_code": n_code,
                "windowed": seen[0],
                "late_dropped": seen[1],
                "events_per_s": round((a["n"] - 1) / (done - first)),
                "seconds_first_to_drained": round(done - first, 2),
                "seconds_start_to_drained": round(done - t_start, 2),
                "seconds_to_stop": round(t_end - done, 2),
                "rss_end": rss_bytes(),
                "peak_rss": peak_rss_bytes(),
                "grace_s": a["grace_s"],
                "app": "filter(has code) -> group_by(promo_code) -> tumbling_window(60 s, "
                "event time from 'ts', grace = stream span + 10 min).reduce(set of accounts)"
                ".final() -> len(set); RocksDB state + changelog topics (Quix defaults)",
                "note": "rate = (N - 1) / (first input record filtered -> every record with a "
                "code reduced into its window)",
            }
        )
    )


# ---------------------------------------------------------------------------------- main ---


# Which stack services a section depends on (growth, replay and soak use none of the shared
# ones, or only a private Redis plus Kafka).
RETRY = ("ceiling", "run", "run_scaled", "quix", "latency", "profile")
USES_STACK = {
    "ceiling": ("kafka",),
    "run": ("kafka", "redis"),
    "run_scaled": ("kafka", "redis"),
    "quix": ("kafka",),
    "latency": ("kafka",),
    "soak": ("kafka",),
    "profile": ("kafka", "redis"),
}


def run_section(name: str, fn: Callable[[Ctx], dict[str, Any]], ctx: Ctx) -> dict[str, Any]:
    """Run a section. When another user restarts a stack service it uses meanwhile (fault tests
    share the stack), a short section runs once more under fresh names and the disturbed result
    is kept under ``disturbed_attempts``; a long one (soak) is kept and flagged."""
    disturbed: list[dict[str, Any]] = []
    attempts = 2 if name in RETRY else 1
    for attempt in range(attempts):
        ctx.tag = f"-r{attempt + 1}" if attempt else ""
        say(f"section {name}" + (f" (attempt {attempt + 1})" if attempt else ""))
        pids0 = stack_pids()
        t0 = time.monotonic()
        try:
            out = fn(ctx)
        except Exception as e:
            say(f"section {name} failed: {type(e).__name__}: {e}")
            out = {"error": f"{type(e).__name__}: {e}"}
        out["section_seconds"] = round(time.monotonic() - t0, 1)
        out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        pids1 = stack_pids()
        moved = [s for s in USES_STACK.get(name, ()) if pids0.get(s) != pids1.get(s)]
        if not moved:
            break
        say(f"  WARNING: {moved} restarted by someone else during {name}: {pids0} -> {pids1}")
        out["stack_restarted_during"] = {"services": moved, "before": pids0, "after": pids1}
        if attempt + 1 < attempts:
            disturbed.append(out)
    ctx.tag = ""
    if disturbed:
        out["disturbed_attempts"] = disturbed
    return out


@dataclass
class Ctx:
    p: Params
    run_id: str
    workdir: Path
    topics: Topics
    events_path: Path
    lines: list[bytes]
    stream: dict[str, Any]
    topic: str
    n: int
    prefixes: list[str]
    profile_dir: Path | None = None
    pending_drain: Any = None
    tag: str = ""  # "" on the first attempt of a section, "-r2" on a retry: fresh names


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "loadavg_start": list(os.getloadavg()),
    }


def _ratio(a: Any, b: Any) -> float | None:
    try:
        return round(float(a) / float(b), 3)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def summarize(res: dict[str, Any], p: Params) -> None:
    s = res["sections"]

    def eps(name: str) -> Any:
        return (s.get(name) or {}).get("events_per_s")

    res["ratios"] = {
        "run_over_ceiling": _ratio(eps("run"), eps("ceiling")),
        "replay_over_ceiling": _ratio(eps("replay"), eps("ceiling")),
        "run_over_quix": _ratio(eps("run"), eps("quix")),
        "run_scaled_over_ceiling": _ratio(eps("run_scaled"), eps("ceiling")),
    }
    t: dict[str, Any] = {}
    r = res["ratios"]["run_over_ceiling"]
    if r is not None:
        t["run_ge_0.7x_ceiling"] = {"value": r, "met": r >= 0.7}
    if eps("replay") is not None:
        t["replay_ge_50k_eps"] = {"value": eps("replay"), "met": eps("replay") >= 50_000}
    lat = s.get("latency")
    if lat:
        p99 = lat["histogram"]["p99_s"]
        p99o = lat["offset_poll"]["p99_s"]
        t["p99_le_1s_at_5k_eps"] = {
            "value_histogram": p99,
            "value_offset_poll": p99o,
            "rate": lat["rate_target"],
            "consumed_rate": lat["consumed_rate_in_window"],
            "met": p99 is not None
            and p99 <= 1.0
            and lat["rate_target"] >= 5000
            and lat["consumed_rate_in_window"] >= 0.98 * lat["rate_target"],
        }
    g = s.get("growth")
    if g and g.get("pools"):
        pools = g["pools"]
        lo, hi = pools[0], pools[-1]
        rr = _ratio(hi["events_per_s"], lo["events_per_s"])
        t[f"throughput_{hi['codes']}_codes_within_20pct_of_{lo['codes']}"] = {
            "value": rr,
            "met": rr is not None and rr >= 0.8,
        }
        big = [x for x in pools if x["codes"] >= 1_000_000]
        if big:
            mb = big[0]["redis_state_bytes_after_fill"] / 1e6
            t["redis_1M_codes_le_300MB"] = {"value_mb": round(mb, 1), "met": mb <= 300}
        dr = g.get("drain")
        if dr and "drained" in dr:
            t["state_drains_after_windows"] = {"met": dr["drained"], "final_keys": dr["final_keys"]}
    soak = s.get("soak")
    if soak and "steady_growth" in soak:
        sg = soak["steady_growth"]
        t["no_growth_over_soak"] = {
            "redis_growth_pct": sg["redis_growth_pct"],
            "rss_growth_pct": sg["rss_growth_pct"],
            "met": sg["redis_growth_pct"] <= 5 and sg["rss_growth_pct"] <= 10,
        }
    res["targets"] = t


def _mb(b: Any) -> str:
    return f"{b / 1e6:.0f} MB" if isinstance(b, (int, float)) else "-"


def print_table(res: dict[str, Any]) -> None:
    s = res["sections"]
    rows = [("section", "events", "events/s", "s (first->drained)", "note")]
    for name, label in (
        ("ceiling", "1 ceiling (kafka-python + json)"),
        ("run", "2 detector run (Kafka+Redis)"),
        ("run_scaled", "2' detector run, one per core"),
        ("replay", "3 detector replay (embedded)"),
        ("quix", "4 Quix Streams peer"),
    ):
        x = s.get(name)
        if not x:
            continue
        secs = x.get("seconds_first_to_drained", x.get("seconds"))
        rows.append(
            (
                label,
                str(x.get("events")),
                str(x.get("events_per_s")),
                str(secs),
                f"peak RSS {_mb(x.get('peak_rss'))}",
            )
        )
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    print()
    for r in rows:
        print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
    ra = res["ratios"]
    print(
        f"\nratios: run/ceiling {ra['run_over_ceiling']}   replay/ceiling "
        f"{ra['replay_over_ceiling']}   run/quix {ra['run_over_quix']}   run x"
        f"{(s.get('run_scaled') or {}).get('instances')}/ceiling {ra['run_scaled_over_ceiling']}"
    )
    lat = s.get("latency")
    if lat:
        h, o = lat["histogram"], lat["offset_poll"]
        print(
            f"latency @ {lat['rate_target']} ev/s for {lat['seconds']} s (consumed "
            f"{lat['consumed_rate_in_window']} ev/s): histogram p50 {h['p50_s']} s p99 "
            f"{h['p99_s']} s (<=1 s: {h['share_le_1s']});  offset-poll p50 {o['p50_s']} s "
            f"p99 {o['p99_s']} s max {o['max_s']} s"
        )
    g = s.get("growth")
    if g and g.get("pools"):
        print("growth (private Redis):")
        print(
            "  codes      events/s  fill ev/s  Redis state after fill  B/code  keys      "
            "peak RSS  ev/s on 1k hot codes"
        )
        for x in g["pools"]:
            print(
                f"  {x['codes']:<9}  {x['events_per_s']:>8}  {x['fill_events_per_s']:>9}  "
                f"{_mb(x['redis_state_bytes_after_fill']):>22}  "
                f"{x['redis_bytes_per_code_after_fill']:>6}  {x['redis_keys_after_fill']:<8}  "
                f"{_mb(x['peak_rss']):>8}  {x.get('hot_events_per_s', '-')}"
            )
        dr = g.get("drain")
        if dr and "drained" in dr:
            print(
                f"  drain ({dr['codes']} codes, windows {dr['windows']['long_s']}/"
                f"{dr['windows']['memory_s']} s): keys {dr['peak_keys']} -> "
                f"{dr['final_keys']} after {dr['seconds_after_fill']} s "
                f"({'drained' if dr['drained'] else 'NOT drained'})"
            )
    soak = s.get("soak")
    if soak:
        print(
            f"soak {soak['seconds'] / 60:.0f} min @ {soak['rate_target']} ev/s: "
            f"{soak.get('steady_growth', 'too short to judge')}"
        )
    print("targets:")
    for k, v in res["targets"].items():
        print(f"  {k}: {'MET' if v['met'] else 'NOT met'}  {v}")
    for name, x in s.items():
        if isinstance(x, dict) and "error" in x:
            print(f"section {name} FAILED: {x['error'][:300]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--smoke", action="store_true", help="small sizes (CI), ~2 minutes")
    ap.add_argument("--only", help=f"comma list of sections: {','.join(SECTIONS)}")
    ap.add_argument(
        "--out",
        help="JSON result (default bench/results/perf.json; out/perf-smoke.json with --smoke)",
    )
    ap.add_argument(
        "--soak-minutes",
        type=float,
        default=None,
        help="run the soak section for this many minutes (default 0: skipped)",
    )
    ap.add_argument("--profile", metavar="DIR", help="also run the py-spy profile section")
    ap.add_argument("--events", type=int, help="override the stream's event count")
    ap.add_argument("--keep", action="store_true", help="keep the work dir, topics and keys")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="update only the sections run now in an existing --out JSON (e.g. a soak)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        wa = json.loads(a.worker_args)
        {"ceiling": worker_ceiling, "quix": worker_quix}[a.worker](wa)
        return 0

    p = SMOKE if a.smoke else FULL
    if a.events:
        p = replace(p, events=a.events)
    if a.soak_minutes is not None:
        p = replace(p, soak_minutes=0 if a.smoke else a.soak_minutes)
    if a.only:
        sections = [x.strip() for x in a.only.split(",") if x.strip()]
        bad = [x for x in sections if x not in SECTIONS]
        if bad:
            ap.error(f"unknown section(s) {bad}; known: {', '.join(SECTIONS)}")
    else:
        sections = list(DEFAULT_SECTIONS)
        if p.soak_minutes > 0:
            sections.append("soak")
        if a.profile:
            sections.append("profile")
    if "soak" in sections and p.soak_minutes <= 0:
        p = replace(p, soak_minutes=1 if a.smoke else 30)
    out = Path(a.out) if a.out else (REPO / "out" / "perf-smoke.json" if a.smoke else DEFAULT_OUT)

    t_all = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"pdperf-{run_id}-", dir="/tmp"))
    say(
        f"bench {'smoke' if a.smoke else 'full'} run {run_id}: sections {sections}; "
        f"work dir {workdir}"
    )
    ensure_stack()
    res: dict[str, Any] = {
        "kind": "smoke" if a.smoke else "full",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": asdict(p),
        "sections": {},
    }
    topics = Topics(run_id)
    ctx: Ctx | None = None
    try:
        events_path = workdir / "events.jsonl"
        say(f"generating {p.events} simulator events")
        stream = generate_events(p, events_path)
        res["stream"] = stream
        lines = events_path.read_bytes().splitlines()
        topic = f"bench-{run_id}-orders"
        if {"ceiling", "run", "run_scaled", "quix", "profile"} & set(sections):
            topics.create(topic, p.partitions)
            say(f"loading {topic} ({p.partitions} partitions)")
            res["load"] = load_topic(topic, events_path)
        ctx = Ctx(
            p,
            run_id,
            workdir,
            topics,
            events_path,
            lines,
            stream,
            topic,
            p.events,
            [],
            Path(a.profile) if a.profile else None,
        )
        funcs: dict[str, Callable[[Ctx], dict[str, Any]]] = {
            "growth": section_growth,
            "ceiling": section_ceiling,
            "run": section_run,
            "run_scaled": section_run_scaled,
            "replay": section_replay,
            "quix": section_quix,
            "latency": section_latency,
            "soak": section_soak,
            "profile": section_profile,
        }
        for name in [x for x in SECTIONS if x in sections]:
            res["sections"][name] = run_section(name, funcs[name], ctx)
            x = res["sections"][name]
            if "events_per_s" in x:
                say(f"  {name}: {x['events_per_s']} events/s")
        if ctx.pending_drain is not None:
            g, pr, mon = ctx.pending_drain
            say("waiting for the growth drain (Redis TTLs) to finish")
            try:
                g["drain"].update(mon.result())
            finally:
                pr.stop()
    finally:
        if not a.keep:
            topics.cleanup()
            for prefix in ctx.prefixes if ctx else []:
                with contextlib.suppress(redis.RedisError):
                    delete_prefix(REDIS_URL, prefix)
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            topics.admin.close()
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["total_seconds"] = round(time.monotonic() - t_all, 1)
    if a.merge and out.exists():
        old = json.loads(out.read_text())
        for name, sec in res["sections"].items():
            sec["merged_from_run"] = {
                "date": res["date"],
                "kind": res["kind"],
                "machine": res["machine"],
                "params": res["params"],
                "total_seconds": res["total_seconds"],
            }
            old["sections"][name] = sec
        res = old
    summarize(res, p)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print_table(res)
    say(f"wrote {out} in {res['total_seconds']} s")
    failed = [k for k, v in res["sections"].items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
