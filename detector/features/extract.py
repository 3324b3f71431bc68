"""From events to state: one batch of new events pre-aggregated into a ``Delta``.

Pre-aggregation is what keeps Redis work per batch small: a public code redeemed 500 times in a
batch is one HINCRBY, not 500.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import orjson

from detector.events.parse import Event
from detector.state.base import Delta, Gate
from detector.state.keys import Keys, standalone_campaign

if TYPE_CHECKING:
    from detector.config import Config

# Campaign code sets only need enough members to learn whether a campaign is personal.
CAMPAIGN_CODES_CAP = 5000
# Separates the parts of composite members.
SEP = "\x1f"
# A campaign's last redemptions, for spotting a discount change within a couple of orders.
RECENT_RATIOS = 8
# Sums of discounts (and of their squares) must stay finite, or Redis refuses the increment and
# the batch can never be applied: an order's discount counts at most this much (no real order
# comes near; any finite amount is a valid event).
AMOUNT_CAP = 1e15


class Entity(NamedTuple):
    """Something rules evaluate: a code (with its campaign), an account or a campaign.

    A named tuple: made and hashed per event and per slice, at C speed.
    """

    scope: str
    key: str
    campaign: str | None

    def encode(self, at: float) -> str:
        """The entity and the event time to evaluate it at, as a ``dirty`` set member."""
        return orjson.dumps([self.scope, self.key, self.campaign, at]).decode()

    @staticmethod
    def decode(s: str) -> tuple[Entity, float] | None:
        try:
            scope, key, campaign, at = orjson.loads(s)
            return Entity(str(scope), str(key), campaign if isinstance(campaign, str) else None), (
                float(at)
            )
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None


def campaign_of(ev: Event) -> str | None:
    if ev.promo_code is None:
        return None
    return ev.campaign_id if ev.campaign_id is not None else standalone_campaign(ev.promo_code)


def _part(s: str | None) -> str:
    # The separator cannot occur in a part, so every member splits into exactly three.
    if s is None:
        return ""
    return s.replace(SEP, "\ufffd") if SEP in s else s


def redeemer(account: str, device: str | None, ip: str | None) -> str:
    """A code's ``u:`` member: who redeemed it, with what device and from what IP.

    One member per triple keeps the link between an account and its device and IP (a household
    member on the owner's home IP is the owner's household); an unknown or empty device or IP is
    an empty part and links nothing.
    """
    return f"{_part(account)}{SEP}{_part(device)}{SEP}{_part(ip)}"


def redeemers_cap(distinct_cap: int) -> int:
    """Members a code's redeemer set keeps: as many as its accounts, devices and IPs each took."""
    return 3 * distinct_cap


def new_accounts_cap(distinct_cap: int) -> int:
    """Members a code's new-account set keeps: each new account with its device, IP and whether
    it is fresh, up to ``distinct_cap`` of each."""
    return 4 * distinct_cap


class Extractor:
    def __init__(
        self,
        keys: Keys,
        distinct_cap: int,
        new_account_age_s: float,
        fresh_account_age_s: float,
        campaign_ttl_s: float,
        household_ttl_s: float,
    ) -> None:
        self._k = keys
        self._camp_ttl = campaign_ttl_s
        self._household_ttl = household_ttl_s
        # A code's redeemers are (account, device, IP) triples: as many members as the three
        # separate dimensions took before, so counts stay exact up to the cap. New accounts'
        # dimensions, with the fresh accounts among them, have their own set.
        self._code_cap = redeemers_cap(distinct_cap)
        self._new_cap = new_accounts_cap(distinct_cap)
        self._cap = distinct_cap
        self._new_age = new_account_age_s
        self._fresh_age = fresh_account_age_s

    @classmethod
    def for_config(cls, cfg: Config, keys: Keys) -> Extractor:
        """The extractor the pipeline runs with ``cfg``."""
        w = cfg.windows
        return cls(
            keys,
            w.distinct_exact_cap,
            w.new_account_age_s,
            w.fresh_account_age_s,
            cfg.campaign_retention_s,
            cfg.household_retention_s,
        )

    def gate(self, ent: Entity, count: float) -> Gate | None:
        """What the entity's distinct set holds once the entity has ``count`` distinct accounts
        (a code) or codes (an account); None for a campaign.

        Every account of a code is at least one redeemer triple of its set (over the household
        TTL, longer than any count's window), every code of an account one member of its own: a
        set's size bounds the count from above. A full set (at its cap) may stand for any count.
        """
        if ent.scope == "code":
            least = int(min(count, self._code_cap))
            return Gate(self._k.code_distinct(ent.key), least)
        if ent.scope == "account":
            return Gate(self._k.account_codes(ent.key), int(min(count, self._cap)))
        return None

    def add(self, delta: Delta, events: Iterable[Event]) -> dict[Entity, float]:
        """Add a slice's new events; return the entities they touched, each with its newest ts.

        Orders without a code only count towards their bucket's total: counted here and added
        once per bucket, not once per event.
        """
        orders: dict[int, int] = {}
        touched: dict[Entity, float] = {}
        for ev in events:
            b = self._k.bucket(ev.ts)
            orders[b] = orders.get(b, 0) + 1
            if ev.promo_code is None:
                continue
            for ent in self._redemption(delta, ev, b):
                if ev.ts > touched.get(ent, -math.inf):
                    touched[ent] = ev.ts
        for b, n in orders.items():
            delta.incr(self._k.orders(b), f"n{b}", n)
        return touched

    def _redemption(self, delta: Delta, ev: Event, b: int) -> tuple[Entity, Entity, Entity]:
        k = self._k
        code = ev.promo_code
        assert code is not None
        camp = campaign_of(ev)
        assert camp is not None
        ts = ev.ts
        # Per-entity sets are compact while they hold one member set (most are seen once).
        delta.seen(
            k.code_distinct(code),
            redeemer(ev.account_id, ev.device_id, ev.ip),
            ts,
            self._code_cap,
            self._household_ttl,
            True,
        )
        created = ev.account_created_at
        if created is not None and ts - created < self._new_age:
            # New accounts get their own dimensions: a bot farm shows as many new accounts on
            # few devices even when it hides in a crowd of regular customers.
            new = k.code_new_distinct(code)
            delta.seen(new, "A:" + ev.account_id, ts, self._new_cap, None, True)
            if ev.device_id is not None:
                delta.seen(new, "D:" + ev.device_id, ts, self._new_cap, None, True)
            if ev.ip is not None:
                delta.seen(new, "I:" + ev.ip, ts, self._new_cap, None, True)
            if ts - created < self._fresh_age:
                delta.seen(new, "F:" + ev.account_id, ts, self._new_cap, None, True)
        # Per campaign: harvesting shows as many codes of one campaign on one account.
        delta.seen(k.account_codes(ev.account_id), camp + SEP + code, ts, self._cap, None, True)
        ck = k.campaign_counts(camp, b)
        delta.incr(ck, f"n{b}")
        if ev.discount is not None and ev.order_total:
            ratio = ev.discount / ev.order_total
            amount = min(ev.discount, AMOUNT_CAP)
            delta.incr(ck, f"s{b}", amount)
            delta.incr(ck, f"q{b}")
            delta.incr(ck, f"r{b}", ratio)
            delta.incr(ck, f"x{b}", ratio * ratio)
            delta.incr(ck, f"y{b}", amount * amount)
            delta.seen(
                k.campaign_ratios(camp),
                f"{ratio:.6f}{SEP}{amount:.2f}{SEP}{ev.event_id}",
                ts,
                RECENT_RATIOS,
            )
        delta.seen(k.campaign_codes(camp), code, ts, CAMPAIGN_CODES_CAP, self._camp_ttl)
        if ev.campaign_id is not None:
            delta.incr(k.campaign_volume(b), camp)
        return (
            Entity("code", code, camp),
            Entity("account", ev.account_id, None),
            Entity("campaign", camp, None),
        )
