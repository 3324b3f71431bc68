"""The state-store protocol shared by the embedded in-memory store and Redis.

The store holds three kinds of data, all keyed by the schema in ``keys.py``:

- windowed counters: hashes of ``field -> number`` (fields name an event-time bucket);
- distinct sets: sorted sets of ``member -> last event time``, capped in size;
- the detector's own bookkeeping: source progress (offsets, per-partition max event time), event-id
  claims for dedupe, alert-episode states, an alert outbox, model snapshots and leases.

One batch of events is written by ``apply`` atomically with the source offsets it covers, so a
crash resumes from a consistent point. Decisions taken after reading the new state (alert
transitions, model snapshots) are written by ``commit`` atomically with their outbox records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

# Sets of at most this many members may live compact in Redis: most codes and accounts are seen
# once.
SMALL_SET = 4


class Gate(NamedTuple):
    """Set ``key`` holds at least ``least`` members (both stores alike)."""

    key: str
    least: int


@dataclass(slots=True)
class Delta:
    """Pre-aggregated effects of one batch of new events."""

    counters: dict[tuple[str, str], float] = field(default_factory=dict)
    distinct: dict[str, dict[str, float]] = field(default_factory=dict)
    caps: dict[str, int] = field(default_factory=dict)
    # Distinct sets that live longer than the store's default retention.
    ttls: dict[str, float] = field(default_factory=dict)
    # Per-entity sets that may live compact while they hold one member set (Redis: a field of a
    # shared hash, see redis.py); the same set to every reader.
    compact: set[str] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    # Dirty members added only if their gate's set may hold enough members after the batch
    # (``Gate``). Entities whose sets are smaller cannot fire any rule: neither marked dirty nor
    # evaluated.
    gated: dict[str, Gate] = field(default_factory=dict)

    def incr(self, key: str, fld: str, by: float = 1.0) -> None:
        k = (key, fld)
        self.counters[k] = self.counters.get(k, 0.0) + by

    def seen(
        self,
        key: str,
        member: str,
        ts: float,
        cap: int,
        ttl: float | None = None,
        compact: bool = False,
    ) -> None:
        members = self.distinct.get(key)
        if members is None:
            members = self.distinct[key] = {}
            self.caps[key] = cap
            if ttl is not None:
                self.ttls[key] = ttl
            if compact:
                self.compact.add(key)
        if members.get(member, -1.0) < ts:
            members[member] = ts

    def __len__(self) -> int:
        return len(self.counters) + len(self.distinct)


@dataclass(slots=True)
class Progress:
    """How far one source has been applied: next offset and max event time per partition.

    ``expected`` holds the offsets the writer believes are stored now (None: none stored); if
    another writer has moved a partition since, ``apply`` raises ``StaleProgress`` and writes
    nothing, so two instances can never both apply the same records.
    """

    source: str
    offsets: dict[int, int] = field(default_factory=dict)
    max_ts: dict[int, float] = field(default_factory=dict)
    expected: dict[int, int | None] = field(default_factory=dict)


@dataclass(slots=True)
class Read:
    """One round trip of reads: hash fields, distinct counts and members since a time."""

    fields: list[tuple[str, Sequence[str]]] = field(default_factory=list)
    counts: list[tuple[str, float]] = field(default_factory=list)
    members: list[tuple[str, float]] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    # Sets of ``members`` that may be compact (``Delta.compact``), with the TTL they were
    # written with (None: the store's default).
    compact: dict[str, float | None] = field(default_factory=dict)


@dataclass(slots=True)
class ReadResult:
    fields: list[list[float]]
    counts: list[int]
    members: list[list[tuple[str, float]]]
    hashes: list[dict[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class AlertChange:
    """Set (or, with ``new`` None, delete) one alert-episode state if it still equals ``expected``.

    Compare-and-set makes transitions safe when several instances evaluate the same key.
    """

    name: str
    expected: bytes | None
    new: bytes | None
    outbox: bytes | None = None


@dataclass(slots=True)
class Commit:
    changes: list[AlertChange] = field(default_factory=list)
    # State derived from a read (e.g. a code now known to be shared), merged like a Delta.
    marks: Delta = field(default_factory=Delta)
    # Model snapshots are written only while ``lease_owner`` holds the models lease.
    snapshots: dict[str, bytes] = field(default_factory=dict)
    lease_owner: str | None = None
    clean: set[str] = field(default_factory=set)


class Store(Protocol):
    """What the pipeline needs from state; see the module docstring."""

    def ping(self) -> None: ...

    def claim(self, claims: Sequence[tuple[str, str]], ttl_s: float) -> list[bool]:
        """Claim ``(event_id, position)`` pairs; True where the event is new.

        A claim already held by the same position counts as new: that event was claimed by an
        attempt that crashed before its batch was applied, and is now being redelivered.
        """
        ...

    def apply(self, delta: Delta, progress: Progress | None) -> set[str]:
        """Write a batch's delta and its progress atomically (or raise ``StaleProgress``).

        Returns the members of ``delta.gated`` whose set reached its size (now dirty).
        """
        ...

    def read(self, req: Read) -> ReadResult: ...

    def progress(self, source: str, partitions: Sequence[int]) -> Progress: ...

    def exchange_clock(self, source: str, mine: dict[int, bytes]) -> dict[int, bytes]:
        """Publish our partitions' clock records and return every partition's (one round trip)."""
        ...

    def dirty(self) -> set[str]: ...

    def alert_states(self) -> dict[str, bytes]: ...

    def commit(self, c: Commit) -> list[bool]:
        """Apply alert changes (each only if its expectation holds) and snapshots atomically."""
        ...

    def outbox(self) -> list[tuple[str, bytes]]: ...

    def ack_outbox(self, ids: Sequence[str]) -> None: ...

    def snapshots(self, names: Sequence[str] | None = None) -> dict[str, bytes]:
        """The named model snapshots that exist; every one with ``names`` None."""
        ...

    def try_lease(self, name: str, owner: str, ttl_s: float) -> bool: ...

    def release_lease(self, name: str, owner: str) -> None: ...

    def close(self) -> None: ...
