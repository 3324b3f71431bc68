"""Redis with a password and Redis over TLS: connecting from config, and failing clearly.

The servers are the security fixtures (tests/security/conftest.py), not the shared stack's Redis.
The end-to-end runs of `detector run` into both of them are in test_kafka_sasl_ssl.py; here:

- ``detector.state.redis.connect`` + ``RedisStore`` from a loaded config (password from
  DETECTOR_REDIS__PASSWORD) reach both servers, and every way of getting it wrong (wrong or
  missing password, no client certificate, an untrusted CA, plain TCP to the TLS port) is a
  ``StoreError`` within the socket timeout that names the cause and never holds the password;
- a password written into ``redis.url`` is moved out of it, so it is masked like any secret;
- `detector run` with a wrong Redis password. What an SRE expects, and what the detector does
  (docs/security.md, docs/runbooks/RedisErrors.md): it neither exits nor hangs silently. It keeps
  serving /metrics with ``detector_store_up 0`` and ``detector_store_errors_total{op="ping"}``
  growing (the RedisErrors alert pages), logs "state store unavailable; retrying" with "Redis
  refused the credentials", consumes nothing, and recovers by itself as soon as Redis accepts
  the password (a password rotation that reached the detector before Redis). Exiting instead
  would turn a rotation race into a crash loop and page as DetectorDown, whose runbook points
  away from the cause.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kafka import KafkaProducer

from detector.app import make_store
from detector.config import Config, load_config
from detector.errors import StoreError
from detector.state.redis import RedisStore

if TYPE_CHECKING:  # helpers live in this directory's conftest.py (fixtures at run time)
    from tests.security.conftest import Detector, Pki, RedisServer

pytestmark = pytest.mark.stack


def cfg_for(
    srv: RedisServer, monkeypatch: pytest.MonkeyPatch, password: str | None, **over: Any
) -> Config:
    """A config whose redis section points at ``srv``; the password comes from the environment."""
    if password is None:
        monkeypatch.delenv("DETECTOR_REDIS__PASSWORD", raising=False)
    else:
        monkeypatch.setenv("DETECTOR_REDIS__PASSWORD", password)
    return load_config(None, {"redis": srv.detector_redis("sec:unit:", **over)})


def ping(cfg: Config) -> None:
    store = make_store(cfg, "redis")
    assert isinstance(store, RedisStore)
    try:
        store.ping()
    finally:
        store.close()


@pytest.mark.parametrize("store_name", ["redis_auth", "redis_tls"])
def test_connect_from_config_with_the_password_from_env(
    store_name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv: RedisServer = request.getfixturevalue(store_name)
    cfg = cfg_for(srv, monkeypatch, srv.password)
    assert srv.password not in cfg.effective_json() and srv.password not in repr(cfg)
    ping(cfg)


def failure(cfg: Config) -> str:
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        ping(cfg)
    # Bounded by redis.socket_timeout_s (2 s in these configs), never a hang.
    assert time.monotonic() - t0 < 10
    return str(err.value)


@pytest.mark.parametrize("store_name", ["redis_auth", "redis_tls"])
def test_wrong_or_missing_password_is_a_store_error_naming_the_credentials(
    store_name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv: RedisServer = request.getfixturevalue(store_name)
    wrong = f"wrong-{uuid.uuid4().hex}"
    msg = failure(cfg_for(srv, monkeypatch, wrong))
    assert "Redis refused the credentials during ping" in msg, msg
    assert "invalid username-password pair" in msg
    assert wrong not in msg and srv.password not in msg
    if srv.username is None:  # the TLS server has no default user to fall back on
        msg = failure(cfg_for(srv, monkeypatch, None))
        assert "Redis refused the credentials during ping" in msg, msg


def test_tls_without_client_certificate_or_with_untrusted_ca_or_plain_tcp_fails_clearly(
    redis_tls: RedisServer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = redis_tls.password
    msg = failure(cfg_for(redis_tls, monkeypatch, pw, ssl_certfile=None, ssl_keyfile=None))
    assert msg.startswith("Redis ping failed: ConnectionError"), msg
    msg = failure(cfg_for(redis_tls, monkeypatch, pw, ssl_ca_certs=str(pki.other_ca)))
    assert "CERTIFICATE_VERIFY_FAILED" in msg, msg
    plain = redis_tls.detector_redis("sec:unit:", url=redis_tls.url.replace("rediss:", "redis:"))
    monkeypatch.setenv("DETECTOR_REDIS__PASSWORD", pw)
    msg = failure(load_config(None, {"redis": plain}))
    assert msg.startswith("Redis ping failed: ConnectionError"), msg
    # Whatever failed, the password is not in the error.
    assert pw not in msg


def test_a_password_in_the_url_is_moved_out_and_masked(
    redis_auth: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DETECTOR_REDIS__PASSWORD", raising=False)
    url = f"redis://:{redis_auth.password}@127.0.0.1:{redis_auth.port}/0"
    cfg = load_config(None, {"redis": {"url": url, "key_prefix": "sec:unit:"}})
    assert cfg.redis.url == f"redis://127.0.0.1:{redis_auth.port}/0"
    assert cfg.redis.password is not None
    assert cfg.redis.password.get_secret_value() == redis_auth.password
    assert redis_auth.password not in cfg.effective_json() + repr(cfg) + str(cfg)
    ping(cfg)
    # DETECTOR_REDIS__PASSWORD (or redis.password) wins over a password left in the URL.
    monkeypatch.setenv("DETECTOR_REDIS__PASSWORD", "from-env")
    cfg = load_config(None, {"redis": {"url": url}})
    assert cfg.redis.password is not None
    assert cfg.redis.password.get_secret_value() == "from-env"


@pytest.mark.slow
def test_run_with_wrong_redis_password_reports_unhealthy_then_recovers_when_redis_accepts_it(
    tmp_path: Path,
    topic: Callable[..., str],
    kafka_bootstrap: str,
    launch_detector: Callable[..., Detector],
    start_redis: Callable[..., RedisServer],
) -> None:
    # A server of its own: the test changes its password.
    srv = start_redis(tmp_path / "redis")
    t = topic()
    good = [
        json.dumps(
            {
                "event_id": f"r-{i}-{uuid.uuid4().hex[:6]}",
                "ts": iso_minutes_ago(10 - i),
                "order_id": f"o-{i}",
                "account_id": f"a-{i}",
            }
        ).encode()
        for i in range(5)
    ]
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for v in good:
        p.send(t, v)
    p.flush(30)
    p.close()

    detector_pw = f"rotated-{uuid.uuid4().hex}"
    cfg = {
        "state": "redis",
        "kafka": {
            "bootstrap_servers": kafka_bootstrap,
            "group_id": f"g-{t}",
            "topics": {"events": t, "dead_letters": f"{t}.dlq", "alerts": f"{t}.alerts"},
        },
        "redis": srv.detector_redis(f"sec:{uuid.uuid4().hex[:8]}:", retry_backoff_max_s=1.0),
        "metrics": {"port": 0},
        "alerts": {"kafka": False},
        "events": {"idle_advance_s": 3600},
    }
    d = launch_detector(cfg, {"DETECTOR_REDIS__PASSWORD": detector_pw})
    # Unhealthy within seconds, and saying why; the process stays up and scrapeable.
    d.wait_for(lambda: d.metric('detector_store_errors_total{op="ping"}') >= 2, 30, "ping errors")
    assert d.metric("detector_store_up", default=-1) == 0
    log = d.text()
    assert "state store unavailable; retrying" in log and "Redis refused the credentials" in log
    assert "invalid username-password pair" in log
    time.sleep(2)
    assert d.proc.poll() is None
    assert d.consumed() == 0

    # Redis now accepts the detector's password (the rotation completes): it recovers alone.
    admin = srv.client()
    admin.config_set("requirepass", detector_pw)
    admin.close()
    d.wait_for(lambda: d.consumed() >= len(good), 60, "events consumed after the rotation")
    assert d.metric("detector_store_up") == 1
    assert d.metric('detector_events_total{outcome="ok"}') == len(good)
    assert d.stop() == 0
    d.assert_no_secrets(srv.password)


def iso_minutes_ago(m: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60 * m))
