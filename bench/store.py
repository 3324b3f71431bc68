"""What the Redis store's scripts cost per event and per set, measured inside Redis.

    python -m bench.store [--batches 20] [--out bench/results/store.json]

Batches of 2,000 growth-bench events (bench/memory.py: one account, device and IP per code) go
through the pipeline's own parse, extraction and ``RedisStore.apply`` on a private
``redis-server`` (the stack's redis.conf, AOF everysec), in three phases: codes never seen
(``new``), the same codes once more (``again``: each set found in its compact field) and draws
from 1,000 codes (``hot``: sets repeat within a batch). Each phase reports, per event and per
distinct set written, the script's time from ``INFO commandstats`` (``evalsha``), the time of
the commands it called, how many it called, and the client's round trip; then the dedupe claims
per event. Times inside Redis, not throughput: what a change to a script saves.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from bench.memory import GROWTH_START, PrivateRedis, slot_event
from detector.config import Config, load_config
from detector.events.parse import Event, parse
from detector.features.extract import Extractor
from detector.state.base import Delta
from detector.state.keys import Keys
from detector.state.redis import RedisStore

BATCH = 2000
HOT = 1000
CLAIM_TTL_S = 3600.0


def _events(cfg: Config, slots: Sequence[int], n0: int) -> list[Event]:
    out = []
    for k, i in enumerate(slots):
        n = n0 + k
        ev = parse(
            slot_event(i, n, GROWTH_START + n, 7),
            now=GROWTH_START + n,
            max_bytes=cfg.events.max_message_bytes,
            max_future_skew_s=cfg.events.max_future_skew_s,
        )
        assert isinstance(ev, Event), ev
        out.append(ev)
    return out


def _commandstats(r: redis.Redis) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): v for k, v in stats.items()}


def _measure(
    r: redis.Redis, batches: list[list[Event]], step: Callable[[list[Event]], int]
) -> dict[str, Any]:
    """Run ``step`` (which returns the sets it wrote) over the batches with fresh statistics."""
    r.config_resetstat()
    events = sets = 0
    wall = 0.0
    for evs in batches:
        t0 = time.perf_counter()
        sets += step(evs)
        wall += time.perf_counter() - t0
        events += len(evs)
    cs = _commandstats(r)
    script = cs.get("evalsha", {}).get("usec", 0.0)
    inner = {k: v for k, v in cs.items() if k not in ("evalsha", "config|resetstat") and v["calls"]}
    calls = sum(v["calls"] for v in inner.values())
    per = max(sets, 1)
    return {
        "events": events,
        "sets": sets,
        "sets_per_event": round(sets / events, 3),
        "script_us_per_event": round(script / events, 2),
        "script_us_per_set": round(script / per, 2),
        "commands_us_per_set": round(sum(v["usec"] for v in inner.values()) / per, 2),
        "calls_per_set": round(calls / per, 2),
        "round_trip_us_per_event": round(wall / events * 1e6, 2),
        "commands": {
            k: {"calls_per_set": round(v["calls"] / per, 3), "us_per_call": v["usec_per_call"]}
            for k, v in sorted(inner.items(), key=lambda kv: -kv[1]["usec"])
        },
    }


def run(batches: int, workdir: Path) -> dict[str, Any]:
    cfg = load_config(None, {})
    keys = Keys.for_config(cfg)
    extractor = Extractor.for_config(cfg, keys)
    pr = PrivateRedis(workdir)
    try:
        store = RedisStore(pr.client, keys, cfg.retention_s)

        def apply(evs: list[Event]) -> int:
            delta = Delta()
            extractor.add(delta, evs)
            store.apply(delta, None)
            return len(delta.distinct)

        def claim(evs: list[Event]) -> int:
            store.claim([(e.event_id, f"bench:0:{n}") for n, e in enumerate(evs)], CLAIM_TTL_S)
            return len(evs)

        rng = random.Random(1)
        pool = batches * BATCH
        uniform: list[Sequence[int]] = [range(b * BATCH, (b + 1) * BATCH) for b in range(batches)]
        phases: dict[str, list[Sequence[int]]] = {
            "new": uniform,
            "again": uniform,  # the same codes once more
            "hot": [[rng.randrange(HOT) for _ in range(BATCH)] for _ in range(batches)],
        }
        out: dict[str, Any] = {"batch_events": BATCH, "batches": batches, "pool": pool}
        n0 = 0
        for name, slots in phases.items():
            evs = []
            for s in slots:
                evs.append(_events(cfg, s, n0))
                n0 += len(s)
            out[name] = _measure(pr.client, evs, apply)
        claims = [_events(cfg, s, n0 + b * BATCH) for b, s in enumerate(uniform)]
        out["claims"] = _measure(pr.client, claims, claim)
        return out
    finally:
        pr.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=20, help="batches of 2,000 events a phase")
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pdstore-") as d:
        res = run(a.batches, Path(d))
    print(f"{'phase':8s} {'sets/ev':>8s} {'script us/ev':>13s} {'us/set':>8s} {'calls/set':>10s}")
    for name in ("new", "again", "hot", "claims"):
        p = res[name]
        print(
            f"{name:8s} {p['sets_per_event']:8.3f} {p['script_us_per_event']:13.2f} "
            f"{p['script_us_per_set']:8.2f} {p['calls_per_set']:10.2f}"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
