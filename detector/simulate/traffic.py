"""Baseline traffic: the clean world (accounts, campaigns, diurnal order rate) and its orders.

Everything here is drawn from ranges by seed (see ``BaselineParams.draw`` and
``CampaignParams.draw``); docs/simulator.md lists the ranges and why they were chosen.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Literal

from detector.simulate.base import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    DiscountRule,
    Row,
    fmt_ts_s,
    log_uniform,
    sub_rng,
)

# Share of peak orders by local hour (hour centres), shaped like Russian e-commerce traffic:
# night trough around 04:00, a lunch shoulder, the evening peak at 20:00-21:00.
LOCAL_PROFILE: tuple[float, ...] = (
    0.42, 0.26, 0.16, 0.11, 0.09, 0.10, 0.15, 0.26, 0.40, 0.53, 0.63, 0.70,
    0.76, 0.79, 0.77, 0.76, 0.77, 0.81, 0.88, 0.95, 1.00, 0.97, 0.84, 0.63,
)  # fmt: skip
PROFILE_PEAK_HOUR = 20.5

# First octets of Russian ISP ranges, so IPs look like residential customers.
_RESIDENTIAL_OCTETS = (
    5,
    31,
    37,
    46,
    62,
    77,
    78,
    79,
    80,
    81,
    83,
    84,
    85,
    87,
    88,
    89,
    90,
    91,
    92,
    93,
    94,
    95,
    109,
    176,
    178,
    188,
    193,
    194,
    195,
    212,
    213,
    217,
)
_DATACENTER_OCTETS = (45, 64, 104, 141, 146, 149, 151, 185, 192, 198)
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes are typed by hand
_THEMES = (
    "NY",
    "WINTER",
    "XMAS",
    "SPRING",
    "FRIDAY",
    "WELCOME",
    "APP",
    "SALE",
    "VIP",
    "LOYAL",
    "BDAY",
    "COMEBACK",
    "CYBER",
    "FAMILY",
    "GIFT",
    "STAR",
    "HOME",
    "KIDS",
    "SPORT",
    "TECH",
)
_BLOGGERS = ("ANNA", "MAX", "OLGA", "IVAN", "KATYA", "DIMA", "LENA", "SASHA")

_MASK = (1 << 64) - 1
_ODD = 0xD6E8FEB86659FD93


def mix64(x: int) -> int:
    """splitmix64 finaliser: account attributes are a pure function of (seed, index), so they
    do not depend on the order in which generators first touch an account."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _ipv4(h: int, octets: tuple[int, ...]) -> str:
    return f"{octets[h % len(octets)]}.{(h >> 8) & 255}.{(h >> 16) & 255}.{1 + (h >> 24) % 254}"


def _ipv6(h: int) -> str:
    return f"2a02:{(h >> 8) & 0xFFFF:x}:{(h >> 24) & 0xFFFF:x}:{(h >> 40) & 0xFFFF:x}::{h & 0xFF:x}"


def random_code(rng: random.Random, prefix: str, n: int) -> str:
    return prefix + "".join(rng.choices(CODE_ALPHABET, k=n))


@dataclass(slots=True, frozen=True)
class BaselineParams:
    """Shape of clean traffic; ``draw`` gives the documented ranges."""

    peak_rate_per_min: float  # orders/min at the evening peak (before weekday factor, noise)
    trough_ratio: float  # night trough as a share of the peak
    peak_hour: float  # local hour of the evening peak
    utc_offset_h: int  # the shop's time zone; the cycle follows local time
    profile_jitter: tuple[float, ...]  # per-hour multiplicative jitter of the daily profile
    noise_sigma: float  # log-sd of the slow multiplicative rate noise
    noise_corr_min: float  # correlation time of that noise
    weekend_factor: float  # Sat/Sun volume relative to weekdays
    promo_share: float  # share of orders that carry a code (personal + public + standalone)
    total_median: float  # median cart value, RUB
    total_sigma: float  # log-sd of cart value
    new_account_share: float  # orders by accounts registered within the last day
    population_per_order: float  # distinct known accounts per expected order
    activity_skew: float  # >1: a minority of accounts places most orders
    home_ip_share: float  # orders from the account's home IP
    mobile_ip_share: float  # orders from a carrier CGNAT pool (shared by many customers)
    cgnat_pool: int  # size of that pool
    second_device_share: float  # accounts with a second device
    new_device_prob: float  # an order from a never-seen device (new phone, wiped browser)
    household_share: float  # accounts sharing a home (IP, sometimes a device) with another
    null_device_share: float
    null_ip_share: float
    null_created_share: float
    absent_promo_share: float  # no-code orders that omit promo_code/campaign_id instead of null

    @classmethod
    def draw(cls, rng: random.Random) -> BaselineParams:
        return cls(
            peak_rate_per_min=rng.uniform(20.0, 80.0),
            trough_ratio=rng.uniform(0.06, 0.20),
            peak_hour=rng.uniform(19.5, 21.5),
            utc_offset_h=rng.choice((3, 3, 3, 2, 4, 5, 7)),
            profile_jitter=tuple(round(rng.uniform(0.92, 1.08), 4) for _ in range(24)),
            noise_sigma=rng.uniform(0.05, 0.18),
            noise_corr_min=rng.uniform(10.0, 45.0),
            weekend_factor=rng.uniform(0.85, 1.25),
            promo_share=rng.uniform(0.10, 0.40),
            total_median=rng.uniform(1200.0, 4000.0),
            total_sigma=rng.uniform(0.55, 0.95),
            new_account_share=rng.uniform(0.01, 0.06),
            population_per_order=rng.uniform(0.4, 0.9),
            activity_skew=rng.uniform(1.5, 3.0),
            home_ip_share=rng.uniform(0.6, 0.85),
            mobile_ip_share=rng.uniform(0.10, 0.30),
            cgnat_pool=rng.randint(64, 256),
            second_device_share=rng.uniform(0.2, 0.6),
            new_device_prob=rng.uniform(0.003, 0.02),
            household_share=rng.uniform(0.05, 0.15),
            null_device_share=rng.uniform(0.0, 0.02),
            null_ip_share=rng.uniform(0.0, 0.01),
            null_created_share=rng.uniform(0.0, 0.02),
            absent_promo_share=rng.uniform(0.0, 1.0),
        )


@dataclass(slots=True, frozen=True)
class CampaignParams:
    """How many campaigns of each kind and how big; per-campaign details are drawn in World."""

    n_public: int
    n_personal: int
    n_blogger_codes: int  # standalone shared codes (campaign_id null), e.g. an influencer's
    personal_size_range: tuple[float, float]  # codes per personal campaign (log-uniform)
    personal_uptake_range: tuple[float, float]  # share of a personal campaign redeemed in 48 h
    personal_repeat_share: float  # owners who redeem their code a second time
    household_noise_per_day: float  # personal codes also used by a same-household account
    standalone_share: float  # promo orders using blogger codes
    service_share: float  # promo orders using one-off customer-service codes (campaign null)

    @classmethod
    def draw(cls, rng: random.Random) -> CampaignParams:
        return cls(
            n_public=rng.randint(2, 4),
            n_personal=rng.randint(2, 4),
            n_blogger_codes=rng.randint(1, 3),
            personal_size_range=(400.0, 6000.0),
            personal_uptake_range=(0.10, 0.45),
            personal_repeat_share=rng.uniform(0.0, 0.04),
            household_noise_per_day=rng.uniform(0.3, 1.5),
            standalone_share=rng.uniform(0.03, 0.12),
            service_share=rng.uniform(0.01, 0.05),
        )


@dataclass(slots=True)
class Campaign:
    id: str
    kind: Literal["personal", "public"]
    codes: list[str]
    rule: DiscountRule
    weight: float = 0.0  # public: share of public-code orders
    owners: list[int] = field(default_factory=list)  # personal: owner account of codes[i]
    pool: list[int] = field(default_factory=list)  # personal: code indices still unredeemed
    expected_redemptions: float = 0.0  # personal: over the whole stream
    # (t0_ms, t1_ms, rule): a broken discount applied to every redemption inside the window
    overrides: list[tuple[int, int, DiscountRule]] = field(default_factory=list)
    launched_ms: int | None = None  # set for campaigns that appear mid-stream

    def rule_at(self, t_ms: int) -> DiscountRule:
        for t0, t1, rule in self.overrides:
            if t0 <= t_ms < t1:
                return rule
        return self.rule

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {
            "kind": self.kind,
            "n_codes": len(self.codes),
            "rule": self.rule,
        }
        if self.kind == "public":
            d["codes"] = list(self.codes)
            d["weight"] = round(self.weight, 4)
        else:
            d["expected_redemptions"] = round(self.expected_redemptions, 1)
        if self.launched_ms is not None:
            d["launched"] = fmt_ts_s(self.launched_ms)
        return d


# account record: (account_id, created_at or None, device 1, device 2 or None, home ip)
Account = tuple[str, str | None, str, str | None, str]


class World:
    """The clean world every generator draws from: time grid, rate, accounts, campaigns."""

    def __init__(
        self,
        seed: int,
        start_ms: int,
        hours: float,
        scale: float,
        *,
        bp: BaselineParams,
        cp: CampaignParams,
    ) -> None:
        self.seed = seed
        self.start_ms = start_ms
        self.end_ms = start_ms + round(hours * HOUR_MS)
        self.scale = scale
        self.bp = bp
        self.cp = cp
        self.salt = mix64(seed * 0x9E37 + 17)
        self.lam = self._rate_grid(sub_rng(seed, "rate"))  # expected orders per minute
        self.expected_orders = sum(self.lam)
        self.population = max(2000, int(self.expected_orders * bp.population_per_order))
        self._next_account = self.population  # fresh accounts get indices past the population
        self.accounts: dict[int, Account] = {}
        rng = sub_rng(seed, "net")
        self.cgnat = [
            _ipv4(rng.getrandbits(40), (31, 46, 85, 176, 178, 188, 213))
            for _ in range(bp.cgnat_pool)
        ]
        self.campaigns: dict[str, Campaign] = {}
        self.blogger_codes: list[str] = []
        self.service_rule = DiscountRule("fixed", 300.0, 0.0)
        self.mu = math.log(bp.total_median)
        self._build_campaigns(sub_rng(seed, "campaigns"))

    # ---- time / rate -------------------------------------------------------------------------

    def _profile(self, local_h: float) -> float:
        """Normalised daily shape in [trough_ratio, 1] at a fractional local hour."""
        bp = self.bp
        prof = [p * j for p, j in zip(LOCAL_PROFILE, bp.profile_jitter, strict=True)]
        lo, hi = min(prof), max(prof)
        h = (local_h - (bp.peak_hour - PROFILE_PEAK_HOUR) - 0.5) % 24.0
        i = int(h)
        f = h - i
        v = prof[i] * (1.0 - f) + prof[(i + 1) % 24] * f
        return bp.trough_ratio + (1.0 - bp.trough_ratio) * (v - lo) / (hi - lo)

    def _rate_grid(self, rng: random.Random) -> list[float]:
        bp = self.bp
        n = (self.end_ms - self.start_ms + MINUTE_MS - 1) // MINUTE_MS
        phi = math.exp(-1.0 / bp.noise_corr_min)
        innov = bp.noise_sigma * math.sqrt(1.0 - phi * phi)
        x = rng.gauss(0.0, bp.noise_sigma)
        off = bp.utc_offset_h * HOUR_MS
        shape = [self._profile(h / 4.0) for h in range(24 * 4 + 1)]  # 15-min table, interpolated
        lam: list[float] = []
        for m in range(n):
            local = self.start_ms + m * MINUTE_MS + MINUTE_MS // 2 + off
            qh = (local % DAY_MS) / (15 * MINUTE_MS)
            k = int(qh)
            s = shape[k] + (shape[k + 1] - shape[k]) * (qh - k)
            dow = (local // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; 5, 6 = Sat, Sun
            wk = bp.weekend_factor if dow >= 5 else 1.0
            x = phi * x + innov * rng.gauss(0.0, 1.0)
            noise = math.exp(x - bp.noise_sigma * bp.noise_sigma / 2.0)
            lam.append(bp.peak_rate_per_min * self.scale * s * wk * noise)
        return lam

    def rate_at(self, t_ms: int) -> float:
        """Expected baseline orders per minute at ``t_ms`` (including benign modifiers)."""
        m = (t_ms - self.start_ms) // MINUTE_MS
        return self.lam[min(max(m, 0), len(self.lam) - 1)]

    def shape_share(self, t0_ms: int, t1_ms: int) -> float:
        """Share of the stream's expected orders falling in [t0, t1)."""
        m0 = max(0, (t0_ms - self.start_ms) // MINUTE_MS)
        m1 = min(len(self.lam), (t1_ms - self.start_ms) // MINUTE_MS)
        return sum(self.lam[m0:m1]) / self.expected_orders

    # ---- accounts ----------------------------------------------------------------------------

    def account_id(self, idx: int) -> str:
        # a bijection on 0..10^9-1 (the multiplier is coprime to 10^9): unique, non-sequential
        return f"acc_{(idx * 2654435761 + self.salt) % 1_000_000_000:09d}"

    def account(self, idx: int) -> Account:
        acc = self.accounts.get(idx)
        if acc is None:
            acc = self._make_population_account(idx)
        return acc

    def _make_population_account(self, idx: int) -> Account:
        bp = self.bp
        h1 = mix64(self.salt ^ idx)
        h2 = mix64(h1)
        # multiplying by an odd constant is a cheap bijection: device ids from h1, h2
        d1, d2 = (h1 * _ODD) & _MASK, (h2 * _ODD) & _MASK
        u = (h1 >> 11) / 9007199254740992.0
        # mostly months or years old: 7/8 log-uniform 60 days..10 years, 1/8 2..60 days
        lo, hi = (60.0, 3650.0) if (h2 >> 61) else (2.0, 60.0)
        age_ms = int(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) * DAY_MS)
        created = (
            None
            if (h2 & 0xFFFF) / 65536.0 < bp.null_created_share
            else fmt_ts_s(self.start_ms - age_ms - ((h2 >> 16) & 0xFFFFFFF) % DAY_MS)
        )
        dev1 = f"d-{d1:016x}"
        dev2 = f"d-{d2:016x}" if ((h2 >> 44) & 0xFFFF) / 65536.0 < bp.second_device_share else None
        hh = mix64(self.salt ^ (idx >> 1) ^ 0xABCDEF)  # shared by the pair idx, idx ^ 1
        if (hh & 0xFFFF) / 65536.0 < bp.household_share and (idx ^ 1) < self.population:
            home = _ipv4(hh >> 16, _RESIDENTIAL_OCTETS)
            if (hh >> 56) & 3 == 0:  # a quarter of households share one family computer
                dev1 = f"d-{(hh * _ODD) & _MASK:016x}"
        else:
            home = _ipv6(h1) if (d2 >> 40) % 10 == 0 else _ipv4(h1 >> 3, _RESIDENTIAL_OCTETS)
        acc = (self.account_id(idx), created, dev1, dev2, home)
        self.accounts[idx] = acc
        return acc

    def household_partner(self, idx: int) -> int | None:
        """The other account of idx's household, if it has one (population accounts only)."""
        if idx >= self.population or (idx ^ 1) >= self.population:
            return None
        hh = mix64(self.salt ^ (idx >> 1) ^ 0xABCDEF)
        return idx ^ 1 if (hh & 0xFFFF) / 65536.0 < self.bp.household_share else None

    def new_account(self, created_ms: int, rng: random.Random) -> int:
        """A freshly registered account with its own device and IP."""
        idx = self._next_account
        self._next_account += 1
        h = rng.getrandbits(64)
        self.accounts[idx] = (
            self.account_id(idx),
            fmt_ts_s(created_ms),
            f"d-{h:016x}",
            None,
            _ipv4(rng.getrandbits(40), _RESIDENTIAL_OCTETS),
        )
        return idx

    def known_account(self, rng: random.Random) -> int:
        """A uniformly chosen existing customer (strangers who read a forum, email recipients)."""
        return int(rng.random() * self.population)

    def random_device(self, rng: random.Random) -> str:
        return f"d-{rng.getrandbits(64):016x}"

    def random_ip(self, rng: random.Random) -> str:
        return _ipv4(rng.getrandbits(40), _RESIDENTIAL_OCTETS)

    def datacenter_ip(self, rng: random.Random) -> str:
        return _ipv4(rng.getrandbits(40), _DATACENTER_OCTETS)

    def device_ip(self, idx: int, rng: random.Random) -> tuple[str | None, str | None]:
        """The device and IP an account uses for one order: mostly its own, sometimes not."""
        _, _, dev1, dev2, home = self.account(idx)
        bp = self.bp
        u = rng.random()
        if u < bp.new_device_prob:
            dev: str | None = self.random_device(rng)
        elif dev2 is not None and u < 0.35:
            dev = dev2
        elif u > 1.0 - bp.null_device_share:
            dev = None
        else:
            dev = dev1
        u = rng.random()
        if u < bp.home_ip_share:
            ip: str | None = home
        elif u < bp.home_ip_share + bp.mobile_ip_share:
            ip = self.cgnat[int(rng.random() * len(self.cgnat))]
        elif u > 1.0 - bp.null_ip_share:
            ip = None
        else:
            ip = self.random_ip(rng)  # work, travel, a friend's wifi
        return dev, ip

    def cart_total(self, rng: random.Random, factor: float = 1.0) -> float:
        return round(math.exp(self.mu + self.bp.total_sigma * rng.gauss(0.0, 1.0)) * factor, 2)

    def order(
        self,
        rng: random.Random,
        t_ms: int,
        idx: int,
        code: str | None,
        campaign: Campaign | None,
        *,
        rule: DiscountRule | None = None,
        device: str | None = None,
        ip: str | None = None,
        total: float | None = None,
        own_net: bool = True,
    ) -> Row:
        """One order row; with ``own_net`` the account's usual device/IP are used unless given."""
        if own_net and device is None and ip is None:
            device, ip = self.device_ip(idx, rng)
        tot = self.cart_total(rng) if total is None else total
        disc = 0.0
        if code is not None:
            r = (
                rule
                if rule is not None
                else (campaign.rule_at(t_ms) if campaign is not None else self.service_rule)
            )
            tot, disc = r.apply(tot, rng.random())
        return (t_ms, idx, device, ip, code, campaign.id if campaign else None, tot, disc)

    # ---- campaigns ---------------------------------------------------------------------------

    def _draw_rule(self, rng: random.Random, personal: bool) -> DiscountRule:
        if rng.random() < (0.7 if personal else 0.5):
            value = float(rng.choice((200, 300, 500, 500, 500, 700, 1000)))
            # thresholds keep the fixed discount a modest share of the cart
            return DiscountRule("fixed", value, value * rng.choice((2.0, 3.0, 4.0, 5.0)))
        pct = float(rng.choice((5, 10, 10, 15, 15, 20, 25)))
        cap = float(rng.choice((1000, 1500, 2000, 3000))) if rng.random() < 0.5 else None
        return DiscountRule("percent", pct, float(rng.choice((0, 0, 1000, 1500))), cap)

    def _build_campaigns(self, rng: random.Random) -> None:
        cp = self.cp
        self.year = yy = int(fmt_ts_s(self.start_ms)[:4])
        themes = rng.sample(_THEMES, cp.n_public + cp.n_personal + 1)
        self.spare_theme = themes[-1]  # kept for a campaign launched mid-stream
        weights = [rng.paretovariate(1.2) for _ in range(cp.n_public)]
        for i in range(cp.n_public):
            th = themes[i]
            cid = f"{th}-{yy}"
            variants = [f"{th}{yy % 100}", f"{th}-{yy % 100}", f"{th}{yy % 100}APP"]
            self.campaigns[cid] = Campaign(
                cid,
                "public",
                variants[: rng.randint(1, 3)],
                self._draw_rule(rng, False),
                weight=weights[i] / sum(weights),
            )
        for i in range(cp.n_personal):
            th = themes[cp.n_public + i]
            cid = rng.choice((f"{th}-{yy}", f"{th}-Q{rng.randint(1, 4)}", f"{th}-MAIL{yy % 100}"))
            # >= 200 codes: incidents reserve up to ~150 of them before the baseline runs
            size = max(200, int(log_uniform(rng, *cp.personal_size_range) * self.scale))
            uptake = rng.uniform(*cp.personal_uptake_range)
            prefix = th[:2] if rng.random() < 0.7 else th[:3]
            seen: set[str] = set()  # membership only; codes keep their drawn order
            codes: list[str] = []
            while len(codes) < size:
                c = random_code(rng, prefix, 8 - len(prefix))
                if c not in seen:
                    seen.add(c)
                    codes.append(c)
            owners = rng.sample(range(self.population), min(size, self.population))
            owners += [self.known_account(rng) for _ in range(size - len(owners))]
            hours = (self.end_ms - self.start_ms) / HOUR_MS
            camp = Campaign(
                cid,
                "personal",
                codes,
                self._draw_rule(rng, True),
                owners=owners,
                pool=list(range(size)),
                expected_redemptions=size * uptake * min(1.0, hours / 48.0),
            )
            self.campaigns[cid] = camp
        # personal redemptions must leave room for public codes within promo_share
        personal = sum(
            c.expected_redemptions for c in self.campaigns.values() if c.kind == "personal"
        )
        cap = 0.5 * self.bp.promo_share * self.expected_orders
        if personal > cap:
            for camp in self.campaigns.values():
                camp.expected_redemptions *= cap / personal
        self.blogger_codes = [
            f"{rng.choice(('BLOGGER', 'PROMO', 'FROM'))}-{b}"
            for b in rng.sample(_BLOGGERS, cp.n_blogger_codes)
        ]
        self.blogger_rule = DiscountRule("percent", float(rng.choice((7, 10, 12, 15))), 0.0)
        self.service_rule = DiscountRule("fixed", float(rng.choice((200, 300, 500))), 0.0)

    def ordinary_promo_share(self) -> float:
        """Share of ordinary (non-personal) orders carrying a public/standalone code, chosen so
        that all codes together make up ``promo_share`` of orders."""
        personal = sum(c.expected_redemptions for c in self.personal_campaigns())
        return max(0.03, self.bp.promo_share - personal / self.expected_orders)

    def campaign_order_share(self, camp: Campaign) -> float:
        """Share of all orders that redeem public campaign ``camp`` (slot weights sum to 1)."""
        pub_share = 1.0 - self.cp.standalone_share - self.cp.service_share
        return self.ordinary_promo_share() * pub_share * camp.weight

    def personal_campaigns(self) -> list[Campaign]:
        return [c for c in self.campaigns.values() if c.kind == "personal" and c.owners]

    def public_campaigns(self) -> list[Campaign]:
        return [c for c in self.campaigns.values() if c.kind == "public" and c.launched_ms is None]

    def reserve_codes(self, camp: Campaign, n: int, rng: random.Random) -> list[int]:
        """Take ``n`` unredeemed codes out of the pool so baseline owners never use them."""
        picked = []
        for _ in range(min(n, len(camp.pool))):
            j = int(rng.random() * len(camp.pool))
            camp.pool[j], camp.pool[-1] = camp.pool[-1], camp.pool[j]
            picked.append(camp.pool.pop())
        return picked

    def kinds(self) -> dict[str, str]:
        return {cid: c.kind for cid, c in self.campaigns.items()}


def generate_baseline(world: World) -> list[Row]:
    """Clean orders: a non-homogeneous Poisson flow following ``world.lam`` plus personal-code
    redemptions by their owners and the rare same-household second use."""
    rng = sub_rng(world.seed, "baseline")
    rows = _orders(world, rng)
    rows += _personal(world, sub_rng(world.seed, "personal"))
    return rows


def _orders(world: World, rng: random.Random) -> list[Row]:
    bp, cp = world.bp, world.cp
    rand, gauss, log = rng.random, rng.gauss, math.log
    q = world.ordinary_promo_share()
    # promo slots: (code or None = fresh service code, campaign, rule)
    slots: list[tuple[str | None, Campaign | None, DiscountRule | None]] = []
    cum: list[float] = []
    acc_w = 0.0
    pub_share = 1.0 - cp.standalone_share - cp.service_share
    for pub in world.public_campaigns():
        n = len(pub.codes)
        for i, code in enumerate(pub.codes):
            # the campaign's main code takes twice the share of each variant
            acc_w += pub.weight * pub_share * (2.0 if i == 0 else 1.0) / (n + 1)
            slots.append((code, pub, None))
            cum.append(acc_w)
    bw = [rng.paretovariate(1.5) for _ in world.blogger_codes]
    for code, w in zip(world.blogger_codes, bw, strict=True):
        acc_w += cp.standalone_share * w / sum(bw)
        slots.append((code, None, world.blogger_rule))
        cum.append(acc_w)
    acc_w += cp.service_share
    slots.append((None, None, world.service_rule))
    cum.append(acc_w)
    total_w = acc_w
    mu, sig = world.mu, bp.total_sigma
    pop, skew, new_share = world.population, bp.activity_skew, bp.new_account_share
    account, device_ip, accounts = world.account, world.device_ip, world.accounts
    rows: list[Row] = []
    append = rows.append
    t_base = world.start_ms
    for m, lam in enumerate(world.lam):
        if lam <= 0.0:
            continue
        r = lam / MINUTE_MS
        t = float(t_base + m * MINUTE_MS)
        end = min(t + MINUTE_MS, world.end_ms)  # the last minute may be partial
        while True:
            t -= log(1.0 - rand()) / r
            if t >= end:
                break
            ti = int(t)
            if rand() < new_share:
                idx = world.new_account(ti - int(MINUTE_MS * (2 + rand() * 1400)), rng)
            else:
                idx = int(pop * rand() ** skew)
                if idx not in accounts:
                    account(idx)
            dev, ip = device_ip(idx, rng)
            tot = round(math.exp(mu + sig * gauss(0.0, 1.0)), 2)
            if rand() < q:
                k = bisect.bisect_left(cum, rand() * total_w)
                slot_code, camp, rule = slots[k]
                # one-off customer-service codes are unique per order
                code = slot_code or "SORRY-" + "".join(rng.choices("0123456789ABCDEF", k=6))
                if camp is not None:
                    rule = camp.rule_at(ti) if camp.overrides else camp.rule
                    cid: str | None = camp.id
                else:
                    cid = None
                assert rule is not None
                tot, disc = rule.apply(tot, rand())
                append((ti, idx, dev, ip, code, cid, tot, disc))
            else:
                append((ti, idx, dev, ip, None, None, tot, 0.0))
    return rows


def _personal(world: World, rng: random.Random) -> list[Row]:
    rows: list[Row] = []
    owner_uses: list[tuple[int, str, int, Campaign, Row]] = []  # (t, code, owner, camp, row)
    end = world.end_ms
    for camp in world.personal_campaigns():
        total = world.expected_orders
        for m, lam in enumerate(world.lam):
            r = camp.expected_redemptions * lam / total / MINUTE_MS
            if r <= 0.0:
                continue
            t = float(world.start_ms + m * MINUTE_MS)
            stop = min(t + MINUTE_MS, end)
            while True:
                t -= math.log(1.0 - rng.random()) / r
                if t >= stop or not camp.pool:
                    break
                j = int(rng.random() * len(camp.pool))
                camp.pool[j], camp.pool[-1] = camp.pool[-1], camp.pool[j]
                ci = camp.pool.pop()
                code, owner = camp.codes[ci], camp.owners[ci]
                ti = int(t)
                row = world.order(rng, ti, owner, code, camp)
                rows.append(row)
                owner_uses.append((ti, code, owner, camp, row))
                if rng.random() < world.cp.personal_repeat_share:
                    t2 = ti + int(rng.uniform(1.0, 24.0) * HOUR_MS)
                    if t2 < end:
                        rows.append(world.order(rng, t2, owner, code, camp))
    # same-household second use: rare, Poisson in time, always after the owner's own use
    owner_uses.sort(key=lambda x: x[0])
    cands = [u for u in owner_uses if world.household_partner(u[2]) is not None]
    times = [u[0] for u in cands]
    used: set[str] = set()
    rate = world.cp.household_noise_per_day / DAY_MS
    # "very rarely": never more than 2 a day on average, whatever the Poisson draw says
    cap = max(1, int(2 * (end - world.start_ms) / DAY_MS))
    t = float(world.start_ms)
    while rate > 0.0 and len(used) < cap:
        t -= math.log(1.0 - rng.random()) / rate
        if t >= end:
            break
        k = bisect.bisect_left(times, int(t))
        if k == 0:
            continue
        _, code, owner, camp, orow = cands[int(rng.random() * k)]
        partner = world.household_partner(owner)
        if code in used or partner is None or (orow[2] is None and orow[3] is None):
            continue
        used.add(code)
        # the family member orders from the owner's device or network (that is the household)
        dev, ip = world.device_ip(partner, rng)
        if orow[3] is None or (orow[2] is not None and rng.random() < 0.4):
            dev = orow[2]
        else:
            ip = orow[3]
        rows.append(world.order(rng, int(t), partner, code, camp, device=dev, ip=ip))
    return rows
