"""The bot-farm rule's fresh-account test on small hand-made streams (embedded store)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from detector.alerts.record import Alert
from detector.app import replay
from detector.config import load_config

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _ts(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def order(at: datetime, account: str, age: timedelta, code: str, campaign: str) -> dict[str, Any]:
    n = uuid.uuid4().hex
    return {
        "event_id": str(uuid.UUID(n)),
        "ts": _ts(at),
        "order_id": n[:12],
        "account_id": account,
        "account_created_at": _ts(at - age),
        "promo_code": code,
        "campaign_id": campaign,
        "order_total": 2000.0,
        "discount": 200.0,
        "currency": "RUB",
        # every account on its own device and network: nothing shared to give a farm away
        "ip": f"93.{len(account)}.{sum(map(ord, account)) % 250}.7",
        "device_id": f"dev-{account}",
    }


def alerts_for(tmp_path: Path, events: list[dict[str, Any]], kinds: dict[str, str]) -> list[Alert]:
    # An hour of regulars first, so that the stream looks like a shop and not a cold start.
    regulars = [
        order(T0 - timedelta(minutes=60 - m), f"regular-{m}", timedelta(days=400), "SALE26", "SALE")
        for m in range(0, 60, 2)
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in regulars + events))
    out = tmp_path / "alerts.jsonl"
    cfg = load_config(None, {"campaigns": {c: {"kind": k} for c, k in kinds.items()}})
    replay(cfg, str(path), alerts_out=str(out))
    return [Alert.from_json(line) for line in out.read_bytes().splitlines()]


def test_three_accounts_registered_minutes_before_their_orders_page_a_public_code(
    tmp_path: Path,
) -> None:
    fresh = [
        order(T0 + timedelta(minutes=m), f"bot-{m}", timedelta(minutes=6), "SALE26", "SALE")
        for m in (0, 2, 4)
    ]
    alerts = alerts_for(tmp_path, fresh, {"SALE": "public"})
    pages = [a for a in alerts if a.rule == "bot_farm" and a.status == "firing"]
    assert [(a.key, a.severity, a.value, a.threshold) for a in pages] == [
        ("SALE26", "page", 3.0, 3.0)
    ]
    assert pages[0].detected_at == fresh[-1]["ts"]  # at the third fresh account, not later
    assert "3 of 3 new accounts" in pages[0].summary


def test_a_few_fresh_accounts_among_many_newcomers_of_the_day_do_not_page(tmp_path: Path) -> None:
    fresh = [
        order(T0 + timedelta(minutes=m), f"fresh-{m}", timedelta(minutes=6), "SALE26", "SALE")
        for m in (0, 2, 4)
    ]
    day_old = [
        order(T0 + timedelta(seconds=s), f"newcomer-{s}", timedelta(hours=10), "SALE26", "SALE")
        for s in range(-300, 0, 30)
    ]
    # 3 of the code's 13 new accounts within 10 minutes are fresh: below 30 %
    alerts = alerts_for(tmp_path, day_old + fresh, {})
    assert [a for a in alerts if a.rule == "bot_farm"] == []


def test_fresh_strangers_on_a_personal_code_page_as_a_leak_not_as_a_farm(tmp_path: Path) -> None:
    fresh = [
        order(T0 + timedelta(minutes=m), f"stranger-{m}", timedelta(minutes=6), "NY7QK2", "NY")
        for m in (0, 2, 4)
    ]
    alerts = alerts_for(tmp_path, fresh, {"NY": "personal", "SALE": "public"})
    assert {(a.rule, a.key) for a in alerts if a.status == "firing"} == {("code_shared", "NY7QK2")}
