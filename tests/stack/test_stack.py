"""Smoke tests of the local infrastructure stack (deploy/local/stack.sh).

They prove the environment the other tests rely on: a real Kafka broker with
working consumer groups, a durable Redis, Prometheus discovering file_sd
targets and talking to Alertmanager, and stack.sh's own contract (idempotent
`up`, `status`, single-service start/stop, failures named with their log).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from prometheus_client import CollectorRegistry, Gauge, start_http_server

pytestmark = pytest.mark.stack

SERVICES = ("redis", "kafka", "alertmanager", "prometheus")


def get_json(url: str, timeout: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.status == 200, f"GET {url} -> {resp.status}"
        return json.loads(resp.read())


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


# ------------------------------------------------------------------ Kafka --


def _consume(bootstrap: str, topic: str, group: str, count: int, timeout: float) -> list[Any]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout * 1000),
    )
    records = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) >= count:
                break
        consumer.commit()
    finally:
        consumer.close()
    return records


def test_kafka_roundtrip_and_group_resume(kafka_bootstrap: str, topic: Callable[..., str]) -> None:
    name = topic(partitions=3)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        linger_ms=5,
    )
    try:
        futures = [
            producer.send(
                name, key=f"user-{i % 10}".encode(), value=json.dumps({"seq": i}).encode()
            )
            for i in range(200)
        ]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=10)
    finally:
        producer.close()

    group = f"pytest-{uuid.uuid4().hex[:8]}"
    first = _consume(kafka_bootstrap, name, group, 100, timeout=20)
    assert len(first) == 100
    # Same group again: committed offsets must be honoured (exercises the
    # group coordinator and the internal __consumer_offsets topic).
    rest = _consume(kafka_bootstrap, name, group, 100, timeout=20)
    assert len(rest) == 100

    records = first + rest
    seq_of = {id(r): json.loads(r.value)["seq"] for r in records}
    assert sorted(seq_of.values()) == list(range(200))
    assert len({r.partition for r in records}) > 1, "keys should spread over partitions"
    by_key: dict[bytes, list[tuple[int, int, int]]] = defaultdict(list)
    for r in records:
        by_key[r.key].append((r.partition, r.offset, seq_of[id(r)]))
    for key, items in by_key.items():
        assert len({p for p, _, _ in items}) == 1, f"{key!r} spread over partitions"
        seqs = [seq for _, _, seq in sorted(items)]
        assert seqs == sorted(seqs), f"per-key order broken for {key!r}"


def test_topic_fixture_creates_requested_partitions(
    kafka_bootstrap: str, topic: Callable[..., str]
) -> None:
    name = topic(partitions=4, configs={"retention.ms": "600000"})
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        (described,) = admin.describe_topics([name])
    finally:
        admin.close()
    assert described["error_code"] == 0
    assert len(described["partitions"]) == 4


# ------------------------------------------------------------------ Redis --


def test_redis_roundtrip(redis_client: redis.Redis, redis_prefix: str) -> None:
    counter = f"{redis_prefix}count"
    assert redis_client.incrby(counter, 5) == 5
    redis_client.hset(f"{redis_prefix}h", mapping={"a": "1", "b": "2"})
    redis_client.set(f"{redis_prefix}ttl", "x", ex=60)
    assert redis_client.get(counter) == b"5"
    assert redis_client.hgetall(f"{redis_prefix}h") == {b"a": b"1", b"b": b"2"}
    assert 0 < redis_client.ttl(f"{redis_prefix}ttl") <= 60
    assert redis_client.config_get("appendonly") == {"appendonly": "yes"}
    keys = set(redis_client.scan_iter(match=f"{redis_prefix}*"))
    assert len(keys) == 3


# ----------------------------------------------------- Prometheus & Alertmanager --


def test_prometheus_scrapes_file_sd_target(
    prometheus_url: str, prom_target: Callable[..., Path], free_port: Callable[[], int]
) -> None:
    registry = CollectorRegistry()
    Gauge("stack_smoke_value", "set by the stack smoke test", registry=registry).set(42)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        marker = uuid.uuid4().hex[:8]
        prom_target(port, labels={"smoke": marker})
        instance = f"127.0.0.1:{port}"

        def target_up() -> bool:
            data = get_json(f"{prometheus_url}/api/v1/targets?state=active")["data"]
            return any(
                t["labels"].get("job") == "detector"
                and t["labels"].get("instance") == instance
                and t["labels"].get("smoke") == marker
                and t["health"] == "up"
                for t in data["activeTargets"]
            )

        wait_until(target_up, 20, f"Prometheus to scrape {instance} in job detector")

        def sample() -> list[Any]:
            q = f'stack_smoke_value{{job="detector",smoke="{marker}"}}'
            url = f"{prometheus_url}/api/v1/query?query={_quote(q)}"
            return get_json(url)["data"]["result"]  # type: ignore[no-any-return]

        (series,) = wait_until(sample, 10, "the scraped sample to be queryable")
        assert float(series["value"][1]) == 42
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def test_prometheus_knows_alertmanager(prometheus_url: str, alertmanager_url: str) -> None:
    def discovered() -> bool:
        data = get_json(f"{prometheus_url}/api/v1/alertmanagers")["data"]
        return any(alertmanager_url in am["url"] for am in data["activeAlertmanagers"])

    wait_until(discovered, 10, "Prometheus to list the stack's Alertmanager")


def test_alertmanager_ready_with_our_config(alertmanager_url: str) -> None:
    with urllib.request.urlopen(f"{alertmanager_url}/-/ready", timeout=3) as resp:
        assert resp.status == 200
    status = get_json(f"{alertmanager_url}/api/v2/status")
    assert "127.0.0.1:29095/pager" in status["config"]["original"]
    # Clustering disabled (--cluster.listen-address=): no peers, no gossip.
    assert status["cluster"]["status"] == "disabled"


# --------------------------------------------------------- stack.sh contract --


def test_up_again_is_a_quick_noop(stack_sh: Callable[..., Any]) -> None:
    t0 = time.monotonic()
    proc = stack_sh("up")
    elapsed = time.monotonic() - t0
    assert elapsed < 15, f"second `up` took {elapsed:.1f}s"
    for svc in SERVICES:
        assert f"{svc} already running" in proc.stdout, proc.stdout
    assert "(0 started)" in proc.stdout


def test_status_names_every_service(stack_sh: Callable[..., Any]) -> None:
    proc = stack_sh("status")
    lines = proc.stdout.splitlines()
    for svc in SERVICES:
        (line,) = [ln for ln in lines if ln.split()[:1] == [svc]]
        assert line.split()[1] == "up", line


def _isolated_env(tmp_path: Path, port: int) -> dict[str, str]:
    # Only Redis is started here, on its own port and state dir, so the main
    # stack is never touched.
    return {"STACK_DIR": str(tmp_path / "stack"), "REDIS_PORT": str(port)}


def test_failure_on_busy_port_names_service_and_log(
    tmp_path: Path, stack_sh: Callable[..., Any]
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        proc = stack_sh("start", "redis", env=_isolated_env(tmp_path, port), check=False)
    assert proc.returncode != 0
    log_path = str((tmp_path / "stack" / "logs" / "redis.log").resolve())
    assert "redis" in proc.stderr
    assert log_path in proc.stderr, proc.stderr
    assert "already in use" in proc.stderr


def test_failure_of_crashing_service_names_service_and_log(
    tmp_path: Path, stack_sh: Callable[..., Any]
) -> None:
    # Port 70000 is invalid: redis-server refuses its config and exits.
    proc = stack_sh("start", "redis", env=_isolated_env(tmp_path, 70000), check=False)
    assert proc.returncode != 0
    log_path = (tmp_path / "stack" / "logs" / "redis.log").resolve()
    assert f"redis (127.0.0.1:70000) exited during startup; log: {log_path}" in proc.stderr
    assert log_path.exists()


def test_single_service_lifecycle_and_durability(
    tmp_path: Path, stack_sh: Callable[..., Any], free_port: Callable[[], int]
) -> None:
    port = free_port()
    env = _isolated_env(tmp_path, port)
    try:
        started = stack_sh("start", "redis", env=env)
        assert "redis ready in" in started.stdout
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=3)
        client.set("durable", "yes")
        time.sleep(1.5)  # appendfsync everysec

        # Crash it (fault-injection path) and bring it back: AOF must replay.
        stack_sh("kill", "redis", env=env)
        status = stack_sh("status", env=env, check=False)
        assert status.returncode == 3
        assert [ln.split()[1] for ln in status.stdout.splitlines() if ln.startswith("redis ")] == [
            "down"
        ]
        stack_sh("restart", "redis", env=env)
        assert client.get("durable") == b"yes"
        client.close()

        stopped = stack_sh("stop", "redis", env=env)
        assert "redis stopped" in stopped.stdout
        again = stack_sh("stop", "redis", env=env)
        assert "redis not running" in again.stdout
    finally:
        stack_sh("down", env=env, check=False)
