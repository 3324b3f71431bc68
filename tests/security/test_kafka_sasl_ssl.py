"""`detector run` through a SASL_SSL-only Kafka broker, into password- and TLS-protected Redis.

The broker, the Redis servers and the CA are the security fixtures (tests/security/conftest.py):
separate processes on free loopback ports, never the shared stack. Secrets reach the detector
only through the environment (DETECTOR_KAFKA__SASL_PASSWORD, DETECTOR_REDIS__PASSWORD), never
through the config file. What is proven:

- events are consumed, dead letters and alerts produced, all over SASL_SSL (PLAIN and
  SCRAM-SHA-512), and the state lands in Redis-with-password and in Redis-over-TLS (client
  certificate, ACL user); the process stops cleanly; even at log level debug neither password
  appears in its log;
- a wrong Kafka password (PLAIN and SCRAM) ends the process within seconds with exit code 1 and
  "authentication failed" naming the user and mechanism, instead of kafka-python's endless
  "socket disconnected" bootstrap retries; an untrusted broker certificate and a missing
  password are clear errors too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # helpers live in this directory's conftest.py (fixtures at run time)
    from tests.security.conftest import Detector, Pki, RedisServer, SaslKafka

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def order(i: int, ts: float, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": f"sec-{i}-{uuid.uuid4().hex[:6]}",
        "ts": iso(ts),
        "order_id": f"o-{i}",
        "account_id": f"acc-{i}",
        "promo_code": f"PUB{i % 3}",
        "campaign_id": "PUBLIC",
        "order_total": 1000.0,
        "discount": 100.0,
        "ip": f"10.0.{i % 7}.{i % 200}",
        "device_id": f"dev-{i}",
    }
    ev.update(over)
    return ev


def stream(now: float) -> tuple[list[bytes | None], int, Counter[str]]:
    """30 ordinary orders, a personal code leaking to 3 households, and 2 bad messages."""
    evs = [order(i, now - 900 + 20 * i) for i in range(30)]
    for j, acc in enumerate(("alice", "bob", "carol")):  # three households
        leak = {"promo_code": "NY-0042", "campaign_id": "NY", "account_id": acc}
        evs.append(order(100 + j, now - 250 + 10 * j, ip=f"10.9.{j}.1", device_id=acc, **leak))
    evs.sort(key=lambda e: str(e["ts"]))
    values: list[bytes | None] = [json.dumps(e).encode() for e in evs]
    values.insert(5, b"{not json")
    values.insert(12, json.dumps(order(999, now - 600, order_total="1000")).encode())
    return values, len(evs), Counter({"not_json": 1, "wrong_type": 1})


def config(
    kafka: SaslKafka, topic: str, mechanism: str, store: RedisServer, tmp: Path, **over: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "state": "redis",
        "kafka": kafka.detector_kafka(topic, mechanism),
        "redis": store.detector_redis(f"sec:{uuid.uuid4().hex[:8]}:"),
        "metrics": {"port": 0},
        "alerts": {"jsonl_path": str(tmp / f"{topic}-alerts.jsonl")},
        "events": {"idle_advance_s": 3600},
        "campaigns": {"NY": {"kind": "personal"}},
        # Debug on purpose: not even debug output may carry a secret.
        "logging": {"level": "debug"},
    }
    cfg.update(over)
    return cfg


def secret_env(kafka_pw: str, redis_pw: str) -> dict[str, str]:
    return {"DETECTOR_KAFKA__SASL_PASSWORD": kafka_pw, "DETECTOR_REDIS__PASSWORD": redis_pw}


@pytest.mark.parametrize(
    ("mechanism", "store_name"),
    [("PLAIN", "redis_auth"), ("SCRAM-SHA-512", "redis_tls")],
    ids=["plain-into-redis-password", "scram512-into-redis-tls"],
)
def test_run_over_sasl_ssl_consumes_dead_letters_alerts_into_secured_redis(
    mechanism: str,
    store_name: str,
    sasl_kafka: SaslKafka,
    launch_detector: Callable[..., Detector],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    store: RedisServer = request.getfixturevalue(store_name)
    t = f"sec-{mechanism.lower()}-{uuid.uuid4().hex[:8]}"
    sasl_kafka.create_topics(t, f"{t}.dlq", f"{t}.alerts")
    values, n_good, bad = stream(time.time())
    sasl_kafka.produce(t, values)

    cfg = config(sasl_kafka, t, mechanism, store, tmp_path)
    prefix = cfg["redis"]["key_prefix"]
    env = secret_env(sasl_kafka.users[mechanism][1], store.password)
    d = launch_detector(cfg, env)
    d.wait_for(lambda: d.consumed() >= len(values), 120, f"{len(values)} events consumed")

    assert d.metric('detector_events_total{outcome="ok"}') == n_good
    assert d.metric('detector_events_total{outcome="dead_letter"}') == sum(bad.values())
    assert d.metric("detector_store_up") == 1
    # Dead letters and the alert went out through the SASL_SSL producer.
    dlq = sasl_kafka.read(f"{t}.dlq", sum(bad.values()))
    assert Counter(dict(r.headers)["dlq.reason"].decode() for r in dlq) == bad
    alerts = d.wait_for(lambda: sasl_kafka.read(f"{t}.alerts", 1, timeout=2), 60, "an alert")
    alert = json.loads(alerts[0].value)
    assert (alert["rule"], alert["key"], alert["status"]) == ("code_shared", "NY-0042", "firing")

    # The state is in the secured Redis: counters and the offsets written with them.
    r = store.client()
    try:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        assert len(keys) > 10, keys
        assert r.get(f"{prefix}off:kafka:g-{t}:{t}:0") == str(len(values)).encode()
    finally:
        for i in range(0, len(keys), 500):
            r.unlink(*keys[i : i + 500])
        r.close()

    assert d.stop() == 0
    log = d.text()
    assert "detector stopped cleanly" in log
    d.assert_no_secrets(sasl_kafka.admin_user[1])


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_wrong_kafka_password_exits_1_within_seconds_saying_authentication_failed(
    mechanism: str,
    sasl_kafka: SaslKafka,
    redis_auth: RedisServer,
    launch_detector: Callable[..., Detector],
    tmp_path: Path,
) -> None:
    t = f"sec-wrong-{uuid.uuid4().hex[:8]}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    user = sasl_kafka.users[mechanism][0]
    cfg = config(sasl_kafka, t, mechanism, redis_auth, tmp_path)
    d = launch_detector(cfg, secret_env(wrong, redis_auth.password))
    t0 = time.monotonic()
    rc = d.wait_exit(60)
    took = time.monotonic() - t0
    log = d.text()
    assert rc == 1, log
    # kafka-python alone would retry "socket disconnected" until its 30 s bootstrap timeout.
    assert took < 20, f"took {took:.1f}s"
    assert "authentication failed" in log, log
    assert f"refused the SASL credentials: authentication failed for user '{user}' " in log
    assert f"with mechanism {mechanism}" in log
    assert "DETECTOR_KAFKA__SASL_PASSWORD" in log  # tells the operator where the secret comes from
    assert "Traceback" not in log
    d.assert_no_secrets(sasl_kafka.users[mechanism][1])


def test_untrusted_broker_certificate_exits_1_naming_tls(
    sasl_kafka: SaslKafka,
    redis_auth: RedisServer,
    launch_detector: Callable[..., Detector],
    pki: Pki,
    tmp_path: Path,
) -> None:
    t = f"sec-ca-{uuid.uuid4().hex[:8]}"
    cfg = config(sasl_kafka, t, "PLAIN", redis_auth, tmp_path)
    cfg["kafka"]["ssl_cafile"] = str(pki.other_ca)
    d = launch_detector(cfg, secret_env(sasl_kafka.users["PLAIN"][1], redis_auth.password))
    assert d.wait_exit(60) == 1
    log = d.text()
    assert "TLS to Kafka at" in log and "certificate was not accepted" in log, log
    assert "self-signed certificate in certificate chain" in log  # the verifier's reason
    d.assert_no_secrets()


def test_sasl_without_a_password_is_a_clear_error(
    sasl_kafka: SaslKafka,
    redis_auth: RedisServer,
    launch_detector: Callable[..., Detector],
    tmp_path: Path,
) -> None:
    t = f"sec-nopw-{uuid.uuid4().hex[:8]}"
    cfg = config(sasl_kafka, t, "PLAIN", redis_auth, tmp_path)
    d = launch_detector(cfg, {"DETECTOR_REDIS__PASSWORD": redis_auth.password})
    assert d.wait_exit(60) == 1
    log = d.text()
    assert "needs kafka.sasl_username and kafka.sasl_password" in log, log
    assert "DETECTOR_KAFKA__SASL_PASSWORD" in log
