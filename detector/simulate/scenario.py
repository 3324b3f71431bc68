"""Assemble a scenario: draw every parameter from ranges by seed, schedule incidents after the
warm-up without overlap, generate baseline + incidents, label the truth from the final stream."""

from __future__ import annotations

import dataclasses
import gc
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson

from detector.simulate.base import (
    ANCHOR_TEXT,
    HOUR_MS,
    MINUTE_MS,
    Incident,
    IncidentGenerator,
    Plan,
    Row,
    fmt_minute,
    fmt_ts,
    parse_ts,
    sub_rng,
)
from detector.simulate.incidents import BENIGN_KINDS, INCIDENT_KINDS, REGISTRY, drawn_params
from detector.simulate.traffic import BaselineParams, CampaignParams, World, generate_baseline

DEFAULT_START = "2026-01-12T00:00:00Z"


@dataclass(slots=True, frozen=True)
class ScenarioParams:
    """Everything that defines a stream. ``from_seed`` draws the ranges; any field, any field of
    ``baseline``/``campaigns`` (by its bare name) and any incident field (via
    ``incident_overrides={"leak": {...}}``) can be overridden."""

    seed: int
    baseline: BaselineParams
    campaigns: CampaignParams
    warmup_h: float  # no incident starts before this (always >= 6 h)
    min_gap_min: float  # quiet time between two incidents
    start: str = DEFAULT_START
    hours: float = 48.0
    scale: float = 1.0
    incidents: tuple[str, ...] = INCIDENT_KINDS
    benign: tuple[str, ...] = BENIGN_KINDS
    declared: bool = True
    currency: str = "RUB"
    incident_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_seed(cls, seed: int, **overrides: Any) -> ScenarioParams:
        base_names = {f.name for f in fields(BaselineParams)}
        camp_names = {f.name for f in fields(CampaignParams)}
        own_names = {f.name for f in fields(cls)}
        unknown = set(overrides) - base_names - camp_names - own_names
        if unknown:
            raise TypeError(f"unknown scenario parameter(s): {', '.join(sorted(unknown))}")
        baseline = overrides.pop("baseline", None) or BaselineParams.draw(
            sub_rng(seed, "params", "baseline")
        )
        baseline = replace(
            baseline, **{k: overrides.pop(k) for k in list(overrides) if k in base_names}
        )
        campaigns = overrides.pop("campaigns", None) or CampaignParams.draw(
            sub_rng(seed, "params", "campaigns")
        )
        campaigns = replace(
            campaigns, **{k: overrides.pop(k) for k in list(overrides) if k in camp_names}
        )
        rng = sub_rng(seed, "params", "schedule")
        drawn: dict[str, Any] = {
            "warmup_h": rng.uniform(6.0, 10.0),
            "min_gap_min": rng.uniform(60.0, 120.0),
        }
        drawn.update(overrides)
        for k in ("incidents", "benign"):
            if k in drawn:
                drawn[k] = tuple(drawn[k])
        p = cls(seed=seed, baseline=baseline, campaigns=campaigns, **drawn)
        if p.warmup_h < 6.0:
            raise ValueError("warmup_h must be >= 6: incidents never start in the first 6 hours")
        for k in (*p.incidents, *p.benign):
            if k not in REGISTRY:
                raise ValueError(f"unknown incident kind {k!r}; known: {', '.join(REGISTRY)}")
        return p

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["incident_overrides"] = {k: dict(v) for k, v in self.incident_overrides.items()}
        return d


@dataclass(slots=True)
class Scenario:
    """A generated stream. ``events`` yields CONTRACT §1 dicts in ts order; every access starts
    a fresh, identical pass (the rows are kept, dicts are built on the fly)."""

    params: ScenarioParams
    world: World
    rows: list[Row]
    truth: list[Incident]
    campaigns: dict[str, str]  # declarations handed to the detector ({} when undeclared)
    campaign_kinds: dict[str, str]  # the true kind of every campaign in the stream
    dropped: list[str]  # kinds that did not fit in the stream
    incident_params: dict[str, dict[str, Any]]

    @property
    def start(self) -> str:
        return fmt_ts(self.world.start_ms)

    @property
    def end(self) -> str:
        return fmt_ts(self.world.end_ms)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def events(self) -> Iterator[dict[str, Any]]:
        return self._iter_events()

    def _iter_events(self) -> Iterator[dict[str, Any]]:
        w = self.world
        # ids depend on the start too: two runs of one seed into one topic must not collide
        rng = sub_rng(self.params.seed, "finalize", w.start_ms, w.end_ms)
        rand, bits = rng.random, rng.getrandbits
        order_base = 10_000_000 + rng.randrange(80_000_000)
        absent = w.bp.absent_promo_share
        accounts, account = w.accounts, w.account
        currency = self.params.currency
        last_m, prefix = -1, ""
        for i, (t, a, dev, ip, code, cid, tot, disc) in enumerate(self.rows):
            acc = accounts.get(a) or account(a)
            h = f"{bits(128):032x}"
            m, rem = divmod(t, MINUTE_MS)
            if m != last_m:  # rows are sorted: the minute prefix rarely changes
                last_m, prefix = m, fmt_minute(m)
            ev: dict[str, Any] = {
                "event_id": f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}"
                f"{h[17:20]}-{h[20:]}",
                "ts": f"{prefix}{rem // 1000:02d}.{rem % 1000:03d}Z",
                "order_id": str(order_base + i),
                "account_id": acc[0],
                "account_created_at": acc[1],
            }
            if code is not None or rand() >= absent:
                ev["promo_code"] = code
                ev["campaign_id"] = cid
                ev["order_total"] = tot
                ev["discount"] = disc
            else:  # producers differ: some omit the code fields when there is no code
                ev["order_total"] = tot
            ev["currency"] = currency
            ev["ip"] = ip
            ev["device_id"] = dev
            yield ev

    def truth_dict(self) -> dict[str, Any]:
        params = self.params.to_dict()
        params["world"] = {
            "population": self.world.population,
            "expected_orders": round(self.world.expected_orders, 1),
            "campaigns": {cid: c.describe() for cid, c in self.world.campaigns.items()},
            "blogger_codes": self.world.blogger_codes,
        }
        params["incident_params"] = self.incident_params
        params["dropped"] = self.dropped
        return {
            "seed": self.params.seed,
            "params": params,
            "start": self.start,
            "end": self.end,
            "campaigns": self.campaign_kinds,
            "declared": self.params.declared,
            "events": len(self.rows),
            "incidents": [dataclasses.asdict(i) for i in self.truth],
        }


def _schedule(
    gens: list[tuple[str, IncidentGenerator]], world: World, p: ScenarioParams, rng: random.Random
) -> tuple[list[tuple[str, IncidentGenerator, int]], list[str]]:
    """Random non-overlapping start times inside [start + warm-up, end - 30 min]."""
    order = list(gens)
    rng.shuffle(order)
    win0 = world.start_ms + int(p.warmup_h * HOUR_MS)
    win1 = world.end_ms - 30 * MINUTE_MS
    gap = int(p.min_gap_min * MINUTE_MS)
    dropped: list[str] = []
    while order and sum(g.span_ms() for _, g in order) + gap * (len(order) - 1) > win1 - win0:
        dropped.append(order.pop()[0])
    if not order:
        return [], dropped
    slack = win1 - win0 - sum(g.span_ms() for _, g in order) - gap * (len(order) - 1)
    cuts = sorted(rng.randrange(slack + 1) for _ in order)
    out = []
    t = win0
    for (iid, g), c in zip(order, cuts, strict=True):
        out.append((iid, g, t + c))
        t += g.span_ms() + gap
    return out, dropped


def _nth_account_time(rows: list[Row], keys: set[str], n: int) -> int | None:
    """Earliest ts at which any of ``keys`` is redeemed by its n-th distinct account."""
    best: int | None = None
    seen: dict[str, list[int]] = {}
    for r in rows:
        code = r[4]
        if code is None or code not in keys:
            continue
        accs = seen.setdefault(code, [])
        if r[1] not in accs:
            accs.append(r[1])
            if len(accs) == n:
                best = r[0] if best is None else min(best, r[0])
    return best


def generate(params: ScenarioParams) -> Scenario:
    """Build the stream for ``params`` (deterministic: same params, same rows and truth)."""
    # generation allocates ~10^5 acyclic tuples; cyclic GC passes over them only cost time
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(params)
    finally:
        if was_enabled:
            gc.enable()


def _generate(params: ScenarioParams) -> Scenario:
    p = params
    world = World(p.seed, parse_ts(p.start), p.hours, p.scale, bp=p.baseline, cp=p.campaigns)
    gens: list[tuple[str, IncidentGenerator]] = []
    counts: dict[str, int] = {}
    for kind in (*p.incidents, *p.benign):
        counts[kind] = n = counts.get(kind, 0) + 1
        gen = REGISTRY[kind].draw(sub_rng(p.seed, "incident", kind, n))
        over = p.incident_overrides.get(kind)
        if over:
            gen = replace(gen, **over)  # type: ignore[type-var]
        gens.append((f"{kind}-{n}", gen))
    scheduled, dropped = _schedule(gens, world, p, sub_rng(p.seed, "schedule"))
    scheduled.sort(key=itemgetter(2))
    plans: list[Plan] = [
        g.prepare(world, t0, sub_rng(p.seed, "prepare", iid)) for iid, g, t0 in scheduled
    ]
    rows = generate_baseline(world)
    own: list[list[Row]] = []
    for iid, g, _ in scheduled:
        extra = [
            r
            for r in g.generate(world, sub_rng(p.seed, "generate", iid))
            if world.start_ms <= r[0] < world.end_ms
        ]
        own.append(extra)
        rows += extra
    rows.sort(key=itemgetter(0))  # stable: ties keep generation order, so output is reproducible
    truth: list[Incident] = []
    incident_params: dict[str, dict[str, Any]] = {}
    for (iid, g, t0), plan, extra in zip(scheduled, plans, own, strict=True):
        span_end = t0 + g.span_ms()
        start = t0
        # benign kinds end with their planned window (a launched code keeps a steady tail)
        end = max(r[0] for r in extra) if extra and not g.benign else span_end
        anchor: int | None = t0
        if plan.scope == "campaign" and not g.benign:
            # a broken discount is observable from the campaign's first redemption after it
            hit = [r[0] for r in rows if r[5] == plan.campaign_id and t0 <= r[0] < span_end]
            if hit:
                start, end = hit[0], hit[-1]
            anchor = start
        elif plan.scope == "global":
            start, end = t0, span_end
        if plan.anchor_rule == "second_account":
            anchor = _nth_account_time(rows, set(plan.keys), 2)
        elif plan.anchor_rule == "third_account":
            anchor = _nth_account_time(rows, set(plan.keys), 3)
        if anchor is None:
            anchor = start
        truth.append(
            Incident(
                id=iid,
                kind=g.kind,
                benign=g.benign,
                campaign_id=plan.campaign_id,
                keys=list(plan.keys),
                scope=plan.scope,
                start=fmt_ts(start),
                end=fmt_ts(end),
                anchor=fmt_ts(anchor),
                anchor_rule=ANCHOR_TEXT[plan.anchor_rule],
                params=drawn_params(g),
                details=dict(plan.details),
            )
        )
        incident_params[iid] = {**drawn_params(g), "scheduled_start": fmt_ts(t0)}
    kinds = world.kinds()
    return Scenario(
        p, world, rows, truth, dict(kinds) if p.declared else {}, kinds, dropped, incident_params
    )


# ---- writers -------------------------------------------------------------------------------


def write_jsonl(events: Iterable[Mapping[str, Any]], out: str | Path | IO[bytes]) -> int:
    """Write events as JSON lines with orjson in large chunks; returns the number written."""
    if isinstance(out, (str, Path)):
        with open(out, "wb") as f:
            return write_jsonl(events, f)
    dumps, opt = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    buf: list[bytes] = []
    n = 0
    for ev in events:
        buf.append(dumps(ev, option=opt))
        n += 1
        if len(buf) >= 4096:
            out.write(b"".join(buf))
            buf.clear()
    if buf:
        out.write(b"".join(buf))
    return n


def write_truth(sc: Scenario, path: str | Path) -> None:
    Path(path).write_bytes(orjson.dumps(sc.truth_dict(), option=orjson.OPT_INDENT_2) + b"\n")


def campaigns_yaml(declarations: Mapping[str, str]) -> str:
    """A config snippet in CONTRACT §6 shape; ids are JSON-quoted (valid YAML, never a number)."""
    if not declarations:
        return "campaigns: {}\n"
    lines = ["campaigns:"]
    for cid, kind in declarations.items():
        lines += [f"  {orjson.dumps(cid).decode()}:", f"    kind: {kind}"]
    return "\n".join(lines) + "\n"
