"""The detection pipeline shared by `replay` and `run`.

Records in; state, alerts and dead letters out.

Per batch of records:

1. parse; bad records go to the dead-letter sink (flushed before their offsets are stored);
2. cut the batch into event-time slices (one bucket each, a prefix of every partition), so that
   alerts are evaluated within a bucket of the event that crossed the line, however large the
   batch;
3. per slice: drop late events, claim event ids (dedupe), pre-aggregate, and write the state delta
   atomically with the partition offsets it covers (``Store.apply``);
4. read the touched entities' windowed features, run the rules, and commit alert transitions with
   their outbox records (``Store.commit``);
5. when the watermark closes a bucket: the models' single writer scores then learns each top
   campaign's bucket, and firing alerts are re-checked so they resolve when traffic stops;
6. deliver the outbox to the sinks, then acknowledge it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import compress
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog

from detector.alerts.lifecycle import CAP_RULE, Episode, Lifecycle, Target, episode_name
from detector.alerts.record import Alert
from detector.config import Config
from detector.events.parse import BadEvent, Event, parse
from detector.features.extract import CAMPAIGN_CODES_CAP, Entity, Extractor
from detector.features.view import FeatureReader, Features
from detector.metrics import Metrics
from detector.models.discount import DiscountBaseline
from detector.models.rate import RateModel
from detector.rules import EVENT_RULES, CampaignRate, Finding, RateObservation, RuleContext
from detector.sinks.base import AlertSink, DeadLetterSink
from detector.sources.base import Record
from detector.state.base import Commit, Delta, Gate, Progress, Read, Store
from detector.state.keys import Keys

log = structlog.get_logger(__name__)

MODELS_LEASE = "models"
CLOCK_SNAPSHOT = "__clock__"
_MAX_SLICE = 5000
# A code with this many accounts is marked shared in its campaign (personal_norm counts them).
SHARED_ACCOUNTS = 2


@dataclass(slots=True)
class Stats:
    """What one process has seen; replay prints it as its summary."""

    records: int = 0
    ok: int = 0
    late: int = 0
    duplicate: int = 0
    # Touched codes and accounts not evaluated: their sets are below every rule's least.
    pruned: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    alerts: dict[tuple[str, str, str], int] = field(default_factory=dict)


class _RateLimitedLog:
    """At most one line per reason every ``every_s``, with the count of those not logged."""

    def __init__(self, every_s: float = 5.0) -> None:
        self._every = every_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def bad(self, r: Record, reason: str, detail: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -math.inf) < self._every:
            self._skipped[reason] = self._skipped.get(reason, 0) + 1
            return
        self._last[reason] = now
        log.warning(
            "dead-lettered event",
            reason=reason,
            detail=detail,
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            similar_not_logged=self._skipped.pop(reason, 0),
        )


class PipelineObserver(Protocol):
    """Optional read-only hook (e.g. ``detector backtest`` plots); never changes decisions.

    ``sees_every_entity``: True to see the figures of every touched entity, even those below
    every rule's least, which are otherwise not read at all (slower); False for an observer that
    only times batches (the bench) and must see the pipeline as it runs without one.
    """

    sees_every_entity: bool

    def features(self, f: Features) -> None:
        """An entity's windowed figures, as the event rules are about to see them."""

    def campaign_bucket(
        self, start: float, obs: RateObservation, band: tuple[float, float]
    ) -> None:
        """A campaign's closed bucket, scored and before the model learns it."""

    def batch(self, stats: Stats) -> None:
        """A batch of records has been processed."""


class _CampaignModels:
    __slots__ = ("rate", "ratio")

    def __init__(self, rate: RateModel, ratio: DiscountBaseline) -> None:
        self.rate = rate
        self.ratio = ratio


def _restore(rate: bytes | None, ratio: bytes | None) -> _CampaignModels:
    """A campaign's models from their snapshots; a missing one starts blank."""
    return _CampaignModels(
        RateModel.restore(rate) if rate else RateModel(),
        DiscountBaseline.restore(ratio) if ratio else DiscountBaseline(),
    )


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        alert_sinks: Sequence[AlertSink],
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        *,
        source: str,
        owner: str,
        live: bool,
        wall: Callable[[], float] = time.time,
        observer: PipelineObserver | None = None,
    ) -> None:
        self.cfg = cfg
        self.observer = observer
        self.store = store
        self.sinks = list(alert_sinks)
        self.dlq = dead_letters
        self.metrics = metrics
        self.source = source
        self.owner = owner
        self.live = live
        self.wall = wall
        self.stats = Stats()
        w = cfg.windows
        self.keys = Keys.for_config(cfg)
        self.extractor = Extractor.for_config(cfg, self.keys)
        self.reader = FeatureReader(
            self.keys,
            w.recent_s,
            w.short_s,
            w.long_s,
            cfg.memory_retention_s,
            cfg.campaign_retention_s,
            cfg.household_retention_s,
            w.distinct_exact_cap,
        )
        self.lifecycle = Lifecycle(cfg)
        self._least = self._minimums()
        self.rate_rule = CampaignRate()
        self._zone = ZoneInfo(w.time_zone)
        self._badlog = _RateLimitedLog()
        # Event-time clock: max ts per partition; partitions assigned but without data yet hold
        # the watermark back until they have been idle for `events.idle_partition_s`.
        self._max_ts: dict[int, float] = {}
        self._applied: dict[int, int] = {}
        self._assigned_at: dict[int, float] = {}
        self._last_data: dict[int, float] = {}
        self._last_event_wall = wall()
        self._wm = -math.inf
        self._last_closed: int | None = None
        # Alignment buffers: parsed records per partition, not yet applied.
        self._buf: dict[int, deque[tuple[Record, Event | None]]] = {}
        self._buffered_to: dict[int, int] = {}
        self._frontier: dict[int, float] = {}
        self._models: dict[str, _CampaignModels] = {}
        self._states: dict[str, bytes] | None = None
        # Campaigns without a snapshot, until the next closed bucket (no read per event).
        self._no_snapshot: set[str] = set()
        self._model_cursor: int | None = None  # last bucket the models learned
        self._lease_retry_at = 0.0
        self._leader = False
        # Set when the store may hold work this instance did not finish (a failed call after an
        # apply, partitions from a crashed instance): recover() runs before the next batch.
        self._recover_pending = False
        # The source's "nothing more to fetch right now" per partition (run only).
        self._caught_up: Callable[[int], bool] | None = None
        # The group clock (run only): the lowest holds published by the instances that own the
        # topic's other partitions (see _sync_group), and whether it held our records back.
        self._started = self.wall()
        self._group_release = math.inf
        self._group_wm = math.inf
        self._group_bound = False
        self.held_by_group = False

    # -- configuration -------------------------------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        """Apply a reloaded config (live keys only: the caller rejects restart-only changes)."""
        self.cfg = cfg
        self.lifecycle = Lifecycle(cfg)
        self._least = self._minimums()

    def _minimums(self) -> dict[str, float]:
        """Per scope, the fewest accounts (codes) or codes (accounts) worth evaluating.

        Below every rule's least an entity cannot fire, so it is not evaluated at all. Not
        for an observer that sees every entity's figures (backtest plots).
        """
        if self.observer is not None and self.observer.sees_every_entity:
            return {}
        least = {s: min(r.least(self.cfg) for r in EVENT_RULES[s]) for s in ("code", "account")}
        least["code"] = min(least["code"], SHARED_ACCOUNTS)
        return least

    def _gate(self, ent: Entity, states: dict[str, bytes]) -> Gate | None:
        least = self._least.get(ent.scope)
        if least is None or (
            states and any(episode_name(r.name, ent.key) in states for r in EVENT_RULES[ent.scope])
        ):
            return None  # an open episode is evaluated: it may clear
        return self.extractor.gate(ent, least)

    def _ctx(self) -> RuleContext:
        return RuleContext(self.cfg, self._ratio_baseline)

    # -- partitions and clock ------------------------------------------------------------------

    def assign(self, partitions: Iterable[int]) -> None:
        """Partitions given to this instance: load how far the store has applied them."""
        partitions = list(partitions)
        prog = self.store.progress(self.source, partitions)
        now = self.wall()
        for p in partitions:
            self._assigned_at[p] = now
            if p in prog.offsets:
                self._applied[p] = prog.offsets[p]
            if p in prog.max_ts:
                self._max_ts[p] = prog.max_ts[p]
        # The watermark is recomputed from the partitions now held: one taken over from another
        # instance (or held by a crashed one for a session timeout) may be behind the others,
        # and its events must not count as late for that (they would be skipped for good).
        self._wm = -math.inf

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._max_ts.pop(p, None)
            self._applied.pop(p, None)
            self._buf.pop(p, None)
            self._buffered_to.pop(p, None)
            self._frontier.pop(p, None)
            self._assigned_at.pop(p, None)
            self._last_data.pop(p, None)

    def reload_progress(self) -> dict[int, int]:
        """After a store error or a conflict: what the store really holds for our partitions.

        A failed EXEC may still have applied, and another instance may have taken a partition
        over; the caller rewinds the source to these offsets and drops its in-flight batch.
        """
        parts = sorted(set(self._assigned_at) | set(self._applied))
        prog = self.store.progress(self.source, parts)
        # A slice applied before the failure may not have been evaluated nor its alerts
        # delivered: its entities are in the dirty set, its records in the outbox.
        self._recover_pending = True
        # The models may have learned a bucket whose commit failed (or whose successors' did):
        # continue from the persisted snapshots and their clock, as a new lease owner does.
        if self._leader:
            self._leader = False
            self._models.clear()
            self._lease_retry_at = 0.0
            self.metrics.model_score.clear()  # until the lease is ours again
        self._model_cursor = None
        # Bucket-end re-checks resume from the store's clock (below), not from ours.
        self._last_closed = None
        self._states = None
        self._applied = dict(prog.offsets)
        # The store's clock, not ours: a Redis that lost its last writes (restarted without its
        # last second of AOF) lost their offsets too, and the records it lost, applied again,
        # must not count as late against a watermark that had gone past them.
        self._max_ts = dict(prog.max_ts)
        self._wm = -math.inf
        self.drop_buffers()
        return dict(prog.offsets)

    def watermark(self) -> float:
        lateness = self.cfg.events.allowed_lateness_s
        if not self._max_ts:
            return self._wm
        if not self.live:
            wm = max(self._max_ts.values()) - lateness
        else:
            holds, floor = self._wm_holds()
            low = min(min(holds.values(), default=math.inf), self._group_wm)
            if low == -math.inf:
                return self._wm  # a partition not read yet: its events may be older
            wm = (floor if low == math.inf else low) - lateness
        self._wm = max(self._wm, wm)
        return self._wm

    def _wm_holds(self) -> tuple[dict[int, float], float]:
        """Per assigned partition, the event time it holds the watermark at (run only).

        Its newest event; -inf while it has not been read yet; inf once quiet (no data for
        `events.idle_partition_s` and nothing to fetch). With no traffic at all for
        `events.idle_advance_s`, time passes with the wall clock (CONTRACT.md §2). Also returns
        the clock to use when every partition is quiet: the newest event, or the idle clock.
        """
        now = self.wall()
        idle_s = self.cfg.events.idle_partition_s
        caught_up = self._caught_up
        holds: dict[int, float] = {}
        for p, since in self._assigned_at.items():
            quiet = now - self._last_data.get(p, since) >= idle_s
            if quiet and caught_up is not None and not caught_up(p):
                # Records still to fetch: slow to come (a backlog fetched unevenly across
                # partitions), not idle. Were it let go, its events would all be late.
                quiet = False
            holds[p] = math.inf if quiet else self._max_ts.get(p, -math.inf)
        top = max(self._max_ts.values(), default=-math.inf)
        idle = now - self._last_event_wall
        nothing_to_fetch = caught_up is None or all(map(caught_up, self._assigned_at))
        if idle >= self.cfg.events.idle_advance_s and nothing_to_fetch:
            top += idle
            holds = {p: h if h == -math.inf else max(h, top) for p, h in holds.items()}
        return holds, top

    def _release_holds(self) -> dict[int, float]:
        """Per assigned partition, the event time before which all its records are applied.

        Its oldest buffered event; else, with more to fetch, its frontier; else none (inf).
        """
        holds: dict[int, float] = {}
        caught_up = self._caught_up
        for p in self._assigned_at:
            q = self._buf.get(p)
            head = next((ev.ts for _, ev in q if ev is not None), None) if q else None
            if head is not None:
                holds[p] = head
            elif caught_up is None or caught_up(p):
                holds[p] = math.inf
            else:
                holds[p] = self._frontier.get(p, -math.inf)
        return holds

    def _sync_group(self, partitions: Collection[int]) -> None:
        """Publish our partitions' holds and take the lowest of the other partitions' (run).

        Instances of one group share the counters, so a decision on bucket B (applying its
        events, evaluating them, closing it) waits until every partition of the topic is past
        what B needs, as one process aligning all partitions would. A partition whose record
        has not been refreshed for `events.idle_partition_s` (its owner died or hangs; Kafka
        gives it to another within the session timeout) stops holding the group back, as does
        one nobody has published that long after this instance started.
        """
        if set(partitions) <= self._assigned_at.keys():
            # Alone with the topic: nobody to wait for, nobody reads our records.
            self._group_release = self._group_wm = math.inf
            return
        now = self.wall()
        wm_holds, _ = self._wm_holds()
        mine = {
            p: f"{h!r} {wm_holds[p]!r} {now!r}".encode() for p, h in self._release_holds().items()
        }
        everyone = self.store.exchange_clock(self.source, mine)
        idle_s = self.cfg.events.idle_partition_s
        release, wm = math.inf, math.inf
        for p in set(partitions) | set(everyone):
            if p in self._assigned_at:
                continue
            raw = everyone.get(p)
            if raw is None:
                if now - self._started < idle_s:
                    release = wm = -math.inf
                continue
            r, w, at = (float(x) for x in raw.split())
            if now - at < idle_s:
                release, wm = min(release, r), min(wm, w)
        self._group_release, self._group_wm = release, wm

    def now(self) -> float:
        """The detector's current event time (the watermark plus the allowed lateness)."""
        return self.watermark() + self.cfg.events.allowed_lateness_s

    # -- batches -------------------------------------------------------------------------------

    def process(
        self,
        records: Sequence[Record],
        caught_up: Callable[[int], bool] | None = None,
        partitions: Collection[int] = (),
    ) -> dict[int, int]:
        """Process one batch; returns the next offset per partition that state now covers.

        Records are buffered per partition and released in event-time order across partitions
        (a partition read far ahead waits for the others), up to the oldest frontier among the
        partitions that still have data to deliver. ``caught_up(p)`` tells whether partition
        ``p`` has nothing more to fetch right now; without it every partition is caught up and
        there is no group. With it (run), the other instances' partitions (of ``partitions``,
        the topic's) hold our records back too, through the group clock (``_sync_group``).
        """
        t0 = time.perf_counter()
        self._caught_up = caught_up
        if self._recover_pending:
            self.recover()
            self._recover_pending = False
        wall_now = self.wall()
        ev_cfg = self.cfg.events
        bad = 0
        max_bytes, skew = ev_cfg.max_message_bytes, ev_cfg.max_future_skew_s
        for r in records:
            p = r.partition
            if r.offset < self._buffered_to.get(p, -1) or r.offset < self._applied.get(p, -1):
                continue  # already applied or buffered (a redelivery after a rewind)
            res = parse(r.value, now=wall_now, max_bytes=max_bytes, max_future_skew_s=skew)
            q = self._buf.get(p)
            if q is None:
                q = self._buf[p] = deque()
            if isinstance(res, BadEvent):
                self.dlq.send(r, res.reason, res.detail)
                self._count_bad(r, res)
                bad += 1
                q.append((r, None))
            else:
                q.append((r, res))
                if res.ts > self._frontier.get(p, -math.inf):
                    self._frontier[p] = res.ts
            self._buffered_to[p] = r.offset + 1
            self._last_data[p] = wall_now
        self.stats.records += len(records)
        if bad:
            self.dlq.flush()  # durable before the offsets that skip them are stored
        while True:
            if caught_up is not None:
                self._sync_group(partitions)
            released = False
            for items, offsets in self._slices(self._release_limit(caught_up)):
                self._apply_slice(items, offsets)
                # Close buckets between slices, so models and re-checks run in event-time order.
                self.tick()
                released = True
            if not (released and self._group_bound):
                break  # all we may release now; or the group must move first (poll again soon)
        self.held_by_group = self._group_bound and any(self._buf.values())
        if records:
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        self.tick()
        if self.observer is not None:
            self.observer.batch(self.stats)
        return dict(self._applied)

    def _release_limit(self, caught_up: Callable[[int], bool] | None) -> float:
        """Event time below which buffered records may go.

        A partition with more to fetch will bring events from its frontier (the newest it has
        delivered) on: records older than the slowest such frontier are safe to release, so the
        buffers hold only the skew between partitions. A caught-up partition holds nothing back.
        """
        self._group_bound = False
        if caught_up is None:
            return math.inf
        if sum(len(q) for q in self._buf.values()) > self.cfg.events.align_buffer_records:
            # Memory first: past this, release everything (a lagging partition's events may
            # then arrive late, and are counted so).
            return math.inf
        holding = [self._frontier.get(p, -math.inf) for p in self._assigned_at if not caught_up(p)]
        local = min(holding) if holding else math.inf
        group = self._group_release
        if math.isfinite(group):
            # The bucket every other partition has reached may go: per bucket, the instances
            # advance together, and the slowest can always release its oldest bucket.
            bucket_s = self.cfg.windows.bucket_s
            group = (math.floor(group / bucket_s) + 1) * bucket_s
        self._group_bound = group < local
        return min(local, group)

    def drop_buffers(self) -> None:
        """Forget buffered records (the source is being rewound to the store's offsets)."""
        self._buf.clear()
        self._buffered_to.clear()
        self._frontier = {p: ts for p, ts in self._max_ts.items()}

    def _count_bad(self, r: Record, b: BadEvent) -> None:
        self.metrics.events.labels("dead_letter").inc()
        self.metrics.dead_letters.labels(b.reason).inc()
        self.stats.dead_letters[b.reason] = self.stats.dead_letters.get(b.reason, 0) + 1
        self._badlog.bad(r, b.reason, b.detail)

    def _slices(
        self, limit: float
    ) -> Iterable[tuple[list[tuple[Record, Event | None]], dict[int, int]]]:
        """Cut buffers into slices of one event-time bucket, each a prefix of every partition.

        Dead-lettered records have no time: they go with the prefix they sit in.
        """
        bucket_s = self.cfg.windows.bucket_s
        while True:
            queues = [q for q in self._buf.values() if q]
            if not queues:
                return
            first = min(next((ev.ts for _, ev in q if ev is not None), math.inf) for q in queues)
            if first == math.inf:
                end = math.inf
            elif first >= limit:
                end = -math.inf
            else:
                end = min((math.floor(first / bucket_s) + 1) * bucket_s, limit)
            items: list[tuple[Record, Event | None]] = []
            offsets: dict[int, int] = {}
            for p, q in self._buf.items():
                while q and len(items) < _MAX_SLICE:
                    r, ev = q[0]
                    if ev is not None and ev.ts >= end:
                        break
                    items.append(q.popleft())
                    offsets[p] = r.offset + 1
            if not items:
                return
            yield items, offsets

    def _apply_slice(
        self, items: list[tuple[Record, Event | None]], offsets: dict[int, int]
    ) -> None:
        wm = self.watermark()
        lateness = self.cfg.events.allowed_lateness_s
        newest = -math.inf  # within the slice too: an old event after new ones is late
        fresh: list[Event] = []
        claims: list[tuple[str, str]] = []
        late = 0
        max_ts = self._max_ts
        src = self.source
        for r, ev in items:
            if ev is None:
                continue
            ts = ev.ts
            if ts > max_ts.get(r.partition, -math.inf):
                max_ts[r.partition] = ts
            if ts < wm or ts < newest - lateness:
                late += 1
            else:
                newest = max(newest, ts)
                fresh.append(ev)
                claims.append((ev.event_id, f"{src}:{r.partition}:{r.offset}"))
        flags = self.store.claim(claims, self.cfg.dedupe_horizon_s) if claims else []
        delta = Delta()
        new_events = list(compress(fresh, flags))
        dup = len(fresh) - len(new_events)
        touched = self.extractor.add(delta, new_events)
        states = self._alert_states() if self._least and touched else {}
        gated: dict[str, Entity] = {}
        for ent, t in touched.items():
            member = ent.encode(t)
            gate = self._gate(ent, states)
            if gate is None:
                delta.dirty.add(member)
            else:
                delta.gated[member] = gate
                gated[member] = ent
        maxes = {p: self._max_ts[p] for p in offsets if p in self._max_ts}
        expected = {p: self._applied.get(p) for p in offsets}
        passed = self.store.apply(delta, Progress(src, offsets, maxes, expected))
        self._applied.update(offsets)
        for member, ent in gated.items():
            if member not in passed:
                del touched[ent]
        self.stats.pruned += len(gated) - len(passed)
        ok = len(fresh) - dup
        m = self.metrics
        m.events.labels("ok").inc(ok)
        m.events.labels("late").inc(late)
        m.events.labels("duplicate").inc(dup)
        self.stats.ok += ok
        self.stats.late += late
        self.stats.duplicate += dup
        if fresh:
            self._last_event_wall = self.wall()
        m.last_batch.set(self.wall())
        self._evaluate(touched)
        if self.live:
            now = self.wall()
            for r, _ in items:
                if r.timestamp_ms is not None and r.timestamp_ms > 0:
                    m.decision_lag.observe(max(0.0, now - r.timestamp_ms / 1000))

    # -- rules and alerts ----------------------------------------------------------------------

    def _evaluate(
        self, touched: dict[Entity, float], extra: Sequence[Target] = (), at: float = 0.0
    ) -> None:
        """Run the event rules on touched entities (and on ``extra`` targets at time ``at``)."""
        targets = list(touched.items())
        seen = set(touched)
        for tg in extra:
            ent = Entity(tg.scope, tg.key, tg.campaign)
            if ent not in seen:
                seen.add(ent)
                targets.append((ent, at))
        if not targets:
            return
        feats = self.reader.read(self.store, targets)
        if self.observer is not None:
            for f in feats:
                self.observer.features(f)
        states = self._alert_states()
        ctx = self._ctx()
        observations: list[tuple[Target, Finding | None, float]] = []
        marks = Delta()
        for f in feats:
            ent = f.entity
            for rule in EVENT_RULES.get(ent.scope, ()):
                finding = rule.evaluate(f, ctx)
                if finding is None and episode_name(rule.name, ent.key) not in states:
                    continue
                observations.append(
                    (Target(rule.name, ent.scope, ent.key, ent.campaign), finding, f.t)
                )
            self._mark_shared(f, marks)
        now = max(t for _, t in targets)
        clean = {e.encode(t) for e, t in touched.items()}
        self._decide(states, observations, now, marks, clean=clean)

    def _mark_shared(self, f: Features, marks: Delta) -> None:
        ent = f.entity
        shared = f.accounts.get("memory", 0) >= SHARED_ACCOUNTS
        if ent.scope == "code" and ent.campaign is not None and shared:
            marks.seen(
                self.keys.campaign_shared(ent.campaign),
                ent.key,
                f.t,
                CAMPAIGN_CODES_CAP,
                self.cfg.campaign_retention_s,
            )

    def _decide(
        self,
        states: dict[str, bytes],
        observations: list[tuple[Target, Finding | None, float]],
        now: float,
        marks: Delta | None = None,
        clean: set[str] | None = None,
        snapshots: dict[str, bytes] | None = None,
    ) -> None:
        d = self.lifecycle.decide(states, observations, now)
        for rule, reason in d.suppressed:
            self.metrics.suppressed.labels(rule, reason).inc()
        if not d.changes and not (marks and len(marks)) and not clean and not snapshots:
            return
        applied = self.store.commit(
            Commit(
                changes=d.changes,
                marks=marks or Delta(),
                snapshots=snapshots or {},
                lease_owner=self.owner if snapshots else None,
                clean=clean or set(),
            )
        )
        if self._states is not None:
            if all(applied):
                for ch in d.changes:
                    if ch.new is None:
                        self._states.pop(ch.name, None)
                    else:
                        self._states[ch.name] = ch.new
            else:
                self._states = None  # another instance moved an episode: read them again
        if any(ch.outbox is not None for ch in d.changes):
            self.deliver()

    def _alert_states(self, refresh: bool = False) -> dict[str, bytes]:
        """Episode states, cached between bucket closes (compare-and-set keeps them honest)."""
        if refresh or self._states is None:
            self._states = self.store.alert_states()
        return dict(self._states)

    def deliver(self) -> None:
        """Send pending outbox records to every sink, then acknowledge them."""
        pending = self.store.outbox()
        if not pending:
            return
        alerts = [Alert.from_json(raw) for _, raw in pending]
        for sink in self.sinks:
            sink.write(alerts)
        for a in alerts:
            self.metrics.alert(a)
            k = (a.rule, a.severity, a.status)
            self.stats.alerts[k] = self.stats.alerts.get(k, 0) + 1
        self.store.ack_outbox([i for i, _ in pending])

    def restore_firing(self, states: dict[str, bytes] | None = None) -> None:
        """Make the firing-alerts gauge match the shared episode states (start, bucket ends)."""
        raw_states = self.store.alert_states() if states is None else states
        firing = [Episode.decode(raw) for raw in raw_states.values()]
        self.metrics.sync(
            [
                Alert.from_json(ep.record("firing", ep.fired_at))
                for ep in firing
                if ep.status == "firing"
            ]
        )

    def recover(self) -> None:
        """At start: deliver an outbox left by a crash, evaluate entities left dirty."""
        self.deliver()
        pending: dict[Entity, float] = {}
        for decoded in map(Entity.decode, self.store.dirty()):
            if decoded is not None:
                ent, at = decoded
                pending[ent] = max(at, pending.get(ent, at))
        if pending:
            self._evaluate(pending)

    # -- closed buckets: models and resolution --------------------------------------------------

    def tick(self) -> None:
        """Close every bucket the watermark has passed: models (if ours), re-checks of alerts."""
        wm = self.watermark()
        if wm == -math.inf:
            return
        self.metrics.watermark.set(max(wm, 0.0))
        bucket_s = self.cfg.windows.bucket_s
        target = math.floor(wm / bucket_s) - 1
        if self._last_closed is None:
            self._last_closed = target
        horizon = target - self.cfg.windows.long_s // bucket_s + 1
        self._models_step(target, horizon)
        if target <= self._last_closed:
            return
        for b in range(max(self._last_closed + 1, horizon), target + 1):
            # At each bucket's end, not "now": both replay and run check at the same times.
            self._recheck_firing((b + 1) * bucket_s - 1e-3)
        self._last_closed = target

    def _models_step(self, target: int, horizon: int) -> None:
        """Learn closed buckets while holding the models lease, from where the snapshot stopped.

        The lease is retried (at most once a second) even when no bucket closes, so an
        instance restarted after a crash takes over once the dead owner's lease expires, and
        catches up from the persisted clock rather than skipping the buckets in between.
        """
        now = time.monotonic()
        lagging = self._model_cursor is None or target > self._model_cursor
        ttl = self.cfg.models.lease_ttl_s
        # The owner renews well within the TTL; others retry while there is work to take over.
        if (lagging or self._leader) and now >= self._lease_retry_at:
            self._lease_retry_at = now + min(1.0, ttl / 3)
            was = self._leader
            self._leader = self.store.try_lease(MODELS_LEASE, self.owner, ttl)
            self._no_snapshot.clear()
            if self._leader and not was:
                self._model_cursor = self._load_models(horizon - 1)
            elif not self._leader:
                self._models.clear()  # read the owner's fresh snapshots next time
                self._model_cursor = None
                if was:
                    self.metrics.model_score.clear()  # the new owner exports scores now
        if not self._leader or self._model_cursor is None:
            return
        first = self._model_cursor + 1
        if first < horizon:
            first = self._retained_from(first, horizon)
        for b in range(first, target + 1):
            self._close_bucket(b)
        self._model_cursor = max(self._model_cursor, target)

    def _retained_from(self, first: int, horizon: int) -> int:
        """The first bucket from ``first`` on whose counters are still stored (else ``horizon``).

        A writer that catches up from the snapshots' clock learns every bucket since, also those
        past the windows' span: counters expire `retention_s` after their last write (wall time),
        so a backlog consumed while the lease was taken over still holds them. Buckets whose
        counters expired (a long outage of live traffic) cannot be learned and are skipped.
        """
        k = self.keys
        segs = range(k.seg(first), k.seg(horizon) + 1)
        res = self.store.read(Read(hashes=[k.orders(s * k.seg_buckets) for s in segs]))
        for s, orders in zip(segs, res.hashes, strict=True):
            if orders:
                return max(first, s * k.seg_buckets)
        return horizon

    def _load_models(self, before: int) -> int:
        """Every campaign's stored models and their clock (they belong together); the clock.

        All of them, not only the campaigns busy now: a writer that never stopped keeps learning
        a campaign through its quiet hours, so one that restarted or took over must too. With no
        clock stored the models start after ``before``, a long window back from the watermark:
        where the first writer started must not depend on how far its first batch reached, nor
        on a crash before its first snapshot.
        """
        snaps = self.store.snapshots()
        clock = snaps.get(CLOCK_SNAPSHOT)
        self._models = {}
        for name, blob in snaps.items():
            if name.startswith("rate:"):
                c = name.removeprefix("rate:")
                self._models[c] = _restore(blob, snaps.get(f"ratio:{c}"))
        return int(clock) if clock is not None else before

    def _local_t(self, ts: float) -> float:
        off = datetime.fromtimestamp(ts, UTC).astimezone(self._zone).utcoffset()
        return ts + (off.total_seconds() if off is not None else 0.0)

    def _model_campaigns(self, b: int) -> list[str]:
        k = self.keys
        req = Read(hashes=[k.campaign_volume(b), k.campaign_volume(b - k.seg_buckets)])
        res = self.store.read(req)
        volume: dict[str, float] = {}
        for h in res.hashes:
            for c, n in h.items():
                volume[c] = volume.get(c, 0.0) + n
        top = sorted(volume, key=lambda c: (-volume[c], c))[: self.cfg.metrics.top_campaigns * 5]
        return sorted(set(top) | set(self._models))

    def _campaign_models(self, camps: Sequence[str]) -> None:
        missing = [c for c in camps if c not in self._models]
        if not missing:
            return
        names = [f"rate:{c}" for c in missing] + [f"ratio:{c}" for c in missing]
        snaps = self.store.snapshots(names)
        for c in missing:
            self._models[c] = _restore(snaps.get(f"rate:{c}"), snaps.get(f"ratio:{c}"))

    def _ratio_baseline(self, campaign: str) -> DiscountBaseline | None:
        if campaign not in self._models:
            if campaign in self._no_snapshot:
                return None
            names = [f"rate:{campaign}", f"ratio:{campaign}"]
            snaps = self.store.snapshots(names)
            rate_b, snap = snaps.get(names[0]), snaps.get(names[1])
            if snap is None:
                self._no_snapshot.add(campaign)
                return None
            # Both models as stored, never a blank rate model: the models' writer (this instance
            # after a restart, or when it takes the lease over) learns on from this cache entry.
            self._models[campaign] = _restore(rate_b, snap)
        return self._models[campaign].ratio

    def _close_bucket(self, b: int) -> None:
        k = self.keys
        camps = self._model_campaigns(b)
        self._campaign_models(camps)
        t_end = (b + 1) * k.bucket_s - 1e-3
        n_short = self.cfg.windows.short_s // k.bucket_s
        window = range(b - n_short + 1, b + 1)
        req = Read()
        for seg_b in sorted({k.seg(x) * k.seg_buckets for x in window}):
            in_seg = [x for x in window if k.seg(x) * k.seg_buckets == seg_b]
            req.fields.append((k.orders(seg_b), [f"n{x}" for x in in_seg]))
        n_orders = len(req.fields)
        for c in camps:
            names = [f"{n}{b}" for n in ("n", "q", "r", "x", "s", "y")]
            req.fields.append((k.campaign_counts(c, b), names))
        res = self.store.read(req)
        orders = sum(sum(row) for row in res.fields[:n_orders])
        feats = {
            f.entity.key: f
            for f in self.reader.read(
                self.store, [(Entity("campaign", c, None), t_end) for c in camps]
            )
        }
        states = self._alert_states(refresh=True)
        observations: list[tuple[Target, Finding | None, float]] = []
        # Models and their clock are persisted together every few buckets; after a crash the
        # next owner re-learns the buckets since from the shared counters, which still hold them.
        persist = (b + 1) % self.cfg.models.snapshot_every_buckets == 0
        snapshots: dict[str, bytes] = {CLOCK_SNAPSHOT: str(b).encode()} if persist else {}
        t_local = self._local_t(b * k.bucket_s)
        scores: dict[str, float] = {}
        observed: set[str] = set()
        for c, row in zip(camps, res.fields[n_orders:], strict=True):
            _, q, rsum, sq, amounts, amounts_sq = row
            mdl = self._models[c]
            recent = feats[c].redemptions["short"]
            if mdl.rate.n == 0 and recent == 0:
                # Not started yet: a campaign is modelled from the first bucket whose short window
                # holds one of its redemptions. Candidates come from whole-segment volumes, which
                # may already hold later events; starting on those would make the models depend
                # on how far ahead the store is (speed, restarts, other instances).
                continue
            x = {"value": recent / orders if orders > 0 else 0.0, "t": t_local}
            # The sustained score: an incident keeps holding while it lasts, not only at onset.
            score = mdl.rate.sustained_score_one(x)
            obs = RateObservation(
                campaign=c,
                redemptions=recent,
                orders=orders,
                score=score,
                expected_share=mdl.rate.expected(),
                warmed_up=mdl.rate.warmed_up,
            )
            if self.observer is not None:
                self.observer.campaign_bucket(b * k.bucket_s, obs, mdl.rate.band())
            mdl.rate.learn_one(x)
            if q > 0:
                mdl.ratio.learn_one(
                    {
                        "value": rsum / q,
                        "weight": q,
                        "m2": sq / q,
                        "amount": amounts / q,
                        "amount_m2": amounts_sq / q,
                        "t": t_local,
                    }
                )
            finding = self.rate_rule.evaluate(obs, self.cfg)
            if finding is not None or episode_name("campaign_rate", c) in states:
                observations.append((Target("campaign_rate", "campaign", c, c), finding, t_end))
            observed.add(c)
            scores[c] = score
            if persist:
                snapshots[f"rate:{c}"] = mdl.rate.snapshot()
                snapshots[f"ratio:{c}"] = mdl.ratio.snapshot()
        for raw in states.values():
            ep = Episode.decode(raw)
            if ep.rule == "campaign_rate" and ep.key not in observed:
                # No longer modelled (fell out of the top campaigns): its condition cannot hold.
                observations.append((Target(ep.rule, ep.scope, ep.key, ep.campaign), None, t_end))
        self._export_scores(scores)
        self._decide(states, observations, t_end, snapshots=snapshots)

    def _export_scores(self, scores: dict[str, float]) -> None:
        g = self.metrics.model_score
        g.clear()
        top = sorted(scores, key=lambda c: -scores[c])
        keep = top[: self.cfg.metrics.top_campaigns]
        for c in keep:
            g.labels(c).set(scores[c])
        rest = [scores[c] for c in top[len(keep) :]]
        if rest:
            g.labels("other").set(max(rest))

    def _recheck_firing(self, at: float) -> None:
        """Re-evaluate open episodes at event time ``at``, so that they clear and resolve."""
        states = self._alert_states(refresh=not self._leader)
        self.restore_firing(states)
        targets = []
        for raw in states.values():
            ep = Episode.decode(raw)
            if ep.rule in ("campaign_rate", CAP_RULE) and ep.status == "firing":
                continue  # evaluated per closed bucket / by the lifecycle itself
            targets.append(Target(ep.rule, ep.scope, ep.key, ep.campaign))
        if targets:
            self._evaluate({}, targets, at)
        elif any(Episode.decode(r).rule == CAP_RULE for r in states.values()):
            self._decide(states, [], at)

    def close(self) -> None:
        if self._leader:
            self.store.release_lease(MODELS_LEASE, self.owner)
