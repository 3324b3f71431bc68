"""Alerts and dead letters to Kafka topics.

Every record's delivery is checked (kafka-python's ``flush`` returns whatever became of them):
one the broker did not take after the producer's own retries raises ``DeliveryError``, so the
outbox is not acknowledged and no offset is stored past a dead letter that was not written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from detector.alerts.record import Alert
from detector.config import KafkaConfig
from detector.errors import DeliveryError, SourceError
from detector.sources.base import Record
from detector.sources.kafka import client_options


def producer(cfg: KafkaConfig, **extra: Any) -> Any:
    opts = client_options(cfg)
    # A send blocks for metadata at most this long (a missing topic): then it fails, and is
    # retried with the rest of the batch, instead of holding the consumer a minute per record.
    opts.update(acks="all", linger_ms=5, retries=5, max_block_ms=cfg.request_timeout_ms, **extra)
    try:
        return KafkaProducer(**opts)
    except KafkaError as e:
        raise SourceError(
            f"cannot connect to Kafka at {cfg.bootstrap_servers} "
            f"({cfg.security_protocol}): {type(e).__name__}: {e}"
        ) from None


class _CheckedProducer:
    """Sends to one topic and tells, at ``flush``, whether every record since the last got there.

    After a failure the producer is replaced: kafka-python's can stay in a fatal state (an
    idempotent producer after MESSAGE_TOO_LARGE) and refuse everything after the cause is fixed.
    """

    def __init__(self, sink: str, topic: str, make: Callable[[], Any], timeout_s: float) -> None:
        self.sink = sink
        self._topic = topic
        self._make = make
        self._p: Any | None = make()
        self._timeout_s = timeout_s
        self._pending: list[Any] = []

    def send(self, **kw: Any) -> None:
        try:
            if self._p is None:
                self._p = self._make()
        except SourceError as e:
            raise DeliveryError(self.sink, self._topic, 1, e) from None
        try:
            self._pending.append(self._p.send(self._topic, **kw))
        except KafkaError as e:  # no metadata for the topic in time, a record too large, ...
            self._failed()
            raise DeliveryError(self.sink, self._topic, 1, e) from None

    def flush(self) -> None:
        pending = self._pending
        if not pending or self._p is None:
            return
        deadline = time.monotonic() + self._timeout_s
        error: object = "not acknowledged in time"
        while True:
            try:
                self._p.flush(timeout=self._timeout_s)
            except KafkaError as e:  # e.g. a batch split after MESSAGE_TOO_LARGE, still in flight
                error = e
            if all(f.is_done for f in pending) or time.monotonic() >= deadline:
                break
        failed = [f for f in pending if not f.succeeded()]
        self._pending = []
        if failed:
            self._failed()
            first = failed[0].exception if failed[0].is_done else error
            raise DeliveryError(self.sink, self._topic, len(failed), first)

    def _failed(self) -> None:
        self._pending = []
        if self._p is not None:
            with contextlib.suppress(KafkaError):
                self._p.close(timeout=0)
            self._p = None

    def close(self) -> None:
        if self._p is not None:
            self._p.close()


class KafkaAlertSink:
    """Keyed by ``alert_id``; a consumer dedupes on (key, status) after a crash re-send."""

    def __init__(self, cfg: KafkaConfig) -> None:
        timeout_s = cfg.request_timeout_ms / 1000
        self._out = _CheckedProducer(
            "kafka_alerts", cfg.topics.alerts, lambda: producer(cfg), timeout_s
        )

    def write(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            self._out.send(key=a.alert_id.encode(), value=a.to_json())
        self._out.flush()

    def close(self) -> None:
        self._out.close()


class KafkaDeadLetterSink:
    """CONTRACT.md §3: original key and value bytes, reason and source position in headers."""

    def __init__(self, cfg: KafkaConfig) -> None:
        timeout_s = cfg.request_timeout_ms / 1000
        self._out = _CheckedProducer(
            "kafka_dead_letters", cfg.topics.dead_letters, lambda: producer(cfg), timeout_s
        )

    def send(self, record: Record, reason: str, detail: str) -> None:
        headers = [
            ("dlq.reason", reason.encode()),
            ("dlq.detail", detail.encode("utf-8", errors="replace")),
            ("dlq.source.topic", record.topic.encode()),
            ("dlq.source.partition", str(record.partition).encode()),
            ("dlq.source.offset", str(record.offset).encode()),
        ]
        self._out.send(key=record.key, value=record.value, headers=headers)

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self._out.close()
