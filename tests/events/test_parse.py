"""The event contract (CONTRACT.md §1): valid events parse, every bad kind gets its reason."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.events.parse import REASONS, BadEvent, Event, parse

NOW = time.time()
GOOD = {
    "event_id": "e1",
    "ts": "2026-01-12T10:00:00Z",
    "order_id": "o1",
    "account_id": "a1",
    "promo_code": "NYX7K2Q9",
    "campaign_id": "NY-2013",
    "order_total": 1000,
    "discount": 500.0,
    "currency": "RUB",
    "account_created_at": "2025-01-01T00:00:00+03:00",
    "ip": "10.0.0.1",
    "device_id": "d1",
}


def p(raw: bytes | None) -> Event | BadEvent:
    return parse(raw, now=NOW, max_bytes=4096, max_future_skew_s=300)


def with_(**kw: object) -> bytes:
    d = dict(GOOD)
    for k, v in kw.items():
        if v is ...:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d).encode()


def test_valid_event_parses_with_times_as_epoch_seconds() -> None:
    ev = p(with_(extra_field={"ignored": True}))
    assert isinstance(ev, Event)
    assert ev.ts == 1768212000.0
    assert ev.account_created_at == 1735678800.0  # +03:00 honoured
    assert ev.order_total == 1000.0 and ev.discount == 500.0


def test_optional_fields_may_be_absent_or_null() -> None:
    raw = json.dumps({k: GOOD[k] for k in ("event_id", "ts", "order_id", "account_id")})
    ev = p(raw.encode())
    assert isinstance(ev, Event) and ev.promo_code is None
    ev = p(with_(promo_code=None, campaign_id=None, ip=None, account_created_at=None))
    assert isinstance(ev, Event) and ev.promo_code is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "tombstone"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"a string"', "not_object"),
        (with_(event_id=...), "missing_field"),
        (with_(ts=...), "missing_field"),
        (with_(account_id=42), "wrong_type"),
        (with_(order_total="1000"), "wrong_type"),
        (with_(order_total=True), "wrong_type"),
        (with_(order_total=-1), "bad_value"),
        (with_(discount=2000), "bad_value"),
        (with_(ts="2026-01-12T10:00:00"), "bad_value"),
        (with_(ts="yesterday"), "bad_value"),
        (with_(ts=1768212000), "wrong_type"),
        (with_(ts="2099-01-01T00:00:00Z"), "future_ts"),
        (b'{"event_id": "' + b"x" * 5000 + b'"}', "too_large"),
        (b"[" * 3000, "not_json"),
    ],
)
def test_bad_events_get_their_reason_and_a_detail(raw: bytes | None, reason: str) -> None:
    res = p(raw)
    assert isinstance(res, BadEvent)
    assert res.reason == reason
    assert res.reason in REASONS
    assert res.detail


def test_non_finite_amounts_are_bad_values() -> None:
    raw = with_().replace(b"1000", b"Infinity")
    res = p(raw)
    assert isinstance(res, BadEvent) and res.reason in ("bad_value", "not_json")


def test_old_timestamps_are_valid_events_not_dead_letters() -> None:
    assert isinstance(p(with_(ts="2001-01-01T00:00:00Z")), Event)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_parser_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    assert isinstance(p(raw), Event | BadEvent)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parser_never_raises_on_arbitrary_json(value: object) -> None:
    assert isinstance(p(json.dumps(value).encode()), Event | BadEvent)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), json_values, max_size=12))
def test_parser_never_raises_on_event_shaped_objects(fields: dict[str, object]) -> None:
    obj = {**GOOD, **fields}
    res = p(json.dumps(obj).encode())
    assert isinstance(res, Event | BadEvent)
