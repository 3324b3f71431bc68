"""Delivery failures: alerts and dead letters that do not reach their destination are not lost.

1. The alerts file torn by a crash mid-write (a last line without its newline) is repaired when
   the sink opens it: the file stays valid JSON lines, every (alert_id, status) once.
2. On the real broker, the dead-letter topic and then the alerts topic refuse records
   (``max.message.bytes`` too small, as a misconfigured or full topic would): `detector run`
   counts the failures in ``detector_delivery_failures_total``, logs them, stores no offset past
   a dead letter not written, keeps undelivered alerts in the outbox, and stops consuming until
   the topic takes them; once it does, every dead letter and alert is there.

Helpers come from ``test_crash_and_outages`` (same directory).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka_io import end_offsets, produce, produce_events
from test_crash_and_outages import (
    Runs,
    Stream,
    read_alerts,
    read_topic,
    run_config,
    scenario_events,
    stored_offsets,
    wait_done,
    wait_until,
)

from detector.alerts.record import Alert
from detector.sinks.jsonl import JsonlAlertSink

TINY = {"max.message.bytes": "200"}  # smaller than any alert record or padded bad record


def alert(i: int, status: str = "firing") -> Alert:
    return Alert(
        alert_id=f"code_shared:CODE{i}:1700000000",
        status=status,  # type: ignore[arg-type]
        rule="code_shared",
        severity="page",
        scope="code",
        key=f"CODE{i}",
        campaign_id="spring",
        detected_at="2023-11-14T22:13:20.000Z",
        value=12.0,
        threshold=5.0,
        summary=f"code CODE{i} redeemed by 12 accounts",
    )


@pytest.mark.parametrize("cut", [1, 40, -1], ids=["first-byte", "mid-record", "all-but-newline"])
@pytest.mark.parametrize("written", [0, 2], ids=["first-record", "third-record"])
def test_alerts_file_torn_by_a_crash_is_repaired_on_start_and_stays_valid_jsonl(
    tmp_path: Path, cut: int, written: int
) -> None:
    alerts = [alert(0), alert(1), alert(0, "resolved")]
    path = tmp_path / "alerts.jsonl"
    sink = JsonlAlertSink(path)
    sink.write(alerts[:written])
    sink.close()
    with path.open("ab") as f:  # the crash: part of the next record reached the file
        f.write((alerts[written].to_json() + b"\n")[:cut])
    sink = JsonlAlertSink(path)  # the restart: the outbox sends every unacknowledged record
    sink.write(alerts[written:])
    sink.close()
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    got = [orjson.loads(line) for line in raw.splitlines()]
    assert [(a["alert_id"], a["status"]) for a in got] == [(a.alert_id, a.status) for a in alerts]
    assert got == [a.as_dict() for a in alerts]


def set_max_message_bytes(bootstrap: str, topic: str, value: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": value})]
        )
    finally:
        admin.close()


@pytest.mark.stack
@pytest.mark.slow
def test_refused_dead_letters_and_alerts_stall_consumption_and_arrive_once_the_topic_accepts(
    stack: Any,
    topic: Callable[..., str],
    redis_client: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    events, campaigns = scenario_events()
    name = topic(3, hint="deliver")
    dlq = topic(1, configs=TINY, hint="deliver-dlq")
    alerts_topic = topic(1, configs=TINY, hint="deliver-alerts")
    bad = [b"{not json " + b"x" * 300 + b"}" for _ in range(3)]
    produce(stack.kafka_bootstrap, name, [(None, value, 0) for value in bad])
    n = produce_events(stack.kafka_bootstrap, name, events) + len(bad)
    s = Stream(stack.kafka_bootstrap, stack.redis_url, name, n, {}, campaigns)
    s.ends = end_offsets(stack.kafka_bootstrap, name)
    group = f"deliver-{name}"
    alerts_file = tmp_path / "alerts.jsonl"
    cfg = run_config(
        s,
        group,
        redis_prefix,
        alerts_file,
        kafka={"topics": {"events": name, "dead_letters": dlq, "alerts": alerts_topic}},
        alerts={"kafka": True, "jsonl_path": str(alerts_file)},
    )
    runs = Runs(tmp_path)
    try:
        run = runs.start("deliver", runs.config("deliver", cfg))

        def failures(sink: str) -> float:
            return run.metrics().get(f'detector_delivery_failures_total{{sink="{sink}"}}', 0.0)

        # 1. Dead letters refused: the batch holding them is not applied, again and again.
        wait_until(lambda: failures("kafka_dead_letters") >= 2, 60, "DLQ failures", [run])
        time.sleep(2.0)
        assert stored_offsets(redis_client, redis_prefix, group, name).get(0, 0) == 0
        assert run.alive(), run.tail()
        assert "delivery failed; not consuming until it succeeds" in run.log.read_text()
        set_max_message_bytes(stack.kafka_bootstrap, dlq, "1048588")

        # 2. Alerts refused: they wait in the outbox; consumption stops at the first of them.
        wait_until(lambda: failures("kafka_alerts") >= 2, 180, "alert delivery failures", [run])
        held = redis_client.hlen(f"{redis_prefix}ob")
        assert held > 0
        at = sum(stored_offsets(redis_client, redis_prefix, group, name).values())
        time.sleep(3.0)
        assert sum(stored_offsets(redis_client, redis_prefix, group, name).values()) == at < n
        assert run.alive(), run.tail()
        set_max_message_bytes(stack.kafka_bootstrap, alerts_topic, "1048588")

        wait_done(redis_client, redis_prefix, group, s, [run], timeout=240)
        assert run.stop() == 0, run.tail()
    finally:
        runs.close()
    print(f"[faults] delivery.alerts_held_in_outbox = {held}, stalled_at_applied = {at} of {n}")
    letters = read_topic(stack.kafka_bootstrap, dlq)
    assert sorted(m.value for m in letters) == sorted(bad)
    assert all(dict(m.headers)["dlq.reason"] == b"not_json" for m in letters)
    written = {(a["alert_id"], a["status"]) for a in read_alerts(alerts_file)}
    on_topic = {
        (m.key.decode(), orjson.loads(m.value)["status"])
        for m in read_topic(stack.kafka_bootstrap, alerts_topic)
    }
    assert written and on_topic == written
