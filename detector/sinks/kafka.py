"""Alerts and dead letters to Kafka topics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from detector.alerts.record import Alert
from detector.config import KafkaConfig
from detector.errors import SourceError
from detector.sources.base import Record
from detector.sources.kafka import client_options


def producer(cfg: KafkaConfig, **extra: Any) -> Any:
    opts = client_options(cfg)
    opts.update(acks="all", linger_ms=5, retries=5, **extra)
    try:
        return KafkaProducer(**opts)
    except KafkaError as e:
        raise SourceError(
            f"cannot connect to Kafka at {cfg.bootstrap_servers} "
            f"({cfg.security_protocol}): {type(e).__name__}: {e}"
        ) from None


class KafkaAlertSink:
    """Keyed by ``alert_id``; a consumer dedupes on (key, status) after a crash re-send."""

    def __init__(self, cfg: KafkaConfig, prod: Any | None = None) -> None:
        self._topic = cfg.topics.alerts
        self._p = prod if prod is not None else producer(cfg)

    def write(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            self._p.send(self._topic, key=a.alert_id.encode(), value=a.to_json())
        self._p.flush()

    def close(self) -> None:
        self._p.close()


class KafkaDeadLetterSink:
    """CONTRACT.md §3: original key and value bytes, reason and source position in headers."""

    def __init__(self, cfg: KafkaConfig, prod: Any | None = None) -> None:
        self._topic = cfg.topics.dead_letters
        self._p = prod if prod is not None else producer(cfg)

    def send(self, record: Record, reason: str, detail: str) -> None:
        headers = [
            ("dlq.reason", reason.encode()),
            ("dlq.detail", detail.encode("utf-8", errors="replace")),
            ("dlq.source.topic", record.topic.encode()),
            ("dlq.source.partition", str(record.partition).encode()),
            ("dlq.source.offset", str(record.offset).encode()),
        ]
        self._p.send(self._topic, key=record.key, value=record.value, headers=headers)

    def flush(self) -> None:
        self._p.flush()

    def close(self) -> None:
        self._p.close()
