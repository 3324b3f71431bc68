"""Hot reload of a running ``detector run`` (real Kafka + Redis).

One detector per test; each phase rewrites its config file, waits for the reloader's verdict
(mtime poll or SIGHUP) in ``detector_config_reloads_total{result}``, then produces the events
that show which rule is in force. Every produced event is counted once: ``ok`` equals the
number produced, with no duplicate, late or dead-lettered one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

pytestmark = pytest.mark.stack

DetectorProcess = Any  # tests/conftest.py's DetectorProcess

CAMPAIGN = "PERSONAL-RELOAD"
OLD_ACCOUNT = "2020-01-01T00:00:00Z"  # not a new account: keeps bot_farm out of the picture


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Traffic:
    """Orders on a test topic; event time is the wall clock."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.sent = 0
        self._p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)

    def order(self, code: str, account: str, household: str) -> None:
        ev = {
            "event_id": str(uuid.uuid4()),
            "ts": _ts(datetime.now(UTC)),
            "order_id": uuid.uuid4().hex[:12],
            "account_id": account,
            "account_created_at": OLD_ACCOUNT,
            "promo_code": code,
            "campaign_id": CAMPAIGN,
            "order_total": 2000.0,
            "discount": 200.0,
            "currency": "RUB",
            "ip": f"10.{household}.0.1",
            "device_id": f"dev-{household}",
        }
        self._p.send(self.topic, json.dumps(ev).encode()).get(timeout=30)
        self.sent += 1

    def two_households(self, code: str) -> None:
        """The code's owner at home, then someone in another household: 2 accounts."""
        self.order(code, f"owner-{code}", "1")
        self.order(code, f"friend-{code}", "2")

    def close(self) -> None:
        self._p.close()


def _alerts(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _firing(path: Path, code: str) -> list[dict[str, Any]]:
    return [a for a in _alerts(path) if a["key"] == code and a["status"] == "firing"]


def _alerts_file(cfg_path: Path) -> Path:
    return Path(json.loads(cfg_path.read_text())["alerts"]["jsonl_path"])


def _config_hashes(d: DetectorProcess) -> list[str]:
    return [
        m.group(1)
        for name, v in d.metrics().items()
        if v == 1 and (m := re.fullmatch(r'detector_config_info\{hash="([0-9a-f]+)"\}', name))
    ]


def _config_hash(d: DetectorProcess) -> str:
    # Exported once the consumer is set up, a moment after the metrics endpoint answers.
    hashes: list[str] = d.wait_for(lambda: _config_hashes(d), 30, "detector_config_info")
    assert len(hashes) == 1, hashes
    return hashes[0]


def _sample(d: DetectorProcess, name: str, **labels: str) -> float:
    """The value of ``name{labels}`` whatever the label order in the exposition (0 if absent)."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for key, v in d.metrics().items():
        metric, _, rest = key.partition("{")
        if metric == name and set(rest.rstrip("}").split(",")) == want:
            return float(v)
    return 0.0


def _reloads(d: DetectorProcess, result: str) -> float:
    return _sample(d, "detector_config_reloads_total", result=result)


def _write(path: Path, cfg: dict[str, Any] | str) -> None:
    """Replace the config file atomically (as an editor or a config-management tool would)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    os.replace(tmp, path)


def _settled(d: DetectorProcess, traffic: Traffic) -> None:
    """Every produced event consumed, and a moment for its alerts to be delivered."""
    d.wait_events(traffic.sent, timeout=60)
    time.sleep(1.5)


def _assert_counted_once(d: DetectorProcess, traffic: Traffic) -> None:
    m = d.metrics()
    assert m.get('detector_events_total{outcome="ok"}') == traffic.sent, m
    for outcome in ("duplicate", "late", "dead_letter"):
        assert m.get(f'detector_events_total{{outcome="{outcome}"}}', 0.0) == 0, (outcome, m)


def test_reload_applies_live_keys_and_refuses_bad_or_restart_only_changes(
    topic: Callable[..., str],
    detector_config: Callable[..., Path],
    start_detector: Callable[..., DetectorProcess],
    kafka_bootstrap: str,
) -> None:
    t = topic()
    cfg_path = detector_config(
        t,
        campaigns={CAMPAIGN: {"kind": "personal"}},
        rules={"code_shared": {"min_accounts": 3, "second_household": False}},
    )
    out = _alerts_file(cfg_path)
    d = start_detector(cfg_path)
    traffic = Traffic(kafka_bootstrap, t)
    try:
        hash0 = _config_hash(d)

        # 1. Old rule: 2 accounts in 2 households, min_accounts 3, no second-household rule.
        traffic.two_households("CODE-A")
        _settled(d, traffic)
        assert _firing(out, "CODE-A") == []

        # 2. Turn the second-household rule on; the mtime poll picks it up (no signal).
        good = json.loads(cfg_path.read_text())
        good["rules"]["code_shared"]["second_household"] = True
        _write(cfg_path, good)
        d.wait_for(lambda: _reloads(d, "applied") == 1, 30, "the reload to be applied")
        hash1 = _config_hash(d)
        assert hash1 != hash0
        # The next event on the code raises the alert: the same 2 accounts, not re-counted.
        traffic.order("CODE-A", "owner-CODE-A", "1")
        d.wait_for(lambda: _firing(out, "CODE-A"), 30, "CODE-A to alert under the new rule")
        (alert,) = _firing(out, "CODE-A")
        assert alert["rule"] == "code_shared"
        assert alert["value"] == 2.0

        # 3. An invalid file (SIGHUP this time) is rejected: the old config stays in force.
        _write(cfg_path, '{"rules": {"code_shared": {"min_accounts": "x"}}}')
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(lambda: _reloads(d, "rejected") == 1, 30, "the invalid config to be rejected")
        assert _config_hash(d) == hash1
        assert "rules.code_shared.min_accounts" in d.log.read_text()
        traffic.two_households("CODE-B")
        d.wait_for(lambda: _firing(out, "CODE-B"), 30, "CODE-B to alert by the rule in force")

        # 4. A change to `windows` needs a restart: the file is refused as a whole, so the
        #    second-household rule switched off in the same edit stays on.
        refused = json.loads(json.dumps(good))
        refused["windows"] = {"short_s": 1200}
        refused["rules"]["code_shared"]["second_household"] = False
        _write(cfg_path, refused)
        d.wait_for(
            lambda: _reloads(d, "restart_required") == 1, 30, "the restart-only change refused"
        )
        assert _reloads(d, "applied") == 1
        assert _config_hash(d) == hash1
        traffic.two_households("CODE-C")
        d.wait_for(lambda: _firing(out, "CODE-C"), 30, "CODE-C to alert by the rule in force")

        _settled(d, traffic)
        _assert_counted_once(d, traffic)
        fired = sorted(a["key"] for a in _alerts(out) if a["status"] == "firing")
        assert fired == ["CODE-A", "CODE-B", "CODE-C"]  # one episode each, none twice
        assert d.stop() == 0
    finally:
        traffic.close()


def test_reloaded_silence_mutes_its_key_until_it_expires(
    topic: Callable[..., str],
    detector_config: Callable[..., Path],
    start_detector: Callable[..., DetectorProcess],
    kafka_bootstrap: str,
) -> None:
    t = topic()
    cfg_path = detector_config(t, campaigns={CAMPAIGN: {"kind": "personal"}})
    out = _alerts_file(cfg_path)
    d = start_detector(cfg_path)
    traffic = Traffic(kafka_bootstrap, t)
    try:
        # The reloader watches from when it starts (a moment after the metrics endpoint).
        hash0 = _config_hash(d)
        now = datetime.now(UTC)
        cfg = json.loads(cfg_path.read_text())
        cfg["silences"] = [
            {
                "key": "CODE-MUTED",
                "until": _ts(now + timedelta(hours=2)),
                "reason": "fraud team: blogger giveaway, ticket FRAUD-123",
                "rule": "code_shared",
            },
            {"key": "CODE-EXPIRED", "until": _ts(now - timedelta(hours=1)), "reason": "old"},
        ]
        _write(cfg_path, cfg)
        d.wait_for(lambda: _reloads(d, "applied") == 1, 30, "the silences to be applied")
        assert _config_hash(d) != hash0

        def suppressed() -> float:
            return _sample(
                d, "detector_alerts_suppressed_total", rule="code_shared", reason="silenced"
            )

        assert suppressed() == 0

        traffic.two_households("CODE-MUTED")
        traffic.two_households("CODE-EXPIRED")
        d.wait_for(lambda: _firing(out, "CODE-EXPIRED"), 30, "the expired silence to be ignored")
        _settled(d, traffic)
        assert _firing(out, "CODE-MUTED") == []
        assert suppressed() >= 1
        _assert_counted_once(d, traffic)
        assert d.stop() == 0
    finally:
        traffic.close()
