"""Wiring only: build the parts from config and connect them for `replay` and `run`."""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

import structlog
from prometheus_client import CollectorRegistry

from detector.config import Config, load_config, restart_needed
from detector.errors import ConfigError, DeliveryError, StaleProgress, StoreError
from detector.metrics import Metrics, serve
from detector.pipeline import Pipeline, PipelineObserver, Stats
from detector.sinks.base import AlertSink, DeadLetterSink
from detector.sinks.jsonl import (
    JsonlAlertSink,
    JsonlDeadLetterSink,
    NullDeadLetterSink,
    StdoutAlertSink,
)
from detector.sources.file import FileSource
from detector.state.base import Store
from detector.state.keys import Keys
from detector.state.memory import MemoryStore
from detector.state.redis import RedisStore, connect

log = structlog.get_logger(__name__)
T = TypeVar("T")


def make_store(cfg: Config, backend: str, metrics: Metrics | None = None) -> Store:
    keys = Keys.for_config(cfg)
    if backend == "memory":
        return MemoryStore(keys, cfg.retention_s)
    observe = metrics.store_observer if metrics is not None else None
    return RedisStore(connect(cfg.redis), keys, cfg.retention_s, observe=observe)


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# The event path makes many short-lived containers, and the embedded store holds many long-lived
# ones: at the default thresholds (700, 10, 10) the cycle collector keeps re-scanning that state
# (replay of 200k events: 50k events/s, 72-75k with these; the same peak RSS). Reference counting
# frees almost everything here; cycles are still collected, just less often.
_GC_THRESHOLDS = (50_000, 20, 20)


def replay(
    cfg: Config,
    events: str,
    *,
    alerts_out: str | None,
    dead_letters_out: str | None = None,
    backend: str = "memory",
    echo: IO[str] | None = None,
    metrics: Metrics | None = None,
    extra_sinks: Sequence[AlertSink] = (),
    observer: PipelineObserver | None = None,
) -> Stats:
    """CONTRACT.md §5: the same pipeline as `run`, clocked by event time, from a file."""
    gc.set_threshold(*_GC_THRESHOLDS)
    metrics = metrics or Metrics(CollectorRegistry(), cfg.metrics.max_firing_labels)
    store = make_store(cfg, backend, metrics)
    sinks: list[AlertSink] = list(extra_sinks)
    if alerts_out is not None:
        sinks.append(JsonlAlertSink(alerts_out))
    if echo is not None:
        sinks.append(StdoutAlertSink(echo))
    dlq: DeadLetterSink = (
        JsonlDeadLetterSink(dead_letters_out) if dead_letters_out else NullDeadLetterSink()
    )
    source = FileSource(events)
    pipe = Pipeline(
        cfg,
        store,
        sinks,
        dlq,
        metrics,
        source=source.name,
        owner=owner_id(),
        live=False,
        observer=observer,
    )
    pipe.assign([0])
    try:
        for batch in source.batches():
            pipe.process(batch)
    finally:
        pipe.close()
        for s in sinks:
            s.close()
        dlq.close()
        store.close()
    return pipe.stats


class _Reloader:
    """Hot reload on SIGHUP or when the file changes; restart-only keys are refused."""

    def __init__(
        self, path: str | None, cfg: Config, metrics: Metrics, loaded_mtime: float | None = None
    ) -> None:
        self.path = path
        self.cfg = cfg
        self._metrics = metrics
        # The file's time when it was loaded: an edit during start-up is still picked up.
        self._mtime = self._stat() if loaded_mtime is None else loaded_mtime
        self._hup = False
        self._next_check = 0.0
        metrics.set_config(cfg.config_hash())

    def _stat(self) -> float:
        try:
            return Path(self.path).stat().st_mtime if self.path else 0.0
        except OSError:
            return 0.0

    def hangup(self) -> None:
        self._hup = True

    def poll(self) -> Config | None:
        """The new config when one should be applied now, else None."""
        if self.path is None:
            return None
        now = time.monotonic()
        if not self._hup and now < self._next_check:
            return None
        self._next_check = now + 1.0
        mtime = self._stat()
        if not self._hup and mtime == self._mtime:
            return None
        self._hup = False
        self._mtime = mtime
        m = self._metrics.config_reloads
        try:
            new = load_config(self.path)
        except ConfigError as e:
            m.labels("rejected").inc()
            log.error("config reload rejected; the old config stays in force", error=str(e))
            return None
        if new == self.cfg:
            m.labels("unchanged").inc()
            return None
        blocked = restart_needed(self.cfg, new)
        if blocked:
            m.labels("restart_required").inc()
            log.error(
                "config change needs a restart and was not applied; the old config stays",
                keys=blocked,
            )
            return None
        m.labels("applied").inc()
        self.cfg = new
        self._metrics.set_config(new.config_hash())
        log.info("config reloaded", hash=new.config_hash())
        return new


def run(cfg: Config, cfg_path: str | None, loaded_mtime: float | None = None) -> int:
    """`detector run`: consume Kafka, keep state in Redis, alert; exit 0 on SIGTERM/SIGINT."""
    gc.set_threshold(*_GC_THRESHOLDS)
    from detector.sinks.kafka import KafkaAlertSink, KafkaDeadLetterSink
    from detector.sources.kafka import KafkaSource, check_access

    # Handlers first: a SIGTERM during start-up must still end in a clean exit 0.
    stopping: list[int] = []
    source_ref: list[Any] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping: finishing the current batch", signal=signal.Signals(signum).name)
        stopping.append(signum)
        for src in source_ref:
            src.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    metrics = Metrics(CollectorRegistry(), cfg.metrics.max_firing_labels)
    server = serve(metrics, cfg.metrics.host, cfg.metrics.port)
    log.info("metrics served", address=f"{cfg.metrics.host}:{server.server_port}")
    store = make_store(cfg, cfg.state, metrics)
    backoff = cfg.redis.retry_backoff_max_s
    _retry_store(store, metrics, store.ping, backoff)
    # Wrong Kafka credentials or CA: exit 1 naming them, not a bootstrap timeout.
    check_access(cfg.kafka, min(10.0, cfg.kafka.request_timeout_ms / 1000))
    sinks: list[AlertSink] = []
    if cfg.alerts.kafka:
        sinks.append(KafkaAlertSink(cfg.kafka))
    if cfg.alerts.jsonl_path:
        sinks.append(JsonlAlertSink(cfg.alerts.jsonl_path))
    dlq = KafkaDeadLetterSink(cfg.kafka)
    owner = owner_id()
    pipe: Pipeline | None = None

    # Rebalance callbacks run inside poll(): an error there would end the consumer, so they
    # wait for Redis like the rest of the store path (the group sees a slow rebalance).
    def stored_offsets() -> dict[int, int]:
        assert pipe is not None
        return _retry_store(store, metrics, pipe.reload_progress, backoff)

    def assigned(parts: list[int]) -> None:
        assert pipe is not None
        p = pipe
        _retry_store(store, metrics, lambda: p.assign(parts), backoff)

    def revoked(parts: list[int]) -> None:
        assert pipe is not None
        pipe.revoke(parts)

    source = KafkaSource(cfg.kafka, stored_offsets, assigned, revoked)
    pipe = Pipeline(cfg, store, sinks, dlq, metrics, source=source.name, owner=owner, live=True)
    reloader = _Reloader(cfg_path, cfg, metrics, loaded_mtime)

    source_ref.append(source)
    if stopping:
        source.stop()
    signal.signal(signal.SIGHUP, lambda *_: reloader.hangup())
    _retry_store(store, metrics, pipe.restore_firing, backoff)
    _retry_store(store, metrics, pipe.recover, backoff)
    log.info("detector running", topic=cfg.kafka.topics.events, group=cfg.kafka.group_id)
    batches = source.batches(lambda: pipe.held_by_group)
    try:
        for polled in batches:
            try:
                offsets = pipe.process(
                    polled.records, polled.caught_up.__contains__, polled.partitions
                )
            except StaleProgress as e:
                log.warning("partitions moved to another writer; resyncing", detail=str(e))
                source.seek(_retry_store(store, metrics, pipe.reload_progress, backoff))
                continue
            except StoreError as e:
                log.error("state store failed; not consuming until it is back", error=str(e))
                metrics.store_up.set(0)
                source.seek(_retry_store(store, metrics, pipe.reload_progress, backoff))
                continue
            except DeliveryError as e:
                # Undelivered alerts stay in the outbox (recover() sends them again first);
                # a batch whose dead letters failed is read again: its offsets were not stored.
                _delivery_failed(metrics, e, backoff)
                source.seek(_retry_store(store, metrics, pipe.reload_progress, backoff))
                continue
            metrics.store_up.set(1)
            source.commit(offsets)
            for p, lag in polled.lag.items():
                metrics.consumer_lag.labels(cfg.kafka.topics.events, str(p)).set(lag)
            new = reloader.poll()
            if new is not None:
                pipe.reconfigure(new)
    finally:
        batches.close()  # gives the turn back: a rebalance callback may be waiting for it
        source.close()  # the fetch thread first: no rebalance callback runs after this
        pipe.close()
        for s in sinks:
            s.close()
        dlq.close()
        store.close()
        server.shutdown()
    log.info("detector stopped cleanly")
    return 0


def _retry_store(
    store: Store, metrics: Metrics, fn: Callable[[], T], backoff_max_s: float = 5.0
) -> T:
    """Call ``fn`` until the store answers, backing off; the detector is unhealthy meanwhile."""
    delay = 0.2
    while True:
        try:
            out = fn()
            metrics.store_up.set(1)
            return out
        except StaleProgress:
            raise
        except StoreError as e:
            metrics.store_up.set(0)
            log.error("state store unavailable; retrying", error=str(e), retry_in_s=delay)
            time.sleep(delay)
        except DeliveryError as e:
            _delivery_failed(metrics, e, delay)
        delay = min(delay * 2, backoff_max_s)


def _delivery_failed(metrics: Metrics, e: DeliveryError, pause_s: float) -> None:
    metrics.delivery_failures.labels(e.sink).inc(e.failed)
    log.error("delivery failed; not consuming until it succeeds", error=str(e), retry_in_s=pause_s)
    time.sleep(pause_s)


def print_summary(stats: Stats, out: IO[str] = sys.stderr) -> None:
    bad = sum(stats.dead_letters.values())
    out.write(
        f"records {stats.records}  ok {stats.ok}  dead-lettered {bad}  late {stats.late}  "
        f"duplicate {stats.duplicate}\n"
    )
    for reason, n in sorted(stats.dead_letters.items()):
        out.write(f"  dead letter {reason}: {n}\n")
    for (rule, sev, status), n in sorted(stats.alerts.items()):
        out.write(f"  alerts {rule} {sev} {status}: {n}\n")
