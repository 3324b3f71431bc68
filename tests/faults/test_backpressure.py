"""Backpressure: a burst far above the sustainable rate grows lag, not memory, and lag drains.

`detector run` is started on an empty topic; then ``BURST`` events (default 150k) are produced as
fast as the broker takes them, several times faster than one instance applies them. The consumer
pulls at its own pace: the backlog waits in Kafka, where it is durable and shows as
``detector_consumer_lag_records``; the process holds only what it is working on.

Why RSS is bounded, whatever the backlog (the bound asserted below is computed from the config):

- kafka-python fetches a partition again only once its previous fetch was consumed, and one
  fetch response is at most ``kafka.fetch_max_bytes`` (per broker; ``max_partition_fetch_bytes``
  per partition): about two responses of raw bytes at a time;
- ``poll`` hands over at most ``kafka.max_poll_records`` records, and the fetch thread polls at
  most ``PREFETCH_BATCHES`` polls ahead of the pipeline (plus the one it is making);
- the event-time alignment buffer holds at most ``events.align_buffer_records`` parsed records
  (past that it releases them anyway);
- a slice is at most 5,000 records (``pipeline._MAX_SLICE``), applied and dropped;
- everything else is bounded by the number of firing alerts, campaigns and metric labels.

So: RSS <= idle RSS + a few fetch responses + (align buffer + the polls ahead, the one being
made and the one the pipeline works on + one slice) x the in-memory size of a parsed record,
which the test bounds generously at 4 KiB.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Producer
from kafka_io import end_offsets
from test_crash_and_outages import (
    Run,
    Runs,
    create_topics,
    delete_topics,
    free_port,
    wait_until,
)

from detector.sources.kafka import PREFETCH_BATCHES

pytestmark = [pytest.mark.stack, pytest.mark.slow]

BURST = int(os.environ.get("FAULTS_BURST", "150000"))
PARTITIONS = 3
CODES = 5_000
ACCOUNTS = 20_000
CAMPAIGNS = 20
EVENT_RATE = 30.0  # events per second of event time (the burst spans ~2 h of event time)
FETCH_MAX_BYTES = 4 * 1024 * 1024
PARTITION_FETCH_BYTES = 1024 * 1024
MAX_POLL_RECORDS = 2_000
ALIGN_BUFFER = 10_000
SLICE = 5_000
RECORD_BYTES = 4 * 1024  # a parsed event in memory: Record + bytes + pydantic model + deques
MiB = 1024 * 1024


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def burst_events(n: int, start: float) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of ``n`` orders with public codes, in event-time order."""
    for i in range(n):
        camp = f"BP-{i % CAMPAIGNS}"
        ev = {
            "event_id": f"bp-{i}-{uuid.uuid4().hex[:12]}",
            "ts": iso(start + i / EVENT_RATE),
            "order_id": f"bo-{i}",
            "account_id": f"ba-{(i * 7919) % ACCOUNTS}",
            "promo_code": f"{camp}-C{(i * 104729) % (CODES // CAMPAIGNS)}",
            "campaign_id": camp,
            "order_total": 1000.0 + (i % 500),
            "discount": 100.0,
            "currency": "RUB",
            "account_created_at": "2024-01-01T00:00:00Z",
            "ip": f"10.{i % 200}.{(i // 200) % 250}.{i % 7}",
            "device_id": f"bd-{(i * 31) % ACCOUNTS}",
        }
        yield ev["order_id"].encode(), orjson.dumps(ev)


@dataclass
class Samples:
    """Lag, RSS and consumed count of one process, sampled every ``every`` seconds."""

    run: Run
    topic: str
    every: float = 0.5
    # (t, lag, rss, consumed, late, watermark)
    rows: list[tuple[float, float, int, float, float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _t0: float = field(default_factory=time.monotonic)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        prefix = "detector_consumer_lag_records{"
        while not self._stop.is_set():
            m = self.run.metrics()
            lag = sum(v for k, v in m.items() if k.startswith(prefix) and self.topic in k)
            ate = sum(v for k, v in m.items() if k.startswith("detector_events_total{"))
            late = m.get('detector_events_total{outcome="late"}', 0.0)
            wm = m.get("detector_watermark_timestamp_seconds", 0.0)
            self.rows.append((time.monotonic() - self._t0, lag, self.run.rss(), ate, late, wm))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@pytest.fixture
def burst_topic(stack: Any) -> Iterator[str]:
    name = f"test-burst-{uuid.uuid4().hex[:8]}"
    create_topics(stack.kafka_bootstrap, {name: PARTITIONS})
    yield name
    delete_topics(stack.kafka_bootstrap, [name])


def test_burst_grows_lag_not_memory_and_lag_drains(
    stack: Any,
    burst_topic: str,
    redis_client: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    t = burst_topic
    group = f"burst-{t}"
    runs = Runs(tmp_path)
    cfg = runs.config(
        "burst",
        {
            "state": "redis",
            "kafka": {
                "bootstrap_servers": stack.kafka_bootstrap,
                "group_id": group,
                "topics": {"events": t, "dead_letters": f"{t}.dlq", "alerts": f"{t}.alerts"},
                "max_poll_records": MAX_POLL_RECORDS,
                "fetch_max_bytes": FETCH_MAX_BYTES,
                "max_partition_fetch_bytes": PARTITION_FETCH_BYTES,
            },
            "redis": {"url": stack.redis_url, "key_prefix": redis_prefix},
            "events": {"align_buffer_records": ALIGN_BUFFER},
            "campaigns": {f"BP-{c}": {"kind": "public"} for c in range(CAMPAIGNS)},
            "metrics": {"port": free_port()},
            "alerts": {"kafka": False, "jsonl_path": str(tmp_path / "alerts.jsonl")},
        },
    )
    try:
        run = runs.start("burst", cfg)
        # Assigned and polling: the lag gauge of every partition is exported (0 on an empty topic).
        wait_until(
            lambda: (
                sum(k.startswith("detector_consumer_lag_records{") for k in run.metrics())
                >= PARTITIONS
            ),
            60,
            "the consumer to be assigned",
            [run],
        )
        time.sleep(2.0)
        idle_rss = run.rss()
        samples = Samples(run, t)
        samples.start()

        # The burst: ~2 h of event time ending an hour ago, produced as fast as it goes.
        start = math.floor(time.time() / 60) * 60 - 3600 - BURST / EVENT_RATE
        producer = Producer(
            {
                "bootstrap.servers": stack.kafka_bootstrap,
                "linger.ms": 20,
                "batch.size": 1024 * 1024,
                "queue.buffering.max.messages": BURST + 1,
                "queue.buffering.max.kbytes": 512 * 1024,
                "compression.type": "lz4",
            }
        )
        t0 = time.monotonic()
        raw = 0
        for key, value in burst_events(BURST, start):
            producer.produce(t, key=key, value=value)
            raw += len(value)
        assert producer.flush(300) == 0, "the burst was not delivered"
        produce_s = time.monotonic() - t0
        ends = end_offsets(stack.kafka_bootstrap, t)
        assert sum(ends.values()) == BURST

        def drained() -> bool:
            raw_offs = redis_client.mget(
                [f"{redis_prefix}off:kafka:{group}:{t}:{p}" for p in range(PARTITIONS)]
            )
            return [int(v or 0) for v in raw_offs] == [ends[p] for p in range(PARTITIONS)]

        wait_until(drained, 600, f"the {BURST} events applied", [run], every=1.0)
        drained_s = time.monotonic() - t0
        wait_until(
            lambda: samples.rows and samples.rows[-1][1] == 0, 30, "the lag gauge at 0", [run]
        )
        samples.stop()
        m = run.metrics()
        assert run.stop() == 0, run.tail()
    finally:
        runs.close()

    rows = samples.rows
    (tmp_path / "samples.json").write_bytes(orjson.dumps(rows))  # t, lag, rss, consumed, late, wm
    peak_lag = max(r[1] for r in rows)
    peak_at = next(r[0] for r in rows if r[1] == peak_lag)
    peak_rss = max(r[2] for r in rows)
    bound = (
        idle_rss
        + 3 * FETCH_MAX_BYTES
        + (ALIGN_BUFFER + (PREFETCH_BATCHES + 2) * MAX_POLL_RECORDS + SLICE) * RECORD_BYTES
        + 64 * MiB  # allocator slack: freed memory is not always returned to the OS
    )
    ok = m.get('detector_events_total{outcome="ok"}', 0.0)
    late = m.get('detector_events_total{outcome="late"}', 0.0)
    figures = {
        "events": BURST,
        "raw_backlog_mib": round(raw / MiB, 1),
        "produce_s": round(produce_s, 1),
        "produce_rate_per_s": round(BURST / produce_s),
        "drain_s": round(drained_s, 1),
        "apply_rate_per_s": round(BURST / drained_s),
        "lag_peak_records": int(peak_lag),
        "lag_peak_at_s": round(peak_at, 1),
        "rss_idle_mib": round(idle_rss / MiB, 1),
        "rss_peak_mib": round(peak_rss / MiB, 1),
        "rss_end_mib": round(rows[-1][2] / MiB, 1),
        "rss_bound_mib": round(bound / MiB, 1),
        "late": int(late),
    }
    for k, v in figures.items():
        print(f"[faults] backpressure.{k} = {v}")
        record_property(f"backpressure.{k}", v)
    # Every event applied once, none dropped as late by the burst.
    assert ok == BURST and late == 0, m
    # The burst outran the consumer: it queued in Kafka, as lag...
    assert peak_lag >= 0.3 * BURST, f"the burst never built a backlog: {figures}"
    # ... not in the process.
    assert peak_rss <= bound, f"RSS beyond its bound: {figures}"
    # Holding the backlog would cost more than a KiB per queued record (raw JSON ~300 B, the
    # Record, the parsed event); the process grew by far less per record of lag.
    assert peak_rss - idle_rss < peak_lag * 1024, f"RSS grew with the backlog: {figures}"
