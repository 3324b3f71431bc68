"""Bytes in, an event or a dead-letter reason out: the parser never raises past this boundary."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from pydantic import ValidationError

from detector.events.fast import consistent, fast_fields
from detector.events.model import OrderEvent

# Stable dead-letter reason codes (CONTRACT.md §3); the set is closed so metrics stay bounded.
REASONS = (
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "too_large",
    "future_ts",
    "tombstone",
)


class Event(NamedTuple):
    """A valid order event reduced to what detection uses; times are epoch seconds.

    A named tuple: one is made per event, and the fast path hands its fields over as a tuple.
    """

    event_id: str
    ts: float
    order_id: str
    account_id: str
    promo_code: str | None
    campaign_id: str | None
    order_total: float | None
    discount: float | None
    account_created_at: float | None
    ip: str | None
    device_id: str | None


@dataclass(frozen=True, slots=True)
class BadEvent:
    reason: str
    detail: str


def _type_detail(err: dict[str, object]) -> tuple[str, str]:
    field = ".".join(str(p) for p in err["loc"]) if err["loc"] else "event"  # type: ignore[attr-defined]
    kind = str(err["type"])
    received = err.get("input")
    shown = repr(received)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if kind == "missing":
        return "missing_field", f"required field '{field}' is missing"
    if kind.endswith("_type") or kind in ("is_instance_of", "model_type", "union_tag_invalid"):
        return "wrong_type", f"field '{field}' has the wrong type: received {shown}; {err['msg']}"
    return "bad_value", f"field '{field}' has an invalid value: received {shown}; {err['msg']}"


def _json_kind(text: str) -> str:
    first = text.lstrip()[:1]
    return {"[": "array", '"': "string", "t": "boolean", "f": "boolean", "n": "null"}.get(
        first, "number"
    )


def parse(
    raw: bytes | None, *, now: float, max_bytes: int, max_future_skew_s: float
) -> Event | BadEvent:
    """Validate one message; ``now`` is the wall clock (epoch seconds) for the future-ts check."""
    if raw is None:
        return BadEvent("tombstone", "message value is null (a tombstone), not an order event")
    if len(raw) > max_bytes:
        return BadEvent("too_large", f"message is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadEvent("not_utf8", f"message is not valid UTF-8 (byte {e.start})")
    fields = fast_fields(text)
    if fields is not None and fields[1] <= now + max_future_skew_s:
        return Event._make(fields)
    return validate_strict(text, now, max_future_skew_s)


def validate_strict(text: str, now: float, max_future_skew_s: float) -> Event | BadEvent:
    """The strict model's verdict; the one place that words dead-letter reasons."""
    try:
        # JSON mode: strict types still hold, and RFC 3339 strings become datetimes.
        ev = OrderEvent.model_validate_json(text)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            return BadEvent("not_json", f"message is not JSON: {err['msg']}")
        if err["type"] == "model_type" and not err["loc"]:
            kind = _json_kind(text)
            return BadEvent("not_object", f"message is a JSON {kind}, not an object")
        return BadEvent(*_type_detail(err))  # type: ignore[arg-type]
    total, discount = ev.order_total, ev.discount
    if not consistent(total, discount):
        return BadEvent("bad_value", f"discount {discount} is larger than order_total {total}")
    ts = ev.ts.timestamp()
    if not math.isfinite(ts) or ts > now + max_future_skew_s:
        return BadEvent(
            "future_ts",
            f"ts {ev.ts.isoformat()} is {ts - now:.0f}s ahead of the wall clock; "
            f"at most {max_future_skew_s:.0f}s is allowed",
        )
    created = ev.account_created_at.timestamp() if ev.account_created_at else None
    return Event(
        event_id=ev.event_id,
        ts=ts,
        order_id=ev.order_id,
        account_id=ev.account_id,
        promo_code=ev.promo_code or None,
        campaign_id=ev.campaign_id or None,
        order_total=total,
        discount=discount,
        account_created_at=created,
        ip=ev.ip or None,
        device_id=ev.device_id or None,
    )
