"""The fast path of ``parse``: orjson and exact checks, for events the strict model would accept.

It only ever says yes: ``fast_fields`` returns the ``Event`` fields that ``OrderEvent`` would
give, or None for anything it does not positively recognise as valid (a wrong type, a bound, an
unusual time format, deep nesting, what orjson cannot read), and the caller then runs the pydantic
path, which alone words dead-letter reasons. ``tests/events/test_fast_parse.py`` checks, over
generated inputs and edge cases, that both paths always agree.
"""

from __future__ import annotations

import math
import re
import sys
from datetime import datetime

import orjson

from detector.events.model import OrderEvent

# RFC 3339 as pydantic reads it, narrowed to the usual shape (upper-case 'T' or a space, seconds,
# at most nine fraction digits, 'Z' or ±hh:mm), which ``datetime.fromisoformat`` reads the same
# way: microseconds kept, further digits dropped; out-of-range fields raise.
_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})\Z"
)
# pydantic's JSON parser stops at a nesting depth (about 200) that orjson allows, even in ignored or
# duplicate fields (invisible once loaded): documents that could nest that deep are left to it.
_MAX_OPENERS = 100

# ``Event``'s fields in order: event_id, ts, order_id, account_id, promo_code, campaign_id,
# order_total, discount, account_created_at, ip, device_id.
Fields = tuple[
    str,
    float,
    str,
    str,
    str | None,
    str | None,
    float | None,
    float | None,
    float | None,
    str | None,
    str | None,
]


def _epoch(s: object) -> float | None:
    """An RFC 3339 string as epoch seconds, exactly as pydantic's ``datetime.timestamp()``."""
    if type(s) is not str or _TIME.match(s) is None:
        return None
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def _amount(v: object) -> float | None:
    """A JSON number ≥ 0 and finite as a float; None for anything else (bool, null, string)."""
    t = type(v)
    if t is float:
        f: float = v  # type: ignore[assignment]
    elif t is int:
        f = float(v)  # type: ignore[arg-type]
    else:
        return None
    return f if f >= 0 and math.isfinite(f) else None


def consistent(total: float | None, discount: float | None) -> bool:
    """An order's discount may not exceed its total (CONTRACT.md §1)."""
    return total is None or discount is None or discount <= total


def _bounds(name: str) -> tuple[int, int]:
    """A string field's length bounds, as the model declares them."""
    lo, hi = 0, sys.maxsize
    for m in OrderEvent.model_fields[name].metadata:  # annotated_types MinLen / MaxLen
        lo = getattr(m, "min_length", None) or lo
        hi = getattr(m, "max_length", None) or hi
    return lo, hi


_ID, _ORDER, _ACCOUNT, _PROMO, _CAMPAIGN, _CURRENCY, _IP, _DEVICE = map(
    _bounds,
    (
        "event_id",
        "order_id",
        "account_id",
        "promo_code",
        "campaign_id",
        "currency",
        "ip",
        "device_id",
    ),
)


def fast_fields(text: str) -> Fields | None:
    if text.count("[") + text.count("{") > _MAX_OPENERS:
        return None
    try:
        d = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(d) is not dict:
        return None
    get = d.get
    event_id, order_id, account_id = get("event_id"), get("order_id"), get("account_id")
    promo, campaign, currency = get("promo_code"), get("campaign_id"), get("currency")
    ip, device = get("ip"), get("device_id")
    # Inline rather than a helper per field: this runs for every event.
    if not (
        type(event_id) is str
        and _ID[0] <= len(event_id) <= _ID[1]
        and type(order_id) is str
        and _ORDER[0] <= len(order_id) <= _ORDER[1]
        and type(account_id) is str
        and _ACCOUNT[0] <= len(account_id) <= _ACCOUNT[1]
        and (promo is None or (type(promo) is str and len(promo) <= _PROMO[1]))
        and (campaign is None or (type(campaign) is str and len(campaign) <= _CAMPAIGN[1]))
        and (currency is None or (type(currency) is str and len(currency) <= _CURRENCY[1]))
        and (ip is None or (type(ip) is str and len(ip) <= _IP[1]))
        and (device is None or (type(device) is str and len(device) <= _DEVICE[1]))
    ):
        return None
    ts = _epoch(get("ts"))
    if ts is None:
        return None
    created = get("account_created_at")
    if created is not None and (created := _epoch(created)) is None:
        return None
    total, discount = get("order_total"), get("discount")
    if total is not None and (total := _amount(total)) is None:
        return None
    if discount is not None and (discount := _amount(discount)) is None:
        return None
    if not consistent(total, discount):
        return None
    return (
        event_id,
        ts,
        order_id,
        account_id,
        promo or None,
        campaign or None,
        total,
        discount,
        created,
        ip or None,
        device or None,
    )
