"""Filling and measuring test topics on the real broker, with kafka-python."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition


@dataclass(frozen=True)
class Sent:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None, int | None]],
    **opts: Any,
) -> list[Sent]:
    """Send (key, value, partition) messages in order; returns where each went.

    A partition of None leaves the choice to the default partitioner (by key, or spread)."""
    settings: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 10,
        "max_in_flight_requests_per_connection": 1,  # keeps the order on retries
        **opts,
    }
    producer = KafkaProducer(bootstrap_servers=bootstrap, **settings)
    try:
        sent = [
            (key, value, producer.send(topic, key=key, value=value, partition=part))
            for key, value, part in messages
        ]
        producer.flush(timeout=120)
        out = []
        for key, value, fut in sent:
            md = fut.get(timeout=60)
            out.append(Sent(key, value, md.partition, md.offset))
        return out
    finally:
        producer.close()


def produce_events(bootstrap: str, topic: str, events: Iterable[dict[str, Any]]) -> int:
    """Events as JSON, keyed by order id (the default partitioner spreads keys over the
    partitions), in the given order; returns how many were sent."""
    msgs = ((ev["order_id"].encode(), orjson.dumps(ev), None) for ev in events)
    return len(produce(bootstrap, topic, msgs, linger_ms=20, batch_size=256 * 1024))


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = c.partitions_for_topic(topic) or set()
        ends = c.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: o for tp, o in ends.items()}
    finally:
        c.close()
