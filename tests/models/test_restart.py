"""The models' writer restarted mid-stream learns the same buckets as one that never stopped."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from detector.config import Config, load_config
from detector.metrics import Metrics
from detector.models.rate import RateModel
from detector.pipeline import Pipeline
from detector.sinks.jsonl import NullDeadLetterSink
from detector.sources.file import FileSource
from detector.state.keys import Keys
from detector.state.memory import MemoryStore

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
OWNER = "host:1:restart"  # a restarted process renews its own lease at once


def _order(at: datetime, code: str, campaign: str) -> dict[str, Any]:
    n = uuid.uuid4().hex
    return {
        "event_id": str(uuid.UUID(n)),
        "ts": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "order_id": n[:12],
        "account_id": f"acc-{n[:6]}",
        "promo_code": code,
        "campaign_id": campaign,
        "order_total": 1000.0,
        "discount": 100.0,
    }


def _stream(path: Path, start: datetime = T0) -> None:
    # A busy campaign all day; a quiet one in the first hour and the last, silent for five hours
    # in between: more than the two hours of campaign volume the writer picks campaigns from.
    events = [_order(start + timedelta(seconds=s), "BUSY1", "BUSY") for s in range(0, 7 * 3600, 20)]
    for h in (0, 6):
        events += [
            _order(start + timedelta(hours=h, seconds=s), "QUIET1", "QUIET")
            for s in range(0, 3600, 90)
        ]
    events.sort(key=lambda e: e["ts"])
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))


def _run(
    cfg: Config,
    store: MemoryStore,
    path: Path,
    skip: int = 0,
    stop_at: int | None = None,
    batch_size: int = 200,
) -> None:
    metrics = Metrics(CollectorRegistry(), cfg.metrics.max_firing_labels)
    pipe = Pipeline(
        cfg, store, [], NullDeadLetterSink(), metrics, source="replay", owner=OWNER, live=False
    )
    pipe.assign([0])
    for batch in FileSource(str(path), batch_size=batch_size, skip=skip).batches():
        if stop_at is not None and batch[0].offset >= stop_at:
            return  # killed: no close, no flush; what was not stored is read again
        pipe.process(batch)
    pipe.close()


def test_a_restart_while_a_campaign_is_quiet_learns_every_bucket_an_unbroken_run_does(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    _stream(path)
    cfg = load_config(None, {"alerts": {"kafka": False}})
    names = ["rate:QUIET", "ratio:QUIET", "rate:BUSY"]

    unbroken = MemoryStore(Keys.for_config(cfg), cfg.retention_s)
    _run(cfg, unbroken, path)
    want = unbroken.snapshots(names)

    restarted = MemoryStore(Keys.for_config(cfg), cfg.retention_s)
    lines = path.read_bytes().count(b"\n")
    _run(cfg, restarted, path, stop_at=lines * 2 // 3)  # hour 4: QUIET silent since hour 1
    stored = restarted.progress("replay", [0]).offsets[0]
    _run(cfg, restarted, path, skip=stored)
    got = restarted.snapshots(names)

    assert RateModel.restore(got["rate:QUIET"]).n == RateModel.restore(want["rate:QUIET"]).n
    assert got == want


def test_a_crash_before_the_first_snapshot_learns_the_first_buckets_all_the_same(
    tmp_path: Path,
) -> None:
    # With no stored clock the writer starts from the watermark it sees first, which depends on
    # how much its first batch held (Kafka's fetch sizes, a crash): it must not skip more of the
    # stream's first buckets for that.
    path = tmp_path / "events.jsonl"
    _stream(path, start=T0 + timedelta(minutes=3))  # the first snapshot is due 7 minutes in
    cfg = load_config(None, {"alerts": {"kafka": False}})
    names = ["rate:QUIET", "ratio:QUIET", "rate:BUSY", "ratio:BUSY"]

    unbroken = MemoryStore(Keys.for_config(cfg), cfg.retention_s)
    _run(cfg, unbroken, path, batch_size=12)
    want = unbroken.snapshots(names)

    restarted = MemoryStore(Keys.for_config(cfg), cfg.retention_s)
    _run(cfg, restarted, path, stop_at=24, batch_size=4)  # 5 minutes in: no snapshot yet
    stored = restarted.progress("replay", [0]).offsets[0]
    _run(cfg, restarted, path, skip=stored, batch_size=2000)  # its first batch spans hours
    got = restarted.snapshots(names)

    assert RateModel.restore(got["rate:BUSY"]).n == RateModel.restore(want["rate:BUSY"]).n
    assert got == want
