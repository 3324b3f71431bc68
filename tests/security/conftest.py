"""Secured services of their own for the security tests (the shared stack is never touched).

Session-scoped, on free loopback ports, in a temporary directory, torn down at the end:

- ``pki``: a throw-away CA (openssl) with a server certificate for 127.0.0.1/localhost and a
  client certificate, plus the server key pair as a PKCS#12 keystore for Kafka;
- ``redis_auth``: a redis-server that requires a password (``requirepass``);
- ``redis_tls``: a redis-server reachable only over TLS (``port 0``, ``tls-port``), which
  requires a client certificate (``tls-auth-clients yes``) and an ACL user with a password (the
  ``default`` user is disabled);
- ``sasl_kafka``: a Kafka 4.1 broker in KRaft combined mode whose only client listener is
  SASL_SSL (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512; SCRAM users created when the storage is
  formatted), run from the stack's jars (``$STACK_DIR/kafka/libs``) with a small heap.

Secrets are random per session and distinctive, so that a test can grep logs for them.
``launch_detector`` starts `detector run` with a config dict and an environment and gives the
log, the metrics and the exit code; unlike the root ``start_detector`` it does not insist that the
process stays up (several tests are about how it fails).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import TopicPartition

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / ".venv" / "bin" / "detector"
KAFKA_LOG4J = REPO / "deploy" / "kafka" / "log4j2.properties"
KAFKA_HEAP = os.environ.get("SECURITY_KAFKA_HEAP", "-Xmx384m")
# `run` logs where /metrics is served (console or JSON log format).
METRICS_LINE = re.compile(r"metrics served\W+address\W+([0-9.]+:[0-9]+)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secret(label: str) -> str:
    """A distinctive random secret (URL- and shell-safe), easy to grep for."""
    return f"{label}-{secrets.token_urlsafe(18)}"


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL; only ever the process (group) this module started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _spawn(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # Own session: a Ctrl-C on pytest does not reach it, teardown stops it explicitly.
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait(predicate: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.2)


# -------------------------------------------------------------------- PKI --


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_p12: Path
    p12_password: str
    other_ca: Path  # a CA that signed nothing here: a client trusting it must refuse the server


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    req = "openssl req -newkey rsa:2048 -nodes -days 2"
    for ca in ("ca", "other-ca"):
        _run(f"{req} -x509 -keyout {ca}.key -out {ca}.pem -subj /CN=test-{ca}".split(), cwd=d)
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "promo-detector")):
        _run(f"{req} -keyout {name}.key -out {name}.csr -subj /CN={cn}".split(), cwd=d)
        sign = "openssl x509 -req -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
        _run(f"{sign} -in {name}.csr -out {name}.pem -extfile {name}.ext".split(), cwd=d)
    p12_password = secret("keystore")
    export = "openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name broker"
    _run(f"{export} -out server.p12 -passout pass:{p12_password}".split(), cwd=d)
    return Pki(
        d,
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "server.p12",
        p12_password,
        d / "other-ca.pem",
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------------ Redis --


@dataclass
class RedisServer:
    """A redis-server of our own; ``detector_redis()`` is the detector's ``redis`` section."""

    port: int
    password: str
    username: str | None
    tls: Pki | None
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self, **kw: Any) -> redis.Redis:
        opts: dict[str, Any] = {
            "username": self.username,
            "password": self.password,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        }
        if self.tls:
            opts.update(
                ssl_ca_certs=str(self.tls.ca),
                ssl_certfile=str(self.tls.client_cert),
                ssl_keyfile=str(self.tls.client_key),
            )
        opts.update(kw)
        return redis.Redis.from_url(self.url, **opts)

    def detector_redis(self, key_prefix: str, **over: Any) -> dict[str, Any]:
        """The config file's ``redis`` section, without the password (that comes from env)."""
        sec: dict[str, Any] = {"url": self.url, "key_prefix": key_prefix, "socket_timeout_s": 2.0}
        if self.username:
            sec["username"] = self.username
        if self.tls:
            sec.update(
                ssl_ca_certs=str(self.tls.ca),
                ssl_certfile=str(self.tls.client_cert),
                ssl_keyfile=str(self.tls.client_key),
            )
        sec.update(over)
        return sec


def run_redis_server(d: Path, *, password: str, tls: Pki | None = None) -> RedisServer:
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = d / "redis.log"
    cmd = f"redis-server --bind 127.0.0.1 --dir {d} --appendonly no --protected-mode yes".split()
    cmd += ["--save", ""]
    username = None
    if tls is None:
        cmd += f"--port {port} --requirepass {password}".split()
    else:
        username = "detector"
        cmd += (
            f"--port 0 --tls-port {port} --tls-auth-clients yes --tls-ca-cert-file {tls.ca} "
            f"--tls-cert-file {tls.server_cert} --tls-key-file {tls.server_key} "
            f"--user default off --user {username} on >{password} ~* &* +@all"
        ).split()
    proc = _spawn(cmd, log, d)
    srv = RedisServer(port, password, username, tls, log, proc)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited {proc.returncode}:\n{log.read_text()}")
        try:
            c = srv.client(socket_timeout=1, socket_connect_timeout=1)
            try:
                return bool(c.ping())
            finally:
                c.close()
        except redis.RedisError:
            return False

    _wait(up, 30, f"redis-server on {port}", log)
    return srv


@pytest.fixture(scope="session")
def redis_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """redis-server on a free port with ``requirepass``."""
    srv = run_redis_server(tmp_path_factory.mktemp("redis-auth"), password=secret("redispw"))
    yield srv
    _stop(srv.proc)


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RedisServer]:
    """redis-server on TLS only, client certificate required, ACL user ``detector``."""
    d = tmp_path_factory.mktemp("redis-tls")
    srv = run_redis_server(d, password=secret("redistlspw"), tls=pki)
    yield srv
    _stop(srv.proc)


@pytest.fixture
def start_redis() -> Iterator[Callable[..., RedisServer]]:
    """Factory for a redis-server of the test's own (``requirepass``), stopped after it."""
    started: list[RedisServer] = []

    def start(d: Path, tls: Pki | None = None) -> RedisServer:
        srv = run_redis_server(d, password=secret("redispw"), tls=tls)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        _stop(srv.proc)


# ------------------------------------------------------------------ Kafka --


@dataclass
class SaslKafka:
    """A SASL_SSL-only broker. ``users[mechanism]`` = (username, password) for the detector."""

    bootstrap: str
    pki: Pki
    users: dict[str, tuple[str, str]]
    admin_user: tuple[str, str]
    log: Path
    proc: subprocess.Popen[bytes]

    def options(self, mechanism: str = "PLAIN", password: str | None = None) -> dict[str, Any]:
        """kafka-python options for a client of this broker."""
        user, pw = self.admin_user if mechanism == "admin" else self.users[mechanism]
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN" if mechanism == "admin" else mechanism,
            "sasl_plain_username": user,
            "sasl_plain_password": pw if password is None else password,
            "ssl_cafile": str(self.pki.ca),
            "request_timeout_ms": 15_000,
        }

    def detector_kafka(self, topic: str, mechanism: str, **over: Any) -> dict[str, Any]:
        """The config file's ``kafka`` section, without the password (that comes from env)."""
        sec: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_username": self.users[mechanism][0],
            "ssl_cafile": str(self.pki.ca),
            "group_id": f"g-{topic}",
            "topics": {
                "events": topic,
                "dead_letters": f"{topic}.dlq",
                "alerts": f"{topic}.alerts",
            },
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        }
        sec.update(over)
        return sec

    def create_topics(self, *names: str) -> None:
        admin = KafkaAdminClient(**self.options("admin"))
        try:
            admin.create_topics([NewTopic(n, 1, 1) for n in names], wait_for_metadata=True)
        finally:
            admin.close()

    def produce(self, topic: str, values: list[bytes | None]) -> None:
        p = KafkaProducer(acks="all", linger_ms=5, **self.options("admin"))
        try:
            for v in values:
                p.send(topic, value=v)
            p.flush(timeout=60)
        finally:
            p.close()

    def read(self, topic: str, n: int, timeout: float = 30.0) -> list[Any]:
        """The first ``n`` records of partition 0 of ``topic`` (no consumer group)."""
        c = KafkaConsumer(enable_auto_commit=False, **self.options("admin"))
        try:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            c.seek_to_beginning(tp)
            out: list[Any] = []
            deadline = time.monotonic() + timeout
            while len(out) < n and time.monotonic() < deadline:
                for msgs in c.poll(timeout_ms=500).values():
                    out.extend(msgs)
            return out
        finally:
            c.close()


KAFKA_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
controller.listener.names=CONTROLLER
# The only listener clients can use is SASL_SSL; the controller stays on loopback plaintext.
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
username="{admin}" password="{admin_pw}" user_{admin}="{admin_pw}" user_{user}="{plain_pw}";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location={p12}
ssl.keystore.password={p12_pw}
ssl.key.password={p12_pw}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
ssl.client.auth=none
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=4000
num.network.threads=1
num.io.threads=2
background.threads=2
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
log.cleaner.dedupe.buffer.size=2097152
log.cleaner.threads=1
offsets.topic.segment.bytes=1048576
"""


def start_sasl_kafka(d: Path, libs: Path, pki: Pki) -> SaslKafka:
    d.mkdir(parents=True, exist_ok=True)
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise AssertionError(f"no Kafka jars in {libs}: run deploy/local/stack.sh up kafka")
    port, controller = free_port(), free_port()
    admin = ("admin", secret("kafkaadminpw"))
    scram = ("detector-scram", secret("kafkascrampw"))  # one SCRAM user, both hash functions
    users = {
        "PLAIN": ("detector", secret("kafkaplainpw")),
        "SCRAM-SHA-256": scram,
        "SCRAM-SHA-512": scram,
    }
    props = d / "server.properties"
    props.write_text(
        KAFKA_PROPERTIES.format(
            port=port,
            controller=controller,
            admin=admin[0],
            admin_pw=admin[1],
            user=users["PLAIN"][0],
            plain_pw=users["PLAIN"][1],
            p12=pki.server_p12,
            p12_pw=pki.p12_password,
            ca=pki.ca,
            data=d / "data",
        )
    )
    java = (
        f"java -Xms64m {KAFKA_HEAP} -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "
        f"-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true "
        f"-Dlog4j2.configurationFile={KAFKA_LOG4J} -cp {libs}/*"
    ).split()
    log = d / "kafka.log"
    scram_user, scram_pw = users["SCRAM-SHA-256"]
    fmt = f"kafka.tools.StorageTool format --standalone -t {uuid.uuid4().hex[:22]} -c {props}"
    for h in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        fmt += f" --add-scram {h}=[name={scram_user},password={scram_pw}]"
    with log.open("ab") as out:
        subprocess.run(
            [*java, *fmt.split()], stdout=out, stderr=subprocess.STDOUT, check=True, timeout=120
        )
    proc = _spawn([*java, "kafka.Kafka", str(props)], log, d)
    kafka = SaslKafka(f"127.0.0.1:{port}", pki, users, admin, log, proc)

    def started() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Kafka exited {proc.returncode}:\n{log.read_text()[-5000:]}")
        return "Kafka Server started" in log.read_text(errors="replace")

    _wait(started, 120, "the SASL_SSL Kafka broker", log)
    return kafka


@pytest.fixture(scope="session")
def sasl_kafka(
    tmp_path_factory: pytest.TempPathFactory, stack_dir: Path, pki: Pki
) -> Iterator[SaslKafka]:
    """A second, SASL_SSL-only Kafka broker (KRaft combined) on free ports."""
    k = start_sasl_kafka(tmp_path_factory.mktemp("kafka-sasl"), stack_dir / "kafka" / "libs", pki)
    yield k
    _stop(k.proc, timeout=30)


# --------------------------------------------------------------- detector --


@dataclass
class Detector:
    """A `detector run` subprocess: its log, metrics and exit code."""

    proc: subprocess.Popen[bytes]
    log: Path
    configured_metrics: str  # host:port from the config; port 0 = whatever `run` logs
    config: Path
    secrets: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def metrics_addr(self) -> str | None:
        if not self.configured_metrics.endswith(":0"):
            return self.configured_metrics
        m = METRICS_LINE.search(self.text())
        return m.group(1) if m else None

    def metrics(self) -> dict[str, float]:
        if self.metrics_addr is None:
            return {}
        try:
            with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=3) as r:
                body = r.read().decode()
        except (OSError, urllib.error.URLError):
            return {}
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, name: str, default: float = 0.0) -> float:
        return self.metrics().get(name, default)

    def consumed(self) -> float:
        m = self.metrics()
        return sum(v for k, v in m.items() if k.startswith("detector_events_total{"))

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"detector exited {self.proc.returncode} while waiting for {what}:\n"
                    + self.text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}:\n" + self.text()[-4000:]
                )
            time.sleep(0.2)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"detector still running after {timeout}s:\n" + self.text()[-4000:]
            ) from None

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def assert_no_secrets(self, *extra: str) -> None:
        """No secret (nor its first 12 characters) appears anywhere in the log."""
        text = self.text()
        for s in (*self.secrets, *extra):
            assert s not in text and s[:12] not in text, f"secret {s[:6]}… found in the log"


@pytest.fixture
def launch_detector(tmp_path: Path) -> Iterator[Callable[..., Detector]]:
    """``launch_detector(config: dict, env: dict) -> Detector``; all are killed at teardown.

    The config is written to a file as is (JSON is YAML); ``env`` is added to the process
    environment, which is where the secrets come from. Every value of ``env`` whose name ends
    in PASSWORD is recorded as a secret for ``assert_no_secrets``.
    """
    started: list[Detector] = []

    def launch(config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Detector:
        n = len(started)
        path = tmp_path / f"detector-{n}.yaml"
        path.write_text(json.dumps(config, indent=2))
        log = tmp_path / f"detector-{n}.log"
        env = dict(env or {})
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(DETECTOR), "run", "--config", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
            )
        metrics = config.get("metrics", {})
        addr = f"{metrics.get('host', '127.0.0.1')}:{metrics.get('port', 29100)}"
        d = Detector(proc, log, addr, path, [v for k, v in env.items() if k.endswith("PASSWORD")])
        started.append(d)
        return d

    yield launch
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
