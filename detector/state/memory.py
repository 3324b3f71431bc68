"""The embedded store: plain dicts in this process, used by replay by default.

It follows the Redis store's semantics exactly (the same contract tests run on both). Expiry is by
event time instead of the wall clock, so that replaying days of history in seconds still reclaims
windows that have passed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from detector.errors import StaleProgress
from detector.state.base import Commit, Delta, Progress, Read, ReadResult
from detector.state.keys import Keys

_SWEEP_EVERY = 256


class MemoryStore:
    def __init__(self, keys: Keys, ttl_s: float) -> None:
        self._keys = keys
        self._ttl = ttl_s
        self._hashes: dict[str, dict[str, float]] = {}
        self._zsets: dict[str, dict[str, float]] = {}
        self._zmin: dict[str, float] = {}  # a lower bound of each zset's scores
        self._zmax: dict[str, float] = {}  # each zset's newest score (trims are relative to it)
        self._touched: dict[str, float] = {}
        self._claims: dict[str, tuple[str, float]] = {}
        self._offsets: dict[str, Progress] = {}
        self._dirty: set[str] = set()
        self._alerts: dict[str, bytes] = {}
        self._outbox: dict[str, bytes] = {}
        self._models: dict[str, bytes] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._clocks: dict[str, dict[int, bytes]] = {}
        self._now_ts = 0.0
        self._applies = 0
        self._seq = 0

    def ping(self) -> None:
        return None

    def claim(self, claims: Sequence[tuple[str, str]], ttl_s: float) -> list[bool]:
        out = []
        held_by, until = self._claims, self._now_ts + ttl_s
        for event_id, pos in claims:
            held = held_by.get(event_id)
            if held is None or held[0] == pos:
                held_by[event_id] = (pos, until)
                out.append(True)
            else:
                out.append(False)
        return out

    def apply(self, delta: Delta, progress: Progress | None) -> set[str]:
        if progress is not None:
            stored = self._offsets.get(progress.source, Progress(progress.source)).offsets
            for part, want in progress.expected.items():
                if stored.get(part) != want:
                    raise StaleProgress(
                        f"partition {part} of {progress.source} is at offset {stored.get(part)}, "
                        f"not {want}: another writer applied it"
                    )
        now = self._merge(delta)
        self._dirty |= delta.dirty
        passed = {
            m for m, gate in delta.gated.items() if len(self._zsets.get(gate.key, ())) >= gate.least
        }
        self._dirty |= passed
        if progress is not None:
            p = self._offsets.setdefault(progress.source, Progress(progress.source))
            p.offsets.update(progress.offsets)
            for part, ts in progress.max_ts.items():
                p.max_ts[part] = max(p.max_ts.get(part, ts), ts)
                now = max(now, ts)
        self._now_ts = now
        self._applies += 1
        if self._applies % _SWEEP_EVERY == 0:
            self._sweep()
        return passed

    def _merge(self, delta: Delta) -> float:
        now = self._now_ts
        for (key, fld), by in delta.counters.items():
            h = self._hashes.get(key)
            if h is None:
                h = self._hashes[key] = {}
            h[fld] = h.get(fld, 0.0) + by
            self._touched[key] = max(self._touched.get(key, 0.0), now)
        for key, members in delta.distinct.items():
            z = self._zsets.get(key)
            if z is None:
                z = self._zsets[key] = {}
            latest = 0.0
            self._zmin[key] = min(self._zmin.get(key, math.inf), *members.values())
            for m, ts in members.items():
                if z.get(m, -1.0) < ts:
                    z[m] = ts
                latest = max(latest, ts)
            ttl = delta.ttls.get(key, self._ttl)
            top = self._zmax[key] = max(self._zmax.get(key, latest), latest)
            floor = top - ttl
            # Scan for expired members only when the oldest one may have expired.
            if self._zmin.get(key, -1.0) < floor:
                for m in [m for m, ts in z.items() if ts < floor]:
                    del z[m]
                self._zmin[key] = min(z.values(), default=latest)
            cap = delta.caps[key]
            if len(z) > cap:
                # What heapq.nsmallest would pick (oldest first, ties in insertion order), but
                # sorted in C rather than a Python heap loop over the whole set.
                for m in sorted(z, key=z.__getitem__)[: len(z) - cap]:
                    del z[m]
            # Expiry is by last write: a longer-lived set counts as written later.
            self._touched[key] = max(self._touched.get(key, 0.0), latest + ttl - self._ttl)
            now = max(now, latest)
        return now

    def _sweep(self) -> None:
        floor = self._now_ts - self._ttl
        dead = [k for k, ts in self._touched.items() if ts < floor]
        for k in dead:
            self._hashes.pop(k, None)
            self._zsets.pop(k, None)
            self._zmin.pop(k, None)
            self._zmax.pop(k, None)
            del self._touched[k]
        gone = [e for e, (_, until) in self._claims.items() if until < self._now_ts]
        for e in gone:
            del self._claims[e]

    def read(self, req: Read) -> ReadResult:
        fields = []
        for key, names in req.fields:
            h = self._hashes.get(key, {})
            fields.append([h.get(n, 0.0) for n in names])
        # Whole sets when their lowest score bound is inside the window (the usual case).
        zmin = self._zmin
        counts = []
        for key, since in req.counts:
            z = self._zsets.get(key, {})
            if zmin.get(key, -math.inf) > since:
                counts.append(len(z))
            else:
                counts.append(sum(1 for ts in z.values() if ts > since))
        members = []
        for key, since in req.members:
            z = self._zsets.get(key, {})
            if zmin.get(key, -math.inf) > since:
                members.append(list(z.items()))
            else:
                members.append([(m, ts) for m, ts in z.items() if ts > since])
        hashes = [dict(self._hashes.get(key, {})) for key in req.hashes]
        return ReadResult(fields, counts, members, hashes)

    def progress(self, source: str, partitions: Sequence[int]) -> Progress:
        p = self._offsets.get(source, Progress(source))
        return Progress(
            source,
            {k: v for k, v in p.offsets.items() if k in partitions},
            {k: v for k, v in p.max_ts.items() if k in partitions},
        )

    def exchange_clock(self, source: str, mine: dict[int, bytes]) -> dict[int, bytes]:
        clock = self._clocks.setdefault(source, {})
        clock.update(mine)
        return dict(clock)

    def dirty(self) -> set[str]:
        return set(self._dirty)

    def alert_states(self) -> dict[str, bytes]:
        return dict(self._alerts)

    def commit(self, c: Commit) -> list[bool]:
        applied = []
        for ch in c.changes:
            if self._alerts.get(ch.name) != ch.expected:
                applied.append(False)
                continue
            if ch.new is None:
                self._alerts.pop(ch.name, None)
            else:
                self._alerts[ch.name] = ch.new
            if ch.outbox is not None:
                self._seq += 1
                self._outbox[f"{self._seq:012d}"] = ch.outbox
            applied.append(True)
        if c.marks.distinct:
            self._now_ts = self._merge(c.marks)
        if c.snapshots and self._holds(c.lease_owner):
            self._models.update(c.snapshots)
        self._dirty -= c.clean
        return applied

    def _holds(self, owner: str | None) -> bool:
        held = self._leases.get("models")
        return owner is not None and held is not None and held[0] == owner

    def outbox(self) -> list[tuple[str, bytes]]:
        return sorted(self._outbox.items())

    def ack_outbox(self, ids: Sequence[str]) -> None:
        for i in ids:
            self._outbox.pop(i, None)

    def snapshots(self, names: Sequence[str] | None = None) -> dict[str, bytes]:
        if names is None:
            return dict(self._models)
        return {n: self._models[n] for n in names if n in self._models}

    def try_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        held = self._leases.get(name)
        now = time.monotonic()
        if held is None or held[0] == owner or held[1] < now:
            self._leases[name] = (owner, now + ttl_s)
            return True
        return False

    def release_lease(self, name: str, owner: str) -> None:
        if self._leases.get(name, ("", 0.0))[0] == owner:
            del self._leases[name]

    def close(self) -> None:
        return None
