"""Shared pytest fixtures for tests that need the local infrastructure stack.

Tests marked ``@pytest.mark.stack`` get a running Kafka/Redis/Prometheus/
Alertmanager (``deploy/local/stack.sh``): the session-scoped ``stack`` fixture
checks that every service answers and runs ``stack.sh up`` if one does not
(set ``STACK_AUTO_UP=0`` to fail instead). Ports and the state directory follow
the same environment variables as stack.sh (KAFKA_PORT, REDIS_PORT, PROM_PORT,
AM_PORT, STACK_DIR), so a suite can be pointed at another stack.

Isolation between tests is by naming, not by separate servers: each test gets
fresh uniquely named Kafka topics (``topic``), its own Redis key prefix
(``redis_prefix``, keys deleted afterwards) and its own Prometheus target files
(``prom_target``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka.admin import KafkaAdminClient

REPO = Path(__file__).resolve().parents[1]
STACK_SH = REPO / "deploy" / "local" / "stack.sh"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackInfo:
    """Where the stack's services listen and keep their state."""

    dir: Path
    kafka_bootstrap: str
    redis_url: str
    prometheus_url: str
    alertmanager_url: str

    @classmethod
    def from_env(cls) -> StackInfo:
        env = os.environ
        return cls(
            dir=Path(env.get("STACK_DIR", REPO / ".stack")).resolve(),
            kafka_bootstrap=f"127.0.0.1:{env.get('KAFKA_PORT', '29092')}",
            redis_url=f"redis://127.0.0.1:{env.get('REDIS_PORT', '26379')}/0",
            prometheus_url=f"http://127.0.0.1:{env.get('PROM_PORT', '29090')}",
            alertmanager_url=f"http://127.0.0.1:{env.get('AM_PORT', '29094')}",
        )


# ---------------------------------------------------------------- helpers --


def _sanitize(text: str, limit: int) -> str:
    """Reduce a test id to characters valid in topic names and Redis globs."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")[:limit] or "t"


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """GET returning (status, body); connection errors give status 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def run_stack_sh(
    *args: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run deploy/local/stack.sh with optional environment overrides."""
    proc = subprocess.run(
        [str(STACK_SH), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"stack.sh {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def _not_answering(info: StackInfo) -> list[str]:
    """Names of services that do not answer a real request right now."""
    down = []
    try:
        client = redis.Redis.from_url(info.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError:
        down.append("redis")
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=info.kafka_bootstrap,
            bootstrap_timeout_ms=3000,
            request_timeout_ms=3000,
        )
        try:
            if not admin.describe_cluster().get("brokers"):
                down.append("kafka")
        finally:
            admin.close()
    except Exception:
        down.append("kafka")
    for name, url in (("prometheus", info.prometheus_url), ("alertmanager", info.alertmanager_url)):
        if http_get(f"{url}/-/ready")[0] != 200:
            down.append(name)
    return down


# --------------------------------------------------------------- fixtures --


@pytest.fixture(scope="session")
def stack() -> StackInfo:
    """The running local stack; started with stack.sh if something is down."""
    info = StackInfo.from_env()
    down = _not_answering(info)
    if not down:
        return info
    if os.environ.get("STACK_AUTO_UP", "1") == "0":
        pytest.fail(f"stack services not answering: {down} (STACK_AUTO_UP=0)")
    log.warning("stack services not answering %s; running stack.sh up", down)
    run_stack_sh("up")
    down = _not_answering(info)
    if down:
        pytest.fail(f"stack.sh up succeeded but these still do not answer: {down}")
    return info


@pytest.fixture(autouse=True)
def _stack_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """`@pytest.mark.stack` alone is enough to get a running stack."""
    if request.node.get_closest_marker("stack") is not None:
        request.getfixturevalue("stack")


@pytest.fixture
def stack_sh() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run stack.sh, e.g. ``stack_sh("stop", "redis")`` in fault tests.

    Keyword arguments: ``env`` (overrides), ``check`` (default True), ``timeout``.
    """
    return run_stack_sh


@pytest.fixture(scope="session")
def stack_dir(stack: StackInfo) -> Path:
    return stack.dir


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: StackInfo) -> str:
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def prometheus_url(stack: StackInfo) -> str:
    return stack.prometheus_url


@pytest.fixture(scope="session")
def alertmanager_url(stack: StackInfo) -> str:
    return stack.alertmanager_url


@pytest.fixture(scope="session")
def redis_url(stack: StackInfo) -> str:
    return stack.redis_url


@pytest.fixture
def topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Factory: ``topic(partitions=1, configs=None, hint=None) -> name``.

    Creates a fresh, uniquely named topic (RF 1) and waits until every
    partition has a leader; all topics created by the test are deleted after it.
    """
    created: list[str] = []

    def make(
        partitions: int = 1,
        configs: Mapping[str, str] | None = None,
        hint: str | None = None,
    ) -> str:
        name = f"test-{_sanitize(hint or request.node.name, 60)}-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="pytest-topic")
        try:
            admin.create_topics(
                {
                    name: {
                        "num_partitions": partitions,
                        "replication_factor": 1,
                        "configs": dict(configs or {}),
                    }
                },
                wait_for_metadata=True,
            )
        finally:
            admin.close()
        created.append(name)
        return name

    yield make

    if created:
        # Best effort: a fault test may have left Kafka stopped.
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=kafka_bootstrap,
                client_id="pytest-topic-cleanup",
                bootstrap_timeout_ms=5000,
            )
            try:
                admin.delete_topics(created, raise_errors=False)
            finally:
                admin.close()
        except Exception as exc:
            log.warning("could not delete test topics %s: %s", created, exc)


@pytest.fixture
def redis_prefix(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A key prefix unique to this test; keys under it are deleted afterwards."""
    prefix = f"test:{_sanitize(request.node.name, 40)}:{uuid.uuid4().hex[:8]}:"
    yield prefix
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        try:
            batch: list[bytes] = []
            # The prefix holds no glob metacharacters (see _sanitize).
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        finally:
            client.close()
    except redis.RedisError as exc:
        log.warning("could not clean up Redis keys %s*: %s", prefix, exc)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A redis-py client on the stack's Redis (bytes in, bytes out)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def prom_target(stack_dir: Path) -> Iterator[Callable[..., Path]]:
    """Factory: ``prom_target(port, labels=None, host="127.0.0.1") -> path``.

    Adds a scrape target to Prometheus's ``detector`` job by writing a file_sd
    file into $STACK_DIR/prometheus/targets/ (picked up within seconds, no
    reload); the files are removed after the test.
    """
    targets_dir = stack_dir / "prometheus" / "targets"
    written: list[Path] = []

    def add(port: int, labels: Mapping[str, str] | None = None, host: str = "127.0.0.1") -> Path:
        targets_dir.mkdir(parents=True, exist_ok=True)
        path = targets_dir / f"pytest-{uuid.uuid4().hex[:12]}.json"
        # Written under a name outside the *.json glob and renamed, because
        # Prometheus watches the directory and may read a half-written file.
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps([{"targets": [f"{host}:{port}"], "labels": dict(labels or {})}]))
        os.replace(tmp, path)
        written.append(path)
        return path

    yield add
    for path in written:
        path.unlink(missing_ok=True)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Factory returning a currently unused TCP port on 127.0.0.1."""

    def get() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    return get


# ------------------------------------------------------ detector processes --


@dataclass
class DetectorProcess:
    """A `detector run` subprocess with its config, metrics port and log file."""

    config: Path
    metrics_port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def metrics(self) -> dict[str, float]:
        """The /metrics samples as {"name{labels}": value} (empty while not serving)."""
        status, body = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        out: dict[str, float] = {}
        if status != 200:
            return out
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, name: str, default: float = 0.0) -> float:
        return self.metrics().get(name, default)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"detector exited with {self.proc.returncode} while waiting for {what}:\n"
                    + self.log.read_text()[-3000:]
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; log tail:\n"
                    + self.log.read_text()[-3000:]
                )
            time.sleep(0.2)

    def wait_events(self, n: int, timeout: float = 120.0) -> None:
        """Until n records were consumed (ok + dead-lettered + late + duplicate)."""

        def consumed() -> bool:
            m = self.metrics()
            total = sum(v for k, v in m.items() if k.startswith("detector_events_total{"))
            return total >= n

        self.wait_for(consumed, timeout, f"{n} events consumed")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: a clean stop finishes its batch and exits 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def detector_config(
    tmp_path: Path, redis_prefix: str, kafka_bootstrap: str, free_port: Callable[[], int]
) -> Callable[..., Path]:
    """Write a `detector run` config for this test: its own topics, key prefix and port.

    ``detector_config(events_topic, **overrides)``; nested overrides are merged.
    """

    def make(events_topic: str, name: str = "detector.yaml", **over: Any) -> Path:
        cfg: dict[str, Any] = {
            "state": "redis",
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "group_id": f"g-{events_topic}",
                "topics": {
                    "events": events_topic,
                    "dead_letters": f"{events_topic}.dlq",
                    "alerts": f"{events_topic}.alerts",
                },
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
            },
            "redis": {"key_prefix": redis_prefix},
            "metrics": {"port": free_port()},
            "alerts": {"jsonl_path": str(tmp_path / f"{events_topic}-alerts.jsonl")},
            "logging": {"level": "info"},
        }
        cfg = _merge(cfg, over)
        path = tmp_path / name
        path.write_text(json.dumps(cfg))  # JSON is YAML
        return path

    return make


def _merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def start_detector(tmp_path: Path) -> Iterator[Callable[..., DetectorProcess]]:
    """Start `detector run --config PATH` processes; all are killed at teardown."""
    procs: list[DetectorProcess] = []

    def start(config: Path, env: Mapping[str, str] | None = None) -> DetectorProcess:
        port = json.loads(config.read_text())["metrics"]["port"]
        log_path = tmp_path / f"detector-{len(procs)}.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "detector"), "run", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        d = DetectorProcess(config, port, log_path, proc)
        procs.append(d)
        d.wait_for(d.metrics, 30, "the metrics endpoint")
        return d

    yield start
    for d in procs:
        d.kill()
