"""The detector's windowed state in Redis as plain dicts, for tests comparing runs.

Compact sets (``c:`` hashes, see ``detector/state/keys.py``) are read through the store, so a set
compact in one run and promoted to its own zset in another dumps the same.
"""

from __future__ import annotations

import redis

from detector.state.base import Read
from detector.state.keys import Keys
from detector.state.redis import RedisStore

# Windowed state (detector/state/keys.py). Bookkeeping (offsets, claims, episode states, outbox,
# model snapshots, leases) is compared through its effects, not byte for byte.
STATE_FAMILIES = ("u:", "v:", "a:", "g:", "gc:", "gm:", "o:", "cv:", "dr:")


def dump_state(r: redis.Redis, prefix: str) -> dict[str, dict[str, float]]:
    """Every windowed-state key under ``prefix``: hashes and sets as {field/member: number}."""
    out: dict[str, dict[str, float]] = {}
    keys = Keys(prefix, 60, 60)
    for raw in r.scan_iter(match=f"{prefix}*", count=1000):
        key = raw.decode()[len(prefix) :]
        if key.startswith("c:"):
            ttl = float(key.split(":")[1])
            store = RedisStore(r, keys, ttl)
            for f in r.hkeys(raw):
                name = prefix + f.decode()
                res = store.read(Read(members=[(name, 0.0)], compact={name: ttl}))
                out[f.decode()] = dict(res.members[0])
            continue
        if not key.startswith(STATE_FAMILIES):
            continue
        kind = r.type(raw).decode()
        if kind == "hash":
            out[key] = {f.decode(): float(v) for f, v in r.hgetall(raw).items()}
        elif kind == "zset":
            out[key] = {m.decode(): float(s) for m, s in r.zrange(raw, 0, -1, withscores=True)}
        elif kind != "none":  # expired between SCAN and TYPE
            raise AssertionError(f"unexpected {kind} at {key}")
    return out
