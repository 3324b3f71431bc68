"""The key schema: every key the detector writes, in one place.

All keys start with the configured prefix (``redis.key_prefix``, default ``pd:``). ``{seg}`` is an
event-time segment: ``bucket // buckets_per_long_window``, so a window spans at most two segment
keys and old segments simply expire (no trimming of hash fields). ``{b}`` is an absolute
event-time bucket index: ``floor(ts / bucket_s)``.

| key | type | content | TTL |
|---|---|---|---|
| ``u:{code}`` | zset | ``{account}\x1f{device}\x1f{ip}`` (a part empty when unknown) -> last event time (capped); compact until a second member set | household |
| ``v:{code}`` | zset | the same for new accounts only: ``A:``, ``D:``, ``I:``; ``F:{account}`` for fresh ones (capped); compact too | retention |
| ``a:{account}`` | zset | ``{campaign}\x1f{code}`` redeemed -> last event time; compact too | retention |
| ``c:{ttl}:{slice}:{shard}`` | hash | compact sets: ``u:{code}`` / ``v:{code}`` / ``a:{account}`` -> MessagePack ``[score, member..., score, member...]`` | slice end + ``{ttl}`` |
| ``g:{campaign}:{seg}`` | hash | per bucket: ``n{b}`` redemptions; over those with a discount and a total: ``s{b}`` discount sum, ``q{b}`` count, ``r{b}`` sum and ``x{b}`` sum of squares of discount/total, ``y{b}`` sum of squared discounts | retention |
| ``dr:{campaign}`` | zset | the last few redemptions' ``{discount/total}\x1f{discount}\x1f{event_id}`` -> event time | retention |
| ``gc:{campaign}`` | zset | codes redeemed -> last event time (capped) | campaign |
| ``gm:{campaign}`` | zset | codes with 2+ distinct accounts -> last event time (capped) | campaign |
| ``o:{seg}`` | hash | ``n{b}`` all orders, with or without a code | retention |
| ``cv:{seg}`` | zset | campaign -> redemptions in the segment (top campaigns for models) | retention |
| ``e:{slice}:{shard}`` | hash | event-id digest -> digest of the position that claimed it (dedupe) | slice end + dedupe horizon |
| ``off:{source}:{p}`` / ``mt:{source}:{p}`` | string | partition's next offset / max event time | none |
| ``clk:{source}`` | hash | partition -> ``{release hold} {watermark hold} {wall time}`` published by its owner (the group clock) | none |
| ``al`` | hash | ``{rule}|{key}`` -> alert-episode state (JSON) | none (lifecycle deletes) |
| ``ob`` | hash | outbox: record id -> alert record not yet delivered to sinks | none (acked) |
| ``dirty`` | set | ``{scope}|{key}|{campaign}`` touched by applied batches, not yet evaluated | none |
| ``m`` | hash | model name -> snapshot bytes | none |
| ``lease:{name}`` | string | owner id of a single-writer lease | lease TTL |

Claims (``e:``): ``{slice}`` is ``floor(redis_time / (horizon / 4))`` (the dedupe horizon), ``{shard}``
the event id's BLAKE2b digest modulo 64; the field is 14 more bytes of that digest (112 bits: two
ids collide with a probability below 1e-19 among 20M claims; a collision would drop one event as a
duplicate) and the value an 8-byte digest of ``source:partition:offset`` (a collision could only
let a duplicate of a redelivered record count as new). A claim is kept 1 to 1.25 horizons and is
looked up in the current slice and the four before. A shard hash is a compact listpack up to 128
claims (~30 B each), a hashtable beyond (~75 B each), against ~200 B for a key per event with its
own TTL. The in-memory store keeps plain ``event_id -> position`` entries, expired by event time.

Compact sets (``c:``): a ``u:``, ``v:`` or ``a:`` set that has only ever held one member set (at most 4
members, e.g. the redeemer triple of a code redeemed once, or a new account's ``A:``, ``D:``, ``I:``
and ``F:``; re-seeing the same members keeps it compact) is a field of a shared hash instead of a key: ``{ttl}`` is the set's TTL in seconds,
``{slice}`` ``floor(redis_time / ceil(ttl / 4))``, ``{shard}`` CRC32 of the set's key modulo 16384.
A field is kept 1 to 1.25 TTLs and looked up in the current slice and the four before, only when
the set's own key does not exist. The first member outside the set promotes it: the field is
deleted and its members go to the zset with the new ones, in the same script. Trims (relative to
the newest member) and caps are the zset's. At 1M codes seen once a shard hash holds ~60 fields of
~60 B: a compact listpack (hash-max-listpack-entries 128, -value 64: Redis defaults). The in-memory
store has no such layout: its dicts cost the same either way.

TTLs: *retention* is the longest window plus the allowed lateness; *memory* is
``windows.memory_s`` (at least retention); *household* is ``windows.household_s`` (at least
memory): a code's redeemer triples link accounts into households for that long, while its distinct
counts cover ``memory_s`` only; *campaign* is ``windows.campaign_memory_s`` (at least retention):
whether a campaign is personal is learned from its codes over it.

Campaign ``~{code}`` stands for a code without ``campaign_id``: each such code is its own campaign
for campaign-level counters and the discount rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detector.config import Config


def standalone_campaign(code: str) -> str:
    return "~" + code


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str
    bucket_s: int
    seg_buckets: int

    @classmethod
    def for_config(cls, cfg: Config) -> Keys:
        """The keys of ``cfg``: its prefix, buckets and one long window per segment."""
        w = cfg.windows
        return cls(cfg.redis.key_prefix, w.bucket_s, w.long_s // w.bucket_s)

    def bucket(self, ts: float) -> int:
        return int(ts // self.bucket_s)

    def seg(self, bucket: int) -> int:
        return bucket // self.seg_buckets

    def code_distinct(self, code: str) -> str:
        return f"{self.prefix}u:{code}"

    def code_new_distinct(self, code: str) -> str:
        return f"{self.prefix}v:{code}"

    def account_codes(self, account: str) -> str:
        return f"{self.prefix}a:{account}"

    def campaign_counts(self, campaign: str, bucket: int) -> str:
        return f"{self.prefix}g:{campaign}:{self.seg(bucket)}"

    def campaign_codes(self, campaign: str) -> str:
        return f"{self.prefix}gc:{campaign}"

    def campaign_ratios(self, campaign: str) -> str:
        return f"{self.prefix}dr:{campaign}"

    def campaign_shared(self, campaign: str) -> str:
        return f"{self.prefix}gm:{campaign}"

    def orders(self, bucket: int) -> str:
        return f"{self.prefix}o:{self.seg(bucket)}"

    def campaign_volume(self, bucket: int) -> str:
        return f"{self.prefix}cv:{self.seg(bucket)}"

    @property
    def compact(self) -> str:
        """The prefix of the compact-set hashes ``c:{ttl}:{slice}:{shard}`` (built in Lua)."""
        return f"{self.prefix}c:"

    @property
    def claims(self) -> str:
        """The prefix of the claim hashes ``e:{slice}:{shard}`` (built in the Redis script)."""
        return f"{self.prefix}e:"

    def offsets(self, source: str, partition: int) -> str:
        return f"{self.prefix}off:{source}:{partition}"

    def max_ts(self, source: str, partition: int) -> str:
        return f"{self.prefix}mt:{source}:{partition}"

    def group_clock(self, source: str) -> str:
        return f"{self.prefix}clk:{source}"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}al"

    @property
    def outbox(self) -> str:
        return f"{self.prefix}ob"

    @property
    def dirty(self) -> str:
        return f"{self.prefix}dirty"

    @property
    def models(self) -> str:
        return f"{self.prefix}m"

    def lease(self, name: str) -> str:
        return f"{self.prefix}lease:{name}"
