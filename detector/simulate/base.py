"""Small shared vocabulary of the simulator: rows, time helpers, discount rules, truth records,
and the protocol every incident generator follows.

Generation works on compact tuples ("rows") with integer epoch milliseconds; dicts in the
CONTRACT §1 shape are built only when the stream is read, which keeps generation fast.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    from detector.simulate.traffic import World

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

# (t_ms, account index, device_id, ip, promo_code, campaign_id, order_total, discount)
Row = tuple[int, int, str | None, str | None, str | None, str | None, float, float]

Scope = Literal["code", "account", "campaign", "global"]


def sub_rng(seed: int, *names: object) -> random.Random:
    """An independent RNG per (seed, purpose): overriding one parameter or adding one incident
    never shifts the draws of another. String seeding is SHA-512 based, so it does not depend on
    PYTHONHASHSEED."""
    return random.Random("/".join([str(seed), *map(str, names)]))


def log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


_day_cache: dict[int, str] = {}


def _day(d: int) -> str:
    day = _day_cache.get(d)
    if day is None:
        day = datetime.fromtimestamp(d * 86_400, UTC).strftime("%Y-%m-%dT")
        _day_cache[d] = day
    return day


def fmt_minute(m: int) -> str:
    """``YYYY-MM-DDTHH:MM:`` of epoch minute ``m`` (callers cache it: events come in order)."""
    d, rem = divmod(m, 1440)
    h, mi = divmod(rem, 60)
    return f"{_day(d)}{h:02d}:{mi:02d}:"


def fmt_ts(t_ms: int) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``; string arithmetic is ~5x faster than strftime."""
    d, rem = divmod(t_ms, DAY_MS)
    s, ms = divmod(rem, 1000)
    h, s = divmod(s, 3600)
    mi, s = divmod(s, 60)
    return f"{_day(d)}{h:02d}:{mi:02d}:{s:02d}.{ms:03d}Z"


def fmt_ts_s(t_ms: int) -> str:
    """Seconds precision, for account creation times."""
    d, s = divmod(t_ms // 1000, 86_400)
    h, s = divmod(s, 3600)
    mi, s = divmod(s, 60)
    return f"{_day(d)}{h:02d}:{mi:02d}:{s:02d}Z"


def parse_ts(text: str) -> int:
    """RFC 3339 (``Z`` or offset) to epoch ms; a naive timestamp is rejected."""
    dt = datetime.fromisoformat(text.replace("z", "Z"))
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without offset: {text!r}")
    return round(dt.timestamp() * 1000)


@dataclass(slots=True, frozen=True)
class DiscountRule:
    """How a code turns an order total into a discount.

    ``fixed``: ``value`` currency units (capped at the total); ``percent``: ``value`` % of the
    total, capped at ``max_discount`` when set. Orders below ``min_total`` are topped up by the
    buyer (a code with a threshold is only entered when the cart qualifies).
    """

    kind: Literal["fixed", "percent"]
    value: float
    min_total: float = 0.0
    max_discount: float | None = None

    def apply(self, total: float, topup: float) -> tuple[float, float]:
        """(total, discount) for a cart of ``total``; ``topup`` in [0, 1) sizes the top-up."""
        if total < self.min_total:
            total = round(self.min_total * (1.0 + 0.25 * topup), 2)
        if self.kind == "fixed":
            d = self.value
        else:
            d = total * self.value / 100.0
            if self.max_discount is not None and d > self.max_discount:
                d = self.max_discount
        d = round(d, 2)
        return total, (total if d > total else d)

    def norm_ratio(self, total: float) -> float:
        """Discount / total this rule gives for ``total`` (used by tests and docs)."""
        _, d = self.apply(total, 0.0)
        return d / total if total > 0 else 0.0


@dataclass(slots=True)
class Incident:
    """One labelled incident or benign surprise, as written to the truth file."""

    id: str
    kind: str
    benign: bool
    campaign_id: str | None
    keys: list[str]
    scope: Scope
    start: str
    end: str
    anchor: str
    anchor_rule: str
    params: dict[str, Any] = field(default_factory=dict)
    # Extra labels that matching may use: the accounts, codes, devices or IPs involved.
    details: dict[str, list[str]] = field(default_factory=dict)

    @property
    def start_ms(self) -> int:
        return parse_ts(self.start)

    @property
    def end_ms(self) -> int:
        return parse_ts(self.end)

    @property
    def anchor_ms(self) -> int:
        return parse_ts(self.anchor)


AnchorRule = Literal["second_account", "third_account", "start"]

ANCHOR_TEXT: dict[str, str] = {
    "second_account": "ts of the first redemption of any key code by a second distinct account",
    "third_account": "ts of the first redemption of the key code by a third distinct account",
    "start": "ts of the incident's first event (or of its rate change, for benign surprises)",
}


@dataclass(slots=True)
class Plan:
    """What a prepared generator declares for the truth file."""

    campaign_id: str | None
    keys: list[str]
    scope: Scope
    anchor_rule: AnchorRule
    details: dict[str, list[str]] = field(default_factory=dict)


class IncidentGenerator(Protocol):
    """One incident kind. Lifecycle: ``draw`` (params from ranges) -> ``span_ms`` (for the
    scheduler) -> ``prepare`` (reserve codes, register rate/discount modifiers in the world,
    BEFORE the baseline is generated) -> ``generate`` (the incident's own extra rows)."""

    kind: ClassVar[str]
    benign: ClassVar[bool]

    @classmethod
    def draw(cls, rng: random.Random) -> IncidentGenerator: ...

    def span_ms(self) -> int:
        """Planned length of the active window, from its start to its last event."""
        ...

    def prepare(self, world: World, start_ms: int, rng: random.Random) -> Plan: ...

    def generate(self, world: World, rng: random.Random) -> list[Row]: ...
