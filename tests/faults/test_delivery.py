"""Delivery failures: alerts and dead letters that do not reach their destination are not lost.

1. The alerts file torn by a crash mid-write (a last line without its newline) is repaired when
   the sink opens it: the file stays valid JSON lines, every (alert_id, status) once.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detector.alerts.record import Alert
from detector.sinks.jsonl import JsonlAlertSink


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
