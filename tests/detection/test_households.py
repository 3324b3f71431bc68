"""A personal code's second household, on small hand-made streams, embedded store and Redis.

Accounts linked by a device or an IP they used the code from are one household, even when the
link is older than the counting window (``windows.memory_s``): a family member on the owner's home
IP is not a leak; a stranger on a new device and a new network is, at once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from detector.alerts.record import Alert

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)


def ts(after: timedelta) -> str:
    return (T0 + after).isoformat(timespec="milliseconds").replace("+00:00", "Z")


HOME, WORK, ELSEWHERE = "188.58.130.64", "178.150.253.229", "95.31.7.20"


def order(at: timedelta, account: str, device: str | None, ip: str | None, code: str) -> str:
    n = uuid.uuid4().hex
    ev: dict[str, Any] = {
        "event_id": str(uuid.UUID(n)),
        "ts": ts(at),
        "order_id": n[:12],
        "account_id": account,
        "account_created_at": "2025-06-01T00:00:00Z",
        "promo_code": code,
        "campaign_id": "NY-MAIL",
        "order_total": 3000.0,
        "discount": 500.0,
        "currency": "RUB",
        "ip": ip,
        "device_id": device,
    }
    return orjson.dumps(ev).decode()


@pytest.fixture
def code_alerts(replay_lines: Any) -> Any:
    """Replay hand-made uses of personal code NY1 (plus background traffic)."""

    def go(uses: list[tuple[timedelta, str, str | None, str | None]]) -> list[Alert]:
        # Other owners of the campaign's codes, each once, every 20 minutes over the day.
        lines = [
            order(timedelta(minutes=m), f"own-{m}", f"d-{m}", f"10.1.{m % 250}.9", f"NY{m}X")
            for m in range(0, 24 * 60, 20)
        ]
        lines += [order(dt, acc, dev, ip, "NY1") for dt, acc, dev, ip in uses]
        alerts = replay_lines(lines, {"campaigns": {"NY-MAIL": {"kind": "personal"}}})
        return [a for a in alerts if a.key == "NY1" and a.status == "firing"]

    return go


def owner_at_home_then_away(*then: tuple[timedelta, str, str | None, str | None]) -> list[Any]:
    """The owner uses the code from home, again 11 hours later from another network, then
    ``then``."""
    return [
        (timedelta(0), "owner", "dev-owner", HOME),
        (timedelta(hours=11), "owner", "dev-owner", WORK),
        *then,
    ]


def test_a_family_member_on_the_owners_home_ip_hours_later_does_not_page(code_alerts: Any) -> None:
    # Within the 6 h window: 2 accounts, 2 devices, 2 IPs; the link (the home IP) is 16 h old.
    uses = owner_at_home_then_away((timedelta(hours=16), "partner", "dev-partner", HOME))
    assert code_alerts(uses) == []


def test_a_family_member_on_the_owners_computer_from_another_network_does_not_page(
    code_alerts: Any,
) -> None:
    uses = owner_at_home_then_away((timedelta(hours=14), "partner", "dev-owner", ELSEWHERE))
    assert code_alerts(uses) == []


def test_a_stranger_on_a_new_device_and_network_pages_at_once(code_alerts: Any) -> None:
    at = timedelta(hours=16)
    uses = owner_at_home_then_away((at, "stranger", "dev-stranger", ELSEWHERE))
    (alert,) = code_alerts(uses)
    assert alert.rule == "code_shared" and alert.severity == "page"
    assert alert.detected_at == ts(at)
    assert "2 households" in alert.summary


def test_a_stranger_after_a_family_member_still_pages(code_alerts: Any) -> None:
    # The family member is the owner's household; the stranger is a second one.
    uses = owner_at_home_then_away(
        (timedelta(hours=12), "partner", "dev-partner", HOME),
        (timedelta(hours=13), "stranger", "dev-stranger", ELSEWHERE),
    )
    (alert,) = code_alerts(uses)
    assert alert.detected_at == ts(timedelta(hours=13))


def test_a_use_without_device_or_ip_is_not_a_second_household(code_alerts: Any) -> None:
    # Unknown device and network: nothing tells this account apart from the owner's household.
    uses = owner_at_home_then_away((timedelta(hours=12), "partner", None, None))
    assert code_alerts(uses) == []


def test_a_link_older_than_the_household_memory_is_forgotten(code_alerts: Any) -> None:
    # The owner's home use 30 h before the family member's: past windows.household_s (24 h).
    uses = [
        (timedelta(0), "owner", "dev-owner", HOME),
        (timedelta(hours=26), "owner", "dev-owner", WORK),
        (timedelta(hours=30), "partner", "dev-partner", HOME),
    ]
    (alert,) = code_alerts(uses)
    assert alert.detected_at == ts(timedelta(hours=30))


def test_a_stranger_pages_at_once_when_the_owners_device_is_unknown(code_alerts: Any) -> None:
    # The owner's device is unknown, the stranger's known and their networks differ: two
    # devices at least, two networks, two households.
    at = timedelta(hours=2)
    uses = [(timedelta(0), "owner", None, HOME), (at, "stranger", "dev-stranger", ELSEWHERE)]
    (alert,) = code_alerts(uses)
    assert alert.detected_at == ts(at)
    assert "2 households" in alert.summary


def test_two_unknown_devices_on_two_networks_are_not_two_households(code_alerts: Any) -> None:
    # Both devices unknown: possibly the one family laptop, taken from home to work.
    uses = [(timedelta(0), "owner", None, HOME), (timedelta(hours=2), "partner", None, WORK)]
    assert code_alerts(uses) == []
