"""Secrets stay secret, and the metrics endpoint stays where it is put.

- ``kafka.sasl_password`` and ``redis.password`` are ``SecretStr`` whether they come from the file
  or from DETECTOR_KAFKA__SASL_PASSWORD / DETECTOR_REDIS__PASSWORD (env wins), and they never
  appear in ``repr``/``str`` of the config, its JSON dump, ``effective_json`` or the printout of
  `detector check-config`, not even when the value is invalid (the error names the key, not the
  value). A password written into ``redis.url`` is moved out of it (test_redis_auth_tls.py).
- No password appears in the log of `detector run`: checked on every run of the security tests
  (``Detector.assert_no_secrets``), including a run at log level debug over SASL PLAIN
  (test_kafka_sasl_ssl.py) and runs failing on wrong credentials.
- /metrics binds where configured, by default 127.0.0.1:29100 (loopback only): a detector bound
  to 127.0.0.1 listens on that address alone and is not reachable through another loopback
  address (127.0.0.2), and one bound to 127.0.0.2 is not reachable through 127.0.0.1.
- Unknown config keys are errors (a typo such as ``redis.pasword`` never silently drops a
  secret): tests/config/test_config.py::test_unknown_key_is_an_error_naming_it_and_the_allowed_keys.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from detector.config import Config, load_config
from detector.metrics import Metrics, serve

if TYPE_CHECKING:  # helpers live in this directory's conftest.py (fixtures at run time)
    from tests.security.conftest import Detector

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / ".venv" / "bin" / "detector"
FILE_KAFKA_PW = "file-kafka-pw-7f3a9c"
FILE_REDIS_PW = "file-redis-pw-2b8e1d"
ENV_KAFKA_PW = "env-kafka-pw-c41d07"
ENV_REDIS_PW = "env-redis-pw-9e62fa"
ALL_SECRETS = (FILE_KAFKA_PW, FILE_REDIS_PW, ENV_KAFKA_PW, ENV_REDIS_PW)
SECRET_ENV = ("DETECTOR_KAFKA__SASL_PASSWORD", "DETECTOR_REDIS__PASSWORD")


def write_config(tmp_path: Path, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "kafka": {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "detector",
            "sasl_password": FILE_KAFKA_PW,
        },
        "redis": {"url": "rediss://redis.internal:6380/0", "password": FILE_REDIS_PW},
    }
    data.update(extra)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(data))
    return path


def renderings(cfg: Config) -> str:
    """Every way the config is commonly turned into text."""
    return "\n".join(
        [
            repr(cfg),
            str(cfg),
            f"{cfg}",
            repr(cfg.kafka),
            repr(cfg.redis),
            str(cfg.model_dump()),
            cfg.model_dump_json(),
            cfg.effective_json(),
        ]
    )


@pytest.fixture
def no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_secret_env")
def test_secrets_from_the_file_are_secretstr_and_masked_everywhere(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path))
    assert isinstance(cfg.kafka.sasl_password, SecretStr)
    assert isinstance(cfg.redis.password, SecretStr)
    assert cfg.kafka.sasl_password.get_secret_value() == FILE_KAFKA_PW
    assert cfg.redis.password.get_secret_value() == FILE_REDIS_PW
    text = renderings(cfg)
    assert FILE_KAFKA_PW not in text and FILE_REDIS_PW not in text
    assert json.loads(cfg.effective_json())["redis"]["password"] == "**********"


def test_secrets_from_env_win_over_the_file_and_are_masked_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETECTOR_KAFKA__SASL_PASSWORD", ENV_KAFKA_PW)
    monkeypatch.setenv("DETECTOR_REDIS__PASSWORD", ENV_REDIS_PW)
    cfg = load_config(write_config(tmp_path))
    assert isinstance(cfg.kafka.sasl_password, SecretStr)
    assert isinstance(cfg.redis.password, SecretStr)
    assert cfg.kafka.sasl_password.get_secret_value() == ENV_KAFKA_PW
    assert cfg.redis.password.get_secret_value() == ENV_REDIS_PW
    # The rest of the file's sections still applies (env is merged, not a replacement).
    assert cfg.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert cfg.redis.url == "rediss://redis.internal:6380/0"
    text = renderings(cfg)
    assert not [s for s in ALL_SECRETS if s in text]


def check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    return subprocess.run(
        [str(DETECTOR), "check-config", str(path)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_printout_masks_secrets_from_file_and_env(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    for env in (
        {},
        {"DETECTOR_KAFKA__SASL_PASSWORD": ENV_KAFKA_PW, "DETECTOR_REDIS__PASSWORD": ENV_REDIS_PW},
    ):
        out = check_config(path, env)
        assert out.returncode == 0, out.stderr
        printed = json.loads(out.stdout)
        assert printed["kafka"]["sasl_password"] == "**********"
        assert printed["redis"]["password"] == "**********"
        assert not [s for s in ALL_SECRETS if s in out.stdout + out.stderr]


def test_an_invalid_secret_is_named_but_not_echoed(tmp_path: Path) -> None:
    # YAML reads an all-digit password as a number: invalid, and still a secret.
    path = tmp_path / "bad.yaml"
    path.write_text("redis:\n  password: 4815162342\nkafka:\n  sasl_password: [hunter2-x]\n")
    out = check_config(path, {})
    assert out.returncode == 3
    assert "config key 'redis.password'" in out.stderr
    assert "config key 'kafka.sasl_password'" in out.stderr
    assert "4815162342" not in out.stderr and "hunter2-x" not in out.stderr


# --------------------------------------------------------------- metrics bind --


def connects(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


def listening(port: int) -> list[str]:
    """Local addresses of TCP sockets listening on ``port`` (from ss)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(line.split()[3] for line in out.splitlines() if line.strip())


def test_metrics_default_is_loopback_29100() -> None:
    m = Config().metrics
    assert (m.host, m.port) == ("127.0.0.1", 29100)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.0/8 is Linux loopback")
@pytest.mark.parametrize(
    ("bound", "other"), [("127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.1")]
)
def test_metrics_server_binds_only_the_configured_address(bound: str, other: str) -> None:
    server = serve(Metrics(CollectorRegistry()), bound, 0)
    try:
        port = server.server_port
        assert listening(port) == [f"{bound}:{port}"]
        assert connects(bound, port)
        assert not connects(other, port)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.stack
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.0/8 is Linux loopback")
def test_running_detector_serves_metrics_on_loopback_only(
    topic: Callable[..., str],
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    launch_detector: Callable[..., Detector],
) -> None:
    t = topic()
    d = launch_detector(
        {
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "group_id": f"g-{t}",
                "topics": {"events": t, "dead_letters": f"{t}.dlq", "alerts": f"{t}.alerts"},
            },
            "redis": {"url": redis_url, "key_prefix": redis_prefix},
            "metrics": {"port": 0},  # the host is left at its default
            "alerts": {"kafka": False},
        }
    )
    d.wait_for(lambda: d.metric("detector_store_up") == 1, 60, "a healthy detector")
    assert d.metrics_addr is not None
    host, _, port = d.metrics_addr.rpartition(":")
    assert host == "127.0.0.1"
    assert listening(int(port)) == [f"127.0.0.1:{port}"]
    assert connects("127.0.0.1", int(port)) and not connects("127.0.0.2", int(port))
    assert d.stop() == 0
