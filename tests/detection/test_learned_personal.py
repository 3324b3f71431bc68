"""An undeclared campaign learned as personal from its codes (``windows.campaign_memory_s``).

A small personal campaign sees a code an hour or so: over ``windows.memory_s`` (6 h) it has too
few codes to be learned, so its kind is learned over the campaign memory (48 h) instead.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from detector.alerts.record import Alert

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
STRANGER_AT = timedelta(hours=30)  # 06:00 on the second day


def order(at: timedelta, account: str, code: str) -> str:
    n = uuid.uuid4().hex
    return orjson.dumps(
        {
            "event_id": str(uuid.UUID(n)),
            "ts": (T0 + at).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "order_id": n[:12],
            "account_id": account,
            "account_created_at": "2025-06-01T00:00:00Z",
            "promo_code": code,
            "campaign_id": "LOYAL",
            "order_total": 3000.0,
            "discount": 500.0,
            "currency": "RUB",
            "ip": f"10.{len(account)}.{sum(map(ord, account)) % 250}.9",
            "device_id": f"dev-{account}",
        }
    ).decode()


def stranger_alerts(replay_lines: Any, every: timedelta, accounts_per_code: int) -> list[Alert]:
    """Codes LOY0, LOY1, ... each used by ``accounts_per_code`` accounts, a code every
    ``every``, then a stranger on the code used two codes before."""
    n = int(STRANGER_AT / every)
    lines = [
        order(i * every + timedelta(minutes=k), f"acc-{i}-{k}", f"LOY{i}")
        for i in range(n)
        for k in range(accounts_per_code)
    ]
    code = f"LOY{n - 2}"
    alerts = replay_lines([*lines, order(STRANGER_AT, "stranger", code)], {})
    return [a for a in alerts if a.key == code and a.status == "firing"]


@pytest.mark.parametrize("every_min", [45, 80, 150])
def test_a_stranger_on_a_small_personal_campaigns_code_pages_at_night(
    replay_lines: Any, every_min: int
) -> None:
    # Within the last 6 h the campaign used 1-7 other codes, each by one account; over two days
    # 11-39: it is personal, and the stranger is a second household.
    (alert,) = stranger_alerts(replay_lines, timedelta(minutes=every_min), 1)
    assert alert.rule == "code_shared" and alert.severity == "page"
    assert alert.detected_at == (T0 + STRANGER_AT).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )
    assert "campaign LOYAL looks personal" in alert.summary


def test_a_campaign_whose_codes_each_have_several_accounts_is_not_learned_personal(
    replay_lines: Any,
) -> None:
    # Regional codes of a public campaign, each used by three accounts: another account on one
    # of them is its public use.
    assert stranger_alerts(replay_lines, timedelta(minutes=80), 3) == []
