"""From state to features: the windowed figures rules look at, read in one round trip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from detector.features.extract import Entity
from detector.state.base import Read, Store
from detector.state.keys import Keys

WINDOWS = ("short", "long")


@dataclass(slots=True)
class Features:
    """Figures for one entity at event time ``t``; each dict maps a window name to a value."""

    entity: Entity
    t: float
    redemptions: dict[str, float] = field(default_factory=dict)
    new_account_redemptions: dict[str, float] = field(default_factory=dict)
    accounts: dict[str, int] = field(default_factory=dict)
    devices: dict[str, int] = field(default_factory=dict)
    ips: dict[str, int] = field(default_factory=dict)
    new_accounts: dict[str, int] = field(default_factory=dict)
    new_devices: dict[str, int] = field(default_factory=dict)
    new_ips: dict[str, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    discount_sum: dict[str, float] = field(default_factory=dict)
    ratio_sum: dict[str, float] = field(default_factory=dict)
    ratio_n: dict[str, float] = field(default_factory=dict)
    # For codes: the code's campaign, over the long window.
    campaign_codes: int = 0
    campaign_shared_codes: int = 0


_FIELDS = {"code": ("n", "w"), "campaign": ("n", "s", "r", "q"), "account": ()}


class FeatureReader:
    def __init__(self, keys: Keys, short_s: int, long_s: int) -> None:
        self._k = keys
        self._w = {"short": short_s, "long": long_s}

    def _buckets(self, t: float) -> list[int]:
        last = self._k.bucket(t)
        n = self._w["long"] // self._k.bucket_s
        return list(range(last - n + 1, last + 1))

    def read(self, store: Store, targets: Sequence[tuple[Entity, float]]) -> list[Features]:
        k = self._k
        req = Read()
        plan: list[tuple[Features, list[tuple[int, str, list[int]]], int, int]] = []
        for ent, t in targets:
            f = Features(ent, t)
            since = t - self._w["long"]
            segs: list[tuple[int, str, list[int]]] = []
            names = _FIELDS.get(ent.scope, ())
            if names:
                by_seg: dict[int, list[int]] = {}
                for b in self._buckets(t):
                    by_seg.setdefault(k.seg(b), []).append(b)
                for buckets in by_seg.values():
                    b0 = buckets[0]
                    key = (
                        k.code_counts(ent.key, b0)
                        if ent.scope == "code"
                        else k.campaign_counts(ent.key, b0)
                    )
                    segs.append((len(req.fields), key, buckets))
                    req.fields.append((key, [f"{n}{b}" for n in names for b in buckets]))
            mi = ci = -1
            if ent.scope == "code":
                mi = len(req.members)
                req.members.append((k.code_distinct(ent.key), since))
                if ent.campaign is not None:
                    ci = len(req.counts)
                    req.counts.append((k.campaign_codes(ent.campaign), since))
                    req.counts.append((k.campaign_shared(ent.campaign), since))
            elif ent.scope == "account":
                mi = len(req.members)
                req.members.append((k.account_codes(ent.key), since))
            plan.append((f, segs, mi, ci))
        res = store.read(req)
        out = []
        for f, segs, mi, ci in plan:
            self._fill(f, segs, res.fields, mi, res.members, ci, res.counts)
            out.append(f)
        return out

    def _fill(
        self,
        f: Features,
        segs: list[tuple[int, str, list[int]]],
        fields: list[list[float]],
        mi: int,
        members: list[list[tuple[str, float]]],
        ci: int,
        counts: list[int],
    ) -> None:
        names = _FIELDS.get(f.entity.scope, ())
        bucket_s = self._k.bucket_s
        for w in WINDOWS:
            first = self._k.bucket(f.t) - self._w[w] // bucket_s + 1
            sums = dict.fromkeys(names, 0.0)
            for idx, _key, buckets in segs:
                row = fields[idx]
                nb = len(buckets)
                for j, n in enumerate(names):
                    vals = row[j * nb : (j + 1) * nb]
                    sums[n] += sum(v for b, v in zip(buckets, vals, strict=True) if b >= first)
            if f.entity.scope == "code":
                f.redemptions[w] = sums["n"]
                f.new_account_redemptions[w] = sums["w"]
            elif f.entity.scope == "campaign":
                f.redemptions[w] = sums["n"]
                f.discount_sum[w] = sums["s"]
                f.ratio_sum[w] = sums["r"]
                f.ratio_n[w] = sums["q"]
            if mi >= 0:
                since = f.t - self._w[w]
                live = [m for m, ts in members[mi] if ts > since]
                if f.entity.scope == "code":
                    dims = {"a": 0, "d": 0, "i": 0, "A": 0, "D": 0, "I": 0}
                    for m in live:
                        dims[m[0]] = dims.get(m[0], 0) + 1
                    f.accounts[w], f.devices[w], f.ips[w] = dims["a"], dims["d"], dims["i"]
                    f.new_accounts[w] = dims["A"]
                    f.new_devices[w], f.new_ips[w] = dims["D"], dims["I"]
                else:
                    f.codes[w] = len(live)
        if ci >= 0:
            f.campaign_codes = counts[ci]
            f.campaign_shared_codes = counts[ci + 1]
