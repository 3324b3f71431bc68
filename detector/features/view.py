"""From state to features: the windowed figures rules look at, read in one round trip.

Members seen after ``t`` (applied already by a partition read ahead) are left out, so that a
figure depends on the events up to ``t`` only, as in replay. Only what rules use is read: codes
need their redeemers ((account, device, IP) triples, whence distinct accounts, devices, IPs and
households) and the distinct new and fresh accounts and their devices and IPs over the long
window (the short one against the hour before it), accounts their codes, campaigns their
counters over the short window. Each window is then a filter on the same rows, so one read
serves every window.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from detector.features.extract import SEP, Entity, new_accounts_cap, redeemers_cap
from detector.state.base import Read, Store
from detector.state.keys import Keys

WINDOWS = ("recent", "short", "long", "memory")
_CAMPAIGN_FIELDS = ("n", "s", "q")


@dataclass(slots=True)
class Features:
    """Figures for one entity at event time ``t``; each dict maps a window name to a value.

    Code and account figures exist for every window, campaign counters for ``recent`` and
    ``short``, new-account figures for those and ``long`` (see ``new_accounts``).
    """

    entity: Entity
    t: float
    accounts: dict[str, int] = field(default_factory=dict)
    devices: dict[str, int] = field(default_factory=dict)
    ips: dict[str, int] = field(default_factory=dict)
    # Codes: their (account, device, IP) triples as stored and each window's start, from which
    # ``households`` links accounts (on demand: few codes need it).
    triples: list[tuple[str, float]] = field(default_factory=list)
    starts: dict[str, float] = field(default_factory=dict)
    # New accounts for ``recent`` and ``short``, and for ``long`` unless the code's sets overflowed
    # within it (too busy for a baseline of its newcomers).
    new_accounts: dict[str, int] = field(default_factory=dict)
    new_devices: dict[str, int] = field(default_factory=dict)
    new_ips: dict[str, int] = field(default_factory=dict)
    # New accounts registered within ``windows.fresh_account_age_s`` before their order.
    fresh_accounts: dict[str, int] = field(default_factory=dict)
    redemptions: dict[str, float] = field(default_factory=dict)
    discount_sum: dict[str, float] = field(default_factory=dict)
    discounted: dict[str, float] = field(default_factory=dict)
    # Campaigns: (discount/total, discount) of the last redemptions in the short window, newest
    # first.
    recent_discounts: list[tuple[float, float]] = field(default_factory=list)
    # Accounts: distinct codes of the campaign it redeemed most codes of, and that campaign.
    codes: dict[str, int] = field(default_factory=dict)
    top_campaign: dict[str, str | None] = field(default_factory=dict)
    # Codes: their campaign's codes, and those with 2+ accounts, over the campaign memory.
    campaign_codes: int = 0
    campaign_shared_codes: int = 0

    def households(self, w: str) -> int:
        """A code's households among the accounts seen within window ``w``.

        Accounts linked by a device or an IP any of them used the code from (within
        ``windows.household_s``, older than the window too) are one household: connected
        components, by union-find. An unknown device or IP may be anyone's, so all unknown ones
        count as one: households are at most the window's distinct devices, and its distinct
        IPs, with "unknown" one of each. A use with neither tells nobody apart: it is left out.
        """
        if self.accounts[w] < 2:
            return self.accounts[w]
        since = self.starts[w]
        parent: dict[str, str] = {}  # account -> another of its household (itself at the root)
        anchor: tuple[dict[str, str], dict[str, str]] = ({}, {})  # device, IP -> first account
        window: list[str] = []
        devices: set[str] = set()
        ips: set[str] = set()
        for m, ts in self.triples:
            parts = m.split(SEP)
            if ts > self.t or len(parts) != 3:
                continue
            acc, dev, ip = parts
            if ts > since and (dev or ip):
                window.append(acc)
                devices.add(dev)
                ips.add(ip)
            parent.setdefault(acc, acc)
            for seen, key in zip(anchor, (dev, ip), strict=True):
                if key:
                    other = seen.setdefault(key, acc)
                    ra, rb = _root(parent, acc), _root(parent, other)
                    if ra != rb:
                        parent[rb] = ra
        roots = {_root(parent, acc) for acc in window}
        return min(len(roots), len(devices), len(ips))


@dataclass(slots=True)
class _Plan:
    f: Features
    fields: list[tuple[int, list[int]]] = field(default_factory=list)
    members: int = -1
    new_members: int = -1
    counts: int = -1


class FeatureReader:
    def __init__(
        self,
        keys: Keys,
        recent_s: int,
        short_s: int,
        long_s: int,
        memory_s: float,
        campaign_memory_s: float,
        household_s: float,
        distinct_cap: int,
    ) -> None:
        self._k = keys
        self._new_cap = new_accounts_cap(distinct_cap)
        self._code_cap = redeemers_cap(distinct_cap)
        self._w = {"recent": recent_s, "short": short_s, "long": long_s, "memory": int(memory_s)}
        self._camp_mem = campaign_memory_s
        self._household = household_s

    def read(self, store: Store, targets: Sequence[tuple[Entity, float]]) -> list[Features]:
        k = self._k
        req = Read()
        plans = []
        count_at: dict[tuple[str, float], int] = {}
        count_ix: list[int] = []
        for ent, t in targets:
            pl = _Plan(Features(ent, t))
            if ent.scope == "code":
                pl.members = len(req.members)
                # Compact sets, with the TTLs the extractor writes them with.
                u = k.code_distinct(ent.key)
                req.members.append((u, t - self._household))
                req.compact[u] = self._household
                pl.new_members = len(req.members)
                v = k.code_new_distinct(ent.key)
                req.members.append((v, t - self._w["long"]))
                req.compact[v] = None
                if ent.campaign is not None:
                    # Per bucket, so that the codes of one campaign share one count.
                    remembered = k.bucket(t) * k.bucket_s - self._camp_mem
                    pl.counts = len(count_ix)
                    for key in (k.campaign_codes(ent.campaign), k.campaign_shared(ent.campaign)):
                        q = (key, remembered)
                        if q not in count_at:
                            count_at[q] = len(req.counts)
                            req.counts.append(q)
                        count_ix.append(count_at[q])
            elif ent.scope == "account":
                pl.members = len(req.members)
                a = k.account_codes(ent.key)
                req.members.append((a, t - self._w["long"]))
                req.compact[a] = None
            elif ent.scope == "campaign":
                pl.members = len(req.members)
                req.members.append((k.campaign_ratios(ent.key), t - self._w["short"]))
                last = k.bucket(t)
                by_seg: dict[int, list[int]] = {}
                for b in range(last - self._w["short"] // k.bucket_s + 1, last + 1):
                    by_seg.setdefault(k.seg(b), []).append(b)
                for buckets in by_seg.values():
                    pl.fields.append((len(req.fields), buckets))
                    names = [f"{n}{b}" for n in _CAMPAIGN_FIELDS for b in buckets]
                    req.fields.append((k.campaign_counts(ent.key, buckets[0]), names))
            plans.append(pl)
        res = store.read(req)
        counts = [res.counts[i] for i in count_ix]
        for pl in plans:
            f = pl.f
            if pl.members >= 0 and f.entity.scope == "code":
                self._redeemers(f, res.members[pl.members])
                new = {
                    "A": f.new_accounts,
                    "D": f.new_devices,
                    "I": f.new_ips,
                    "F": f.fresh_accounts,
                }
                rows = res.members[pl.new_members]
                self._dims(f, rows, new, WINDOWS[:3])
                # Sets keep their newest members up to a cap: when either holds that many since
                # the hour began, older ones of the hour may be gone, and the newcomers' share
                # with them.
                since = f.t - self._w["long"]
                if len(rows) >= self._new_cap or (
                    sum(ts > since for _, ts in f.triples) >= self._code_cap
                ):
                    for d in new.values():
                        del d["long"]
            elif pl.members >= 0 and f.entity.scope == "account":
                self._codes(f, res.members[pl.members])
            elif pl.members >= 0:
                rows = sorted(
                    (r for r in res.members[pl.members] if r[1] <= f.t), key=lambda r: (-r[1], r[0])
                )
                f.recent_discounts = [_discount(m) for m, _ in rows]
            if pl.counts >= 0:
                f.campaign_codes = counts[pl.counts]
                f.campaign_shared_codes = counts[pl.counts + 1]
            if pl.fields:
                self._counters(f, [(res.fields[i], b) for i, b in pl.fields])
        return [pl.f for pl in plans]

    def _redeemers(self, f: Features, rows: list[tuple[str, float]]) -> None:
        """Distinct accounts, devices and IPs per window, from the code's triples.

        Counts need the triples within the widest window only; ``households`` links over all.
        """
        t = f.t
        f.triples = rows
        widest = t - max(self._w.values())
        accounts: dict[str, float] = {}
        devices: dict[str, float] = {}
        ips: dict[str, float] = {}
        # Oldest first, so that each part keeps its newest time.
        for ts, m in sorted((ts, m) for m, ts in rows if widest < ts <= t):
            parts = m.split(SEP)
            # A member of an older schema (docs/operations.md, upgrades) is not a triple.
            if len(parts) == 3:
                accounts[parts[0]] = devices[parts[1]] = ips[parts[2]] = ts
        devices.pop("", None)  # unknown
        ips.pop("", None)
        dims = [sorted(d.values()) for d in (accounts, devices, ips)]
        for w in WINDOWS:
            since = f.starts[w] = t - self._w[w]
            f.accounts[w], f.devices[w], f.ips[w] = (len(d) - bisect_right(d, since) for d in dims)

    def _dims(
        self,
        f: Features,
        rows: list[tuple[str, float]],
        targets: dict[str, dict[str, int]],
        windows: Sequence[str],
    ) -> None:
        """Distinct members per window, by member prefix into ``targets[prefix]``."""
        times: dict[str, list[float]] = {d: [] for d in targets}
        for m, ts in rows:
            lst = times.get(m[0])
            if lst is not None:
                lst.append(ts)
        for d, target in targets.items():
            lst = sorted(times[d])
            # Window (t - w, t]: members after t were applied by a partition read ahead.
            upto = bisect_right(lst, f.t)
            for w in windows:
                target[w] = upto - bisect_right(lst, f.t - self._w[w])

    def _codes(self, f: Features, rows: list[tuple[str, float]]) -> None:
        # Each member's campaign once, not once per window.
        seen = [(m.split(SEP, 1)[0], ts) for m, ts in rows if ts <= f.t]
        for w in WINDOWS[:3]:
            since = f.t - self._w[w]
            per: dict[str, int] = {}
            for camp, ts in seen:
                if since < ts:
                    per[camp] = per.get(camp, 0) + 1
            top = max(per, key=lambda c: (per[c], c)) if per else None
            f.codes[w] = per[top] if top is not None else 0
            f.top_campaign[w] = top

    def _counters(self, f: Features, rows: list[tuple[list[float], list[int]]]) -> None:
        bucket_s = self._k.bucket_s
        last = self._k.bucket(f.t)
        for w in WINDOWS[:2]:
            first = last - self._w[w] // bucket_s + 1
            sums = [0.0, 0.0, 0.0]
            for values, buckets in rows:
                nb = len(buckets)
                for j in range(3):
                    for b, v in zip(buckets, values[j * nb : (j + 1) * nb], strict=True):
                        if b >= first:
                            sums[j] += v
            f.redemptions[w], f.discount_sum[w], f.discounted[w] = sums


def _root(parent: dict[str, str], x: str) -> str:
    while (p := parent[x]) != x:
        parent[x] = x = parent[p]  # path halving
    return x


def _discount(member: str) -> tuple[float, float]:
    ratio, amount, _ = member.split(SEP, 2)
    return float(ratio), float(amount)
