"""Incident generators: one class per kind, each following ``base.IncidentGenerator``.

Every class is a slotted dataclass whose init fields are the parameters drawn from ranges by
``draw`` (they go to the truth file as-is); the non-init fields are set by ``prepare``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from detector.simulate.base import (
    DAY_MS,
    MINUTE_MS,
    DiscountRule,
    IncidentGenerator,
    Plan,
    Row,
    log_uniform,
)
from detector.simulate.traffic import Campaign, World


def poisson_times(
    rng: random.Random,
    t0: int,
    t1: int,
    rate_per_min: Callable[[float], float],
    step_ms: int = 30_000,
) -> list[int]:
    """Arrival times of a Poisson process whose rate (per minute, as a function of minutes
    since ``t0``) is held constant over ``step_ms`` steps."""
    out: list[int] = []
    s = t0
    while s < t1:
        e = min(s + step_ms, t1)
        r = rate_per_min((s - t0) / MINUTE_MS) / MINUTE_MS
        if r > 0.0:
            t = float(s)
            while True:
                t -= math.log(1.0 - rng.random()) / r
                if t >= e:
                    break
                out.append(int(t))
        s = e
    return out


def drawn_params(gen: object) -> dict[str, Any]:
    """The drawn (init) fields of a generator, for the truth file."""
    return {f.name: getattr(gen, f.name) for f in fields(gen) if f.init}  # type: ignore[arg-type]


def _stranger(world: World, rng: random.Random, t: int, known_share: float, taken: set[int]) -> int:
    """A new distinct stranger: an existing customer who found the code, or someone who
    registered for it (account ages from minutes to a month: mixed)."""
    for _ in range(20):
        if rng.random() < known_share:
            idx = world.known_account(rng)
        else:
            idx = world.new_account(t - int(log_uniform(rng, 2.0, 30 * 1440.0) * MINUTE_MS), rng)
        if idx not in taken:
            taken.add(idx)
            return idx
    idx = world.new_account(t - 10 * MINUTE_MS, rng)
    taken.add(idx)
    return idx


def _pick_personal(world: World, rng: random.Random, need: int) -> Campaign:
    camps = [
        c for c in world.personal_campaigns() if len(c.pool) >= need
    ] or world.personal_campaigns()
    return rng.choice(camps)


def _owner_use(world: World, rng: random.Random, camp: Campaign, ci: int, spread_ms: int) -> Row:
    """The code's owner redeeming it 5 min to 3 h before the spread starts at ``spread_ms``."""
    t = max(world.start_ms, spread_ms - int(rng.uniform(5.0, 180.0) * MINUTE_MS))
    return world.order(rng, t, camp.owners[ci], camp.codes[ci], camp)


@dataclass(slots=True)
class Leak:
    """Personal codes posted on a forum: many strangers redeem them, ramping up."""

    kind: ClassVar[str] = "leak"
    benign: ClassVar[bool] = False
    n_codes: int
    owner_first: list[bool]  # per code: did the owner redeem it before the spread?
    start_rate_per_min: float
    max_rate_per_min: float
    viral: bool  # the 2022-style mass leak: tens to hundreds per minute
    ramp_min: float
    duration_min: float
    fade_min: float  # 0: stops abruptly (code blocked); else decays over this long
    known_account_share: float
    repeat_share: float
    code_weights: list[float]
    campaign: Campaign | None = field(default=None, init=False)
    codes: list[int] = field(default_factory=list, init=False)
    start_ms: int = field(default=0, init=False)
    details: dict[str, list[str]] = field(default_factory=dict, init=False)

    @classmethod
    def draw(cls, rng: random.Random) -> Leak:
        n = rng.choices((1, 2, 3), (0.6, 0.3, 0.1))[0]
        viral = rng.random() < 0.12
        duration = rng.uniform(30.0, 120.0)
        w = sorted((rng.paretovariate(1.0) for _ in range(n)), reverse=True)
        return cls(
            n_codes=n,
            owner_first=[rng.random() < 0.6 for _ in range(n)],
            start_rate_per_min=1.0 / rng.uniform(2.0, 6.0),
            max_rate_per_min=log_uniform(rng, 30.0, 150.0)
            if viral
            else log_uniform(rng, 1.5, 12.0),
            viral=viral,
            ramp_min=min(rng.uniform(10.0, 60.0), 0.8 * duration),
            duration_min=duration,
            fade_min=0.0 if rng.random() < 0.4 else rng.uniform(5.0, 30.0),
            known_account_share=rng.uniform(0.3, 0.7),
            repeat_share=rng.uniform(0.0, 0.05),
            code_weights=[round(x / sum(w), 4) for x in w],
        )

    def span_ms(self) -> int:
        return int((self.duration_min + self.fade_min) * MINUTE_MS)

    def rate(self, tau: float) -> float:
        """Stranger redemptions per minute, ``tau`` minutes into the spread."""
        if tau < self.ramp_min:
            growth: float = (self.max_rate_per_min / self.start_rate_per_min) ** (
                tau / self.ramp_min
            )
            return self.start_rate_per_min * growth
        if tau < self.duration_min:
            return self.max_rate_per_min
        if self.fade_min > 0.0:
            return self.max_rate_per_min * math.exp(
                -3.0 * (tau - self.duration_min) / self.fade_min
            )
        return 0.0

    def prepare(self, world: World, start_ms: int, rng: random.Random) -> Plan:
        self.campaign = camp = _pick_personal(world, rng, self.n_codes)
        self.codes = world.reserve_codes(camp, self.n_codes, rng)
        self.start_ms = start_ms
        self.details = {"owners": [world.account_id(camp.owners[i]) for i in self.codes]}
        return Plan(
            camp.id, [camp.codes[i] for i in self.codes], "code", "second_account", self.details
        )

    def generate(self, world: World, rng: random.Random) -> list[Row]:
        camp = self.campaign
        assert camp is not None
        rows: list[Row] = []
        codes = self.codes
        if not codes:  # the campaign ran out of unredeemed codes
            return rows
        for ci, first in zip(codes, self.owner_first, strict=False):
            if first:
                rows.append(_owner_use(world, rng, camp, ci, self.start_ms))
        taken = {camp.owners[i] for i in codes}
        seen: list[tuple[int, str]] = []
        weights = self.code_weights[: len(codes)]
        times = poisson_times(rng, self.start_ms, self.start_ms + self.span_ms(), self.rate)
        if times:
            times[0] = self.start_ms  # the first stranger defines the incident's start
        for t in times:
            if seen and rng.random() < self.repeat_share:
                idx, code = rng.choice(seen)  # a stranger comes back for a second order
            else:
                idx = _stranger(world, rng, t, self.known_account_share, taken)
                code = camp.codes[rng.choices(codes, weights)[0]]
                seen.append((idx, code))
            rows.append(world.order(rng, t, idx, code, camp))
        self.details["accounts"] = [world.account_id(i) for i, _ in seen]
        return rows


@dataclass(slots=True)
class SlowLeak:
    """One personal code picked up by a new stranger every few minutes for an hour or more."""

    kind: ClassVar[str] = "slow_leak"
    benign: ClassVar[bool] = False
    gap_mean_min: float
    duration_min: float
    owner_first: bool
    known_account_share: float
    campaign: Campaign | None = field(default=None, init=False)
    code: int = field(default=-1, init=False)
    start_ms: int = field(default=0, init=False)
    details: dict[str, list[str]] = field(default_factory=dict, init=False)

    @classmethod
    def draw(cls, rng: random.Random) -> SlowLeak:
        return cls(
            gap_mean_min=rng.uniform(2.0, 8.0),
            duration_min=rng.uniform(60.0, 180.0),
            owner_first=rng.random() < 0.5,
            known_account_share=rng.uniform(0.3, 0.8),
        )

    def span_ms(self) -> int:
        return int(self.duration_min * MINUTE_MS)

    def prepare(self, world: World, start_ms: int, rng: random.Random) -> Plan:
        self.campaign = camp = _pick_personal(world, rng, 1)
        self.code = (world.reserve_codes(camp, 1, rng) or [0])[0]
        self.start_ms = start_ms
        self.details = {"owners": [world.account_id(camp.owners[self.code])]}
        return Plan(camp.id, [camp.codes[self.code]], "code", "third_account", self.details)

    def generate(self, world: World, rng: random.Random) -> list[Row]:
        camp = self.campaign
        assert camp is not None
        rows: list[Row] = []
        if self.owner_first:
            rows.append(_owner_use(world, rng, camp, self.code, self.start_ms))
        end = self.start_ms + self.span_ms()
        times = poisson_times(rng, self.start_ms, end, lambda _: 1.0 / self.gap_mean_min)
        while len(times) < 3:  # the anchor needs a third distinct account
            times.append(
                min(
                    end - 1,
                    (times[-1] if times else self.start_ms) + int(self.gap_mean_min * MINUTE_MS),
                )
            )
        times[0] = self.start_ms  # the spread starts at the scheduled start
        taken = {camp.owners[self.code]}
        strangers = []
        for t in times:
            idx = _stranger(world, rng, t, self.known_account_share, taken)
            strangers.append(world.account_id(idx))
            rows.append(world.order(rng, t, idx, camp.codes[self.code], camp))
        self.details["accounts"] = strangers
        return rows


@dataclass(slots=True)
class BotFarm:
    """Freshly registered accounts redeeming a public code from a handful of devices and IPs."""

    kind: ClassVar[str] = "bot_farm"
    benign: ClassVar[bool] = False
    n_accounts: int
    n_devices: int
    n_ips: int
    duration_min: float
    reg_span_min: float  # accounts were registered up to this long before their order
    datacenter_ips: bool
    cart_factor: float  # bots buy the cheapest carts that still qualify
    campaign: Campaign | None = field(default=None, init=False)
    code: str = field(default="", init=False)
    start_ms: int = field(default=0, init=False)
    devices: list[str] = field(default_factory=list, init=False)
    ips: list[str] = field(default_factory=list, init=False)
    details: dict[str, list[str]] = field(default_factory=dict, init=False)

    @classmethod
    def draw(cls, rng: random.Random) -> BotFarm:
        return cls(
            n_accounts=rng.randint(50, 300),
            n_devices=rng.randint(3, 10),
            n_ips=rng.randint(3, 10),
            duration_min=rng.uniform(10.0, 60.0),
            reg_span_min=log_uniform(rng, 10.0, 360.0),
            datacenter_ips=rng.random() < 0.6,
            cart_factor=rng.uniform(0.3, 0.8),
        )

    def span_ms(self) -> int:
        return int(self.duration_min * MINUTE_MS)

    def prepare(self, world: World, start_ms: int, rng: random.Random) -> Plan:
        pubs = world.public_campaigns()
        self.campaign = camp = rng.choices(pubs, [c.weight for c in pubs])[0]
        self.code = camp.codes[0]
        self.start_ms = start_ms
        self.devices = [world.random_device(rng) for _ in range(self.n_devices)]
        ipf = world.datacenter_ip if self.datacenter_ips else world.random_ip
        self.ips = [ipf(rng) for _ in range(self.n_ips)]
        self.details = {"devices": list(self.devices), "ips": list(self.ips)}
        return Plan(camp.id, [self.code], "code", "start", self.details)

    def generate(self, world: World, rng: random.Random) -> list[Row]:
        camp = self.campaign
        assert camp is not None
        span = self.span_ms()
        times = sorted(self.start_ms + int(rng.random() * span) for _ in range(self.n_accounts))
        times[0] = self.start_ms
        rows: list[Row] = []
        accounts: list[str] = []
        for i, t in enumerate(times):
            age = log_uniform(rng, 2.0, self.reg_span_min + 2.0) * MINUTE_MS
            idx = world.new_account(t - int(age), rng)
            accounts.append(world.account_id(idx))
            k = int(rng.random() * self.n_devices)
            # a device mostly sits behind the same proxy; sometimes the farm rotates them
            ip = self.ips[k % self.n_ips] if rng.random() < 0.8 else rng.choice(self.ips)
            dev = self.devices[i % self.n_devices if i < self.n_devices else k]
            rows.append(
                world.order(
                    rng,
                    t,
                    idx,
                    self.code,
                    camp,
                    device=dev,
                    ip=ip,
                    total=world.cart_total(rng, self.cart_factor),
                )
            )
        self.details["accounts"] = accounts
        return rows


@dataclass(slots=True)
class Harvest:
    """A few accounts each redeeming many distinct harvested (guessed/scraped) personal codes."""

    kind: ClassVar[str] = "harvest"
    benign: ClassVar[bool] = False
    n_accounts: int
    codes_per_account: list[int]
    duration_min: float
    scripted: bool  # regular pacing (a script) rather than Poisson (a person)
    known_account_share: float
    proxy_share: float  # share of harvesters behind a datacenter proxy
    campaign: Campaign | None = field(default=None, init=False)
    start_ms: int = field(default=0, init=False)
    account_idx: list[int] = field(default_factory=list, init=False)
    codes: list[list[int]] = field(default_factory=list, init=False)

    @classmethod
    def draw(cls, rng: random.Random) -> Harvest:
        n = rng.randint(1, 3)
        return cls(
            n_accounts=n,
            codes_per_account=[rng.randint(10, 50) for _ in range(n)],
            duration_min=rng.uniform(30.0, 90.0),
            scripted=rng.random() < 0.5,
            known_account_share=rng.uniform(0.2, 0.8),
            proxy_share=rng.uniform(0.0, 0.6),
        )

    def span_ms(self) -> int:
        return int(self.duration_min * MINUTE_MS)

    def prepare(self, world: World, start_ms: int, rng: random.Random) -> Plan:
        self.campaign = camp = _pick_personal(world, rng, sum(self.codes_per_account))
        self.start_ms = start_ms
        taken: set[int] = set()
        for n in self.codes_per_account:
            idx = _stranger(world, rng, start_ms, self.known_account_share, taken)
            self.account_idx.append(idx)
            self.codes.append(world.reserve_codes(camp, n, rng))
        return Plan(
            camp.id,
            [world.account_id(i) for i in self.account_idx],
            "account",
            "start",
            {"codes": [camp.codes[c] for cs in self.codes for c in cs]},
        )

    def generate(self, world: World, rng: random.Random) -> list[Row]:
        camp = self.campaign
        assert camp is not None
        span = self.span_ms()
        rows: list[Row] = []
        for a, (idx, cis) in enumerate(zip(self.account_idx, self.codes, strict=True)):
            n = len(cis)
            if n == 0:
                continue
            if self.scripted:
                step = span / n
                times = [self.start_ms + int(step * (k + rng.uniform(0.0, 0.3))) for k in range(n)]
            else:
                times = sorted(self.start_ms + int(rng.random() * span) for _ in range(n))
            if a == 0:
                times[0] = self.start_ms
            dev, ip = world.device_ip(idx, rng)
            if rng.random() < self.proxy_share:
                ip = world.datacenter_ip(rng)
            for t, ci in zip(times, cis, strict=True):
                rows.append(world.order(rng, t, idx, camp.codes[ci], camp, device=dev, ip=ip))
        return rows


@dataclass(slots=True)
class DiscountMisconfig:
    """A campaign's discount set far above its norm (a typo in the admin panel); word spreads."""

    kind: ClassVar[str] = "discount_misconfig"
    benign: ClassVar[bool] = False
    broken_percent: float  # used when the campaign's rule is a percentage
    broken_multiplier: float  # used when it is a fixed amount
    duration_min: float
    max_boost: float  # redemption rate multiplier reached at the end (word of mouth)
    cart_uplift: float  # extra buyers fill bigger carts when it is nearly free
    campaign: Campaign | None = field(default=None, init=False)
    start_ms: int = field(default=0, init=False)
    broken: DiscountRule | None = field(default=None, init=False)

    @classmethod
    def draw(cls, rng: random.Random) -> DiscountMisconfig:
        return cls(
            broken_percent=float(rng.randint(90, 100)),
            broken_multiplier=float(rng.choice((5, 10, 10, 10, 20))),
            duration_min=rng.uniform(30.0, 120.0),
            max_boost=rng.uniform(1.0, 4.0),
            cart_uplift=rng.uniform(1.0, 2.5),
        )

    def span_ms(self) -> int:
        return int(self.duration_min * MINUTE_MS)

    def prepare(self, world: World, start_ms: int, rng: random.Random) -> Plan:
        pubs = world.public_campaigns()
        self.campaign = camp = rng.choices(pubs, [c.weight for c in pubs])[0]
        r = camp.rule
        if r.kind == "percent":
            self.broken = DiscountRule("percent", self.broken_percent, r.min_total, None)
        else:
            self.broken = DiscountRule("fixed", r.value * self.broken_multiplier, r.min_total)
        self.start_ms = start_ms
        camp.overrides.append((start_ms, start_ms + self.span_ms(), self.broken))
        return Plan(camp.id, [camp.id], "campaign", "start", {"codes": list(camp.codes)})

    def generate(self, world: World, rng: random.Random) -> list[Row]:
        camp = self.campaign
        assert camp is not None
        share = world.campaign_order_share(camp)
        dur = self.duration_min
        t0 = self.start_ms

        def extra(tau: float) -> float:
            boost = 1.0 + (self.max_boost - 1.0) * tau / dur
            return (boost - 1.0) * share * world.rate_at(t0 + int(tau * MINUTE_MS))

        rows: list[Row] = []
        for t in poisson_times(rng, t0, t0 + self.span_ms(), extra):
            idx = world.known_account(rng)
            code = camp.codes[int(rng.random() * len(camp.codes))]
            rows.append(
                world.order(rng, t, idx, code, camp, total=world.cart_total(rng, self.cart_uplift))
            )
        return rows


@dataclass(slots=True)
class FlashSale:
    """Benign: site-wide sale, order volume x3-6 for 1-3 h; the promo share is unchanged."""

    kind: ClassVar[str] = "flash_sale"
    benign: ClassVar[bool] = True
    factor: float
    duration_min: float
    ramp_up_min: float
    ramp_down_min: float
    start_ms: int = field(default=0, init=False)

    @classmethod
    def draw(cls, rng: random.Random) -> FlashSale:
        return cls(
            factor=rng.uniform(3.0, 6.0),
            duration_min=rng.uniform(60.0, 180.0),
            ramp_up_min=rng.uniform(5.0, 20.0),
            ramp_down_min=rng.uniform(10.0, 40.0),
        )

    def span_ms(self) -> int:
        return int((self.ramp_up_min + self.duration_min + self.ramp_down_min) * MINUTE_MS)

    def multiplier(self, tau: float) -> float:
        up, flat = self.ramp_up_min, self.ramp_up_min + self.duration_min
        if tau < 0.0:
            return 1.0
        if tau < up:
            return 1.0 + (self.factor - 1.0) * tau / up
        if tau < flat:
            return self.factor
        if tau < flat + self.ramp_down_min:
            return self.factor - (self.factor - 1.0) * (tau - flat) / self.ramp_down_min
        return 1.0

    def prepare(self, world: World, start_ms: int, rng: random.Random) -> Plan:
        self.start_ms = start_ms
        m0 = (start_ms - world.start_ms) // MINUTE_MS
        for m in range(m0, min(len(world.lam), m0 + self.span_ms() // MINUTE_MS + 1)):
            world.lam[m] *= self.multiplier(m - m0 + 0.5)
        return Plan(None, ["*"], "global", "start")

    def generate(self, world: World, rng: random.Random) -> list[Row]:
        return []  # the baseline flow itself carries the extra orders


@dataclass(slots=True)
class PublicLaunch:
    """Benign: a brand-new public campaign with one code, launched by an email blast."""

    kind: ClassVar[str] = "public_launch"
    benign: ClassVar[bool] = True
    peak_rate_per_min: float
    rise_min: float
    tau_min: float  # decay time of the blast
    steady_share: float  # share of all orders using the code once the blast has faded
    new_account_share: float
    percent: float
    start_ms: int = field(default=0, init=False)
    campaign: Campaign | None = field(default=None, init=False)

    @classmethod
    def draw(cls, rng: random.Random) -> PublicLaunch:
        return cls(
            peak_rate_per_min=rng.uniform(8.0, 40.0),
            rise_min=rng.uniform(2.0, 10.0),
            tau_min=rng.uniform(20.0, 60.0),
            steady_share=rng.uniform(0.005, 0.03),
            new_account_share=rng.uniform(0.02, 0.15),
            percent=float(rng.choice((10, 15, 20))),
        )

    def span_ms(self) -> int:
        return int((self.rise_min + 3.0 * self.tau_min) * MINUTE_MS)

    def prepare(self, world: World, start_ms: int, rng: random.Random) -> Plan:
        theme = world.spare_theme  # named like the other campaigns: no hint in the id
        cid = f"{theme}-{world.year}"
        code = f"{theme}{world.year % 100 if rng.random() < 0.5 else rng.randint(5, 50)}"
        self.campaign = camp = Campaign(
            cid,
            "public",
            [code],
            DiscountRule("percent", self.percent, 0.0, 2000.0),
            launched_ms=start_ms,
        )
        world.campaigns[cid] = camp
        self.start_ms = start_ms
        return Plan(cid, [cid], "campaign", "start", {"codes": [code]})

    def generate(self, world: World, rng: random.Random) -> list[Row]:
        camp = self.campaign
        assert camp is not None
        t0 = self.start_ms
        peak = self.peak_rate_per_min * world.scale

        def rate(tau: float) -> float:
            blast = (
                peak * tau / self.rise_min
                if tau < self.rise_min
                else peak * math.exp(-(tau - self.rise_min) / self.tau_min)
            )
            return blast + self.steady_share * world.rate_at(t0 + int(tau * MINUTE_MS))

        rows: list[Row] = []
        times = poisson_times(rng, t0, world.end_ms, rate)
        if times:
            times[0] = t0
        for t in times:
            if rng.random() < self.new_account_share:
                idx = world.new_account(
                    t - int(rng.uniform(1.0, 3 * DAY_MS / MINUTE_MS) * MINUTE_MS), rng
                )
            else:
                idx = world.known_account(rng)
            rows.append(world.order(rng, t, idx, camp.codes[0], camp))
        return rows


REGISTRY: dict[str, type[IncidentGenerator]] = {
    g.kind: g
    for g in (Leak, SlowLeak, BotFarm, Harvest, DiscountMisconfig, FlashSale, PublicLaunch)
}
INCIDENT_KINDS: tuple[str, ...] = ("leak", "slow_leak", "bot_farm", "harvest", "discount_misconfig")
BENIGN_KINDS: tuple[str, ...] = ("flash_sale", "public_launch")
