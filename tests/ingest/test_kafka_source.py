"""The Kafka source on the real broker, with its consumer's poll made to fail on purpose.

A broker restart makes kafka-python raise from ``poll`` only when the restart falls inside a
coordinator lookup: a race too rare to hit on demand (the restart tests in ``tests/faults``
passed many times before one run hit it). The failures are injected into the real consumer's
``poll`` so that both outcomes are exercised every run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from kafka.errors import KafkaConnectionError, KafkaError, TopicAuthorizationFailedError
from kafka_io import produce

from detector.config import KafkaConfig, KafkaTopics
from detector.sources.kafka import KafkaSource

pytestmark = pytest.mark.stack

MESSAGES = 30


def _source(bootstrap: str, topic: str, fail: list[KafkaError]) -> tuple[KafkaSource, list[int]]:
    """A source on ``topic`` whose first polls raise ``fail`` in order; returns it and its count
    of poll calls."""
    cfg = KafkaConfig(
        bootstrap_servers=bootstrap,
        group_id=f"test-source-{uuid.uuid4().hex[:8]}",
        topics=KafkaTopics(events=topic),
    )
    src = KafkaSource(cfg, dict, lambda _p: None, lambda _p: None)
    real = src._c.poll
    calls = [0]

    def poll(**kw: Any) -> Any:
        calls[0] += 1
        if fail:
            raise fail.pop(0)
        return real(**kw)

    src._c.poll = poll
    return src, calls


def _fill(bootstrap: str, topic: Callable[..., str]) -> str:
    name = topic(partitions=1)
    produce(bootstrap, name, [(None, f'{{"n": {n}}}'.encode(), 0) for n in range(MESSAGES)])
    return name


def test_a_retriable_poll_error_is_logged_and_retried_and_every_record_still_arrives_once(
    kafka_bootstrap: str, topic: Callable[..., str]
) -> None:
    name = _fill(kafka_bootstrap, topic)
    refused = [KafkaConnectionError("[Errno 111] Connection refused") for _ in range(2)]
    src, calls = _source(kafka_bootstrap, name, refused)
    offsets: list[int] = []
    with structlog.testing.capture_logs() as logs:
        try:
            for polled in src.batches():
                offsets += [r.offset for r in polled.records]
                if len(offsets) >= MESSAGES:
                    break
        finally:
            src.close()
    assert offsets == list(range(MESSAGES))
    assert calls[0] >= 3
    retries = [e for e in logs if e["event"] == "kafka poll failed; retrying"]
    assert len(retries) == 2
    assert "Connection refused" in retries[0]["error"]


def test_a_non_retriable_poll_error_stops_the_source_with_that_error(
    kafka_bootstrap: str, topic: Callable[..., str]
) -> None:
    name = _fill(kafka_bootstrap, topic)
    denied = TopicAuthorizationFailedError(f"not authorized to read {name}")
    src, _ = _source(kafka_bootstrap, name, [denied])
    try:
        with pytest.raises(TopicAuthorizationFailedError, match="not authorized"):
            for _ in src.batches():
                pass
    finally:
        src.close()
