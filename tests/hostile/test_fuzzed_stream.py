"""A hostile stream through `detector run`: 100k fuzzed messages, generated from a seed.

The corpus (``corpus(seed, now, n)``) mixes valid orders with every kind of garbage a producer,
a broken proxy or an attacker can put on the topic: random bytes, truncated JSON, nesting far
deeper than the parser allows, messages just under and over ``events.max_message_bytes``, wrong
JSON types in every field, NaN/Infinity and overflowing numbers, raw and escaped control
characters, invalid UTF-8 (stray bytes, overlong forms, encoded surrogates, a multi-byte
character cut in half), impossible dates, far-future and far-past times, JSON nulls and Kafka
tombstones, exact re-sends. Each message carries the outcome CONTRACT.md §1 gives it, decided
by construction while generating (and cross-checked offline against ``detector.events.parse``
before anything is sent, so a disagreement names the message): ``ok``, ``late`` (an old time is
never bad), ``duplicate`` (a re-sent event id counts once), or a dead-letter reason.

One `detector run` consumes it all from a one-partition topic on the shared stack. Proven:

- no crash: the process is alive at the end and exits 0 on SIGTERM;
- every bad message is dead-lettered exactly once, with its original bytes and the expected
  ``dlq.reason`` (checked per source offset, not only per count), and the per-reason metrics agree;
- good ones are processed (``ok``), far-past ones are counted ``late`` and not dead-lettered,
  re-sends are ``duplicate``;
- memory is flat: VmRSS (``/proc/<pid>/status``) sampled during the run grows after warm-up by
  less than RSS_GROWTH_MAX_MB (see the constant for why that bound).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from kafka_io import produce

from detector.events.parse import Event, parse

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SEED = 20_261_125
N_MESSAGES = 100_000
MAX_BYTES = 65_536  # events.max_message_bytes (default)
FUTURE_SKEW_S = 300.0  # events.max_future_skew_s (default)
LATENESS_S = 120.0  # events.allowed_lateness_s (default)
# Valid events walk forward through this much event time, ending ~2 minutes ago; far-future
# times are at least an hour ahead, so neither drifts across the wall-clock checks during a run.
SPAN_S = 2_900.0
# No late/duplicate traps in the first slices: a slice's watermark comes from the slices before.
WARM_MESSAGES = 5_000
# Memory. What `run` holds in process is bounded by config and is all in use early: the
# alignment buffer (<= events.align_buffer_records), one batch (<= kafka.max_poll_records), the
# consumer's fetch buffers (kafka.max_partition_fetch_bytes, 1 MB, per fetch), per-campaign
# models (20 campaigns here), a rate-limited dead-letter log (one entry per reason), bounded
# metric label sets; entity state lives in Redis. After warm-up (WARMUP_FRACTION of the stream,
# by which every message kind and code path has been seen) the one buffer that can still fill
# up is the dead-letter/alert producer's send buffer: kafka-python's buffer_memory, 32 MB. So
# the final VmRSS may exceed the post-warm-up one by at most that plus a few fetches: 40 MB
# (about +30 % here). A leak of 0.5 KB per message over the ~80k later messages breaks it.
WARMUP_FRACTION = 0.2
RSS_GROWTH_MAX_MB = 40.0


# ------------------------------------------------------------------ corpus --


@dataclass(frozen=True, slots=True)
class Msg:
    value: bytes | None
    expect: str  # "ok", "late", "duplicate" or a dead-letter reason


def iso(ts: float, tz: timezone = UTC, digits: int = 3) -> str:
    dt = datetime.fromtimestamp(ts, UTC).astimezone(tz)
    text = dt.isoformat(timespec="microseconds")
    head, frac_tz = text[:19], text[19:]
    frac, off = frac_tz[1:7], frac_tz[7:]
    frac = (frac + "000")[:digits]
    off = "Z" if off == "+00:00" else off
    return f"{head}.{frac}{off}" if digits else f"{head}{off}"


def dumps(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, ensure_ascii=False, allow_nan=True).encode()


class Fuzzer:
    """Deterministic for (seed, now, n)."""

    REQUIRED = ("event_id", "ts", "order_id", "account_id")
    OPTIONAL_STR = ("promo_code", "campaign_id", "currency", "ip", "device_id")
    AMOUNTS = ("order_total", "discount")

    def __init__(self, seed: int, now: float, n: int) -> None:
        self.r = random.Random(seed)
        self.now = now
        self.n = n
        self.i = 0
        self.last_valid: bytes | None = None

    # -- building blocks ------------------------------------------------------------------------

    @property
    def ts(self) -> float:
        """Event time of the current message: monotonic in the message index."""
        return self.now - 100.0 - SPAN_S + SPAN_S * self.i / self.n

    def event(self) -> dict[str, Any]:
        r = self.r
        camp = r.randrange(20)
        total = round(r.uniform(10, 5000), 2)
        return {
            "event_id": f"fz-{self.i}",
            "ts": iso(self.ts),
            "order_id": f"o-{self.i}",
            "account_id": f"acc-{r.randrange(30_000)}",
            "promo_code": f"C{camp}-{r.randrange(300)}" if r.random() < 0.7 else None,
            "campaign_id": f"CAMP{camp}",
            "order_total": total,
            "discount": round(total * r.uniform(0, 0.3), 2),
            "currency": "RUB",
            "account_created_at": iso(self.ts - r.uniform(0, 3e7)),
            "ip": f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(256)}",
            "device_id": f"dev-{r.randrange(40_000)}",
        }

    def rand_bytes(self, n: int) -> bytes:
        return self.r.randbytes(n)

    def pick(self, options: list[Callable[[], Msg]]) -> Msg:
        return self.r.choice(options)()

    # -- valid -------------------------------------------------------------------------------

    def ok(self) -> Msg:
        raw = dumps(self.event())
        self.last_valid = raw
        return Msg(raw, "ok")

    def weird_ok(self) -> Msg:
        """Valid by the contract, hostile to whatever sits downstream."""
        r = self.r
        ev = self.event()
        odd_ids = [
            "a\u0000b",
            "line\nbreak\ttab",
            "*?[]{}:\\\"'",
            "🦊💥",
            "\u202eevil",
            " ",
            "x" * 256,
            "__proto__",
            "pd:off:kafka:g:t:0",
            "%s%n%x",
            "<script>",
        ]
        kind = r.randrange(8)
        if kind == 0:
            ev[r.choice(["account_id", "promo_code", "device_id", "order_id"])] = r.choice(odd_ids)
        elif kind == 1:
            ev["event_id"] = f"{r.choice(odd_ids)[:200]}-{self.i}"
        elif kind == 2:  # the same instant written with an odd offset, 9 digits, lower case
            tz = timezone(timedelta(minutes=r.choice([-720, -210, 345, 840])))
            ts = iso(self.ts, tz, digits=r.choice([0, 6, 9]))
            ev["ts"] = ts.lower() if r.random() < 0.3 else ts
        elif kind == 3:  # optional fields null, empty or absent; zero and equal amounts
            for f in ("promo_code", "campaign_id", "ip", "device_id", "account_created_at"):
                v = r.random()
                if v < 0.3:
                    ev[f] = None
                elif v < 0.5:
                    ev.pop(f)
            ev["discount"] = r.choice([0, 0.0, ev["order_total"]])
        elif kind == 4:  # unknown fields: NaN, Infinity, moderate nesting, unicode keys
            ev["x-nan"], ev["x-inf"] = math.nan, -math.inf
            ev["x-deep"] = json.loads("[" * 60 + "]" * 60)
            ev["ключ🦊"] = {"a": [1, {"b": None}], "c": "\u0000"}
        elif kind == 5:  # big but finite numbers
            ev["order_total"], ev["discount"] = 1e300, r.choice([0, 1e299, 1e300])
        elif kind == 6:  # far-future account creation is odd, not invalid
            ev["account_created_at"] = "9999-12-31T23:59:59Z"
        else:  # insignificant whitespace, keys in another order
            raw = json.dumps(dict(reversed(list(ev.items()))), indent=r.choice([None, 1, 4]))
            return Msg(f"\n {raw} \t\r\n".encode(), "ok")
        return Msg(dumps(ev), "ok")

    def near_limit(self) -> Msg:
        """Valid, and up to exactly max_message_bytes: padding in an unknown field."""
        size = self.r.choice(
            [MAX_BYTES, MAX_BYTES - 1, self.r.randrange(MAX_BYTES - 4000, MAX_BYTES)]
        )
        ev = self.event()
        ev["pad"] = "p" * (size - len(dumps({**ev, "pad": ""})))
        raw = dumps(ev)
        assert len(raw) == size <= MAX_BYTES
        return Msg(raw, "ok")

    def late(self) -> Msg:
        r = self.r
        ev = self.event()
        ev["ts"] = r.choice(
            [
                "0001-01-01T00:00:00+14:00",
                "1970-01-01T00:00:00Z",
                "2000-02-29T12:00:00-05:00",
                iso(self.now - 86_400 * r.uniform(1, 3650)),
                iso(self.ts - LATENESS_S - r.uniform(300, 3000)),
            ]
        )
        return Msg(dumps(ev), "late")

    def duplicate(self) -> Msg:
        assert self.last_valid is not None
        return Msg(self.last_valid, "duplicate")

    # -- bad ---------------------------------------------------------------------------------

    def tombstone(self) -> Msg:
        return Msg(None, "tombstone")

    def too_large(self) -> Msg:
        r = self.r
        # Mostly just over the limit, now and then far over it (the broker takes up to 1 MB).
        size = MAX_BYTES + 1 + min(int(r.expovariate(1 / 2000)), 900_000)
        if r.random() < 0.02:
            size = r.randrange(MAX_BYTES * 4, 900_000)
        if r.random() < 0.5:  # a valid event, only too big
            ev = self.event()
            base = dumps({**ev, "pad": ""})
            ev["pad"] = "p" * (size - len(base))
            raw = dumps(ev)
        else:  # size is checked first: even non-UTF-8 garbage is "too_large"
            raw = self.rand_bytes(size)
        assert len(raw) > MAX_BYTES
        return Msg(raw, "too_large")

    def not_utf8(self) -> Msg:
        r = self.r
        raw = dumps(self.event())
        pos = r.randrange(1, len(raw) - 1)
        kind = r.randrange(5)
        if kind == 0:  # random bytes with a byte that never occurs in UTF-8
            b = bytearray(self.rand_bytes(r.randrange(1, 3000)))
            b[r.randrange(len(b))] = r.choice([0xFF, 0xFE, 0xC0, 0xC1, 0xF8])
            return Msg(bytes(b), "not_utf8")
        if kind == 1:  # a multi-byte character cut in half at the end
            ev = self.event()
            ev["account_id"] = "Ёлка"
            whole = dumps(ev)
            return Msg(whole[: whole.index("Ё".encode()) + 1], "not_utf8")
        # An overlong "/", an encoded surrogate, a stray continuation byte: anywhere in the text.
        bad = {2: b"\xc0\xaf", 3: b"\xed\xa0\x80", 4: r.choice([b"\x80", b"\xbf\xbf"])}[kind]
        return Msg(raw[:pos] + bad + raw[pos:], "not_utf8")

    def not_json(self) -> Msg:
        r = self.r
        ev = self.event()
        raw = dumps(ev)
        kind = r.randrange(14)
        if kind == 0:  # truncated (ASCII only: a cut never splits a character)
            out = raw[: r.randrange(1, len(raw) - 1)]
        elif kind == 1:  # printable garbage that cannot start a JSON value
            out = b"#" + bytes(r.choice(range(32, 127)) for _ in range(r.randrange(0, 200)))
        elif kind == 2:  # a raw (unescaped) control character inside a string
            out = raw.replace(b'"acc-', b'"acc' + bytes([r.randrange(0, 32)]) + b"-", 1)
        elif kind == 3:
            out = b"\xef\xbb\xbf" + raw  # a byte-order mark
        elif kind == 4:
            out = raw + b"garbage"
        elif kind == 5:
            out = raw + raw  # two objects
        elif kind == 6:
            out = raw.replace(b'"', b"'")  # single quotes
        elif kind == 7:
            out = raw[:-1] + b",}"  # a trailing comma
        elif kind == 8:  # nesting far deeper than the parser allows
            depth = 20_000 if r.random() < 0.05 else r.choice([300, 1000, r.randrange(300, 3000)])
            out = raw[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
        elif kind == 9:
            out = r.choice([b"", b" ", b"\n\t ", b"\x00"])
        elif kind == 10:  # an escaped lone surrogate: valid UTF-8 bytes, invalid JSON string
            out = raw.replace(b'"acc-', b'"\\ud800acc-', 1)
        elif kind == 11:
            out = b'{"event_id": }'
        elif kind == 12:
            out = b'{"event_id": "unterminated'
        else:  # JSON-ish comments
            out = b"// order\n" + raw
        return Msg(out, "not_json")

    def not_object(self) -> Msg:
        r = self.r
        raw = dumps(self.event())
        out = r.choice(
            [
                b"null",
                b"true",
                b"false",
                b"0",
                b"-1.5e10",
                b'"an order"',
                b"[]",
                b"[" + raw + b"]",
                b'"' + raw.replace(b'"', b'\\"') + b'"',
                b"NaN",
            ]
        )
        return Msg(out, "not_object")

    def missing_field(self) -> Msg:
        r = self.r
        ev = self.event()
        if r.random() < 0.05:
            return Msg(b"{}", "missing_field")
        for f in r.sample(self.REQUIRED, r.randrange(1, len(self.REQUIRED) + 1)):
            ev.pop(f)
        return Msg(dumps(ev), "missing_field")

    def wrong_type(self) -> Msg:
        r = self.r
        ev = self.event()
        f = r.choice([*self.REQUIRED, *self.OPTIONAL_STR, *self.AMOUNTS, "account_created_at"])
        wrong: list[Any] = [12345, 1.5, True, False, [], ["x"], {}, {"a": 1}]
        if f in self.REQUIRED:
            wrong.append(None)  # null is no string and no time
        if f in self.AMOUNTS:
            wrong = ["1000", "", True, [], {}, ["1"]]
        ev[f] = r.choice(wrong)
        return Msg(dumps(ev), "wrong_type")

    def bad_value(self) -> Msg:
        r = self.r
        ev = self.event()
        kind = r.randrange(11)
        if kind == 0:
            ev[r.choice(self.AMOUNTS)] = r.choice([-0.01, -1, -1e300])
        elif kind == 1:
            ev[r.choice(self.AMOUNTS)] = r.choice([math.nan, math.inf, -math.inf])
        elif kind == 2:  # overflows to infinity when parsed
            raw = dumps(ev).replace(b'"order_total": ', b'"order_total": 1e999, "_": ', 1)
            return Msg(raw, "bad_value")
        elif kind == 3:
            ev["order_total"], ev["discount"] = 10.0, 10.01
        elif kind == 4:  # a time without offset
            ev["ts"] = iso(self.ts)[:-1]
        elif kind == 5:  # impossible or non-RFC 3339 times
            ev["ts"] = r.choice(
                [
                    "2026-02-30T00:00:00Z",
                    "2026-13-01T00:00:00Z",
                    "2026-01-01T25:00:00Z",
                    "2026-12-31T23:59:60Z",
                    "10000-01-01T00:00:00Z",
                    "yesterday",
                    "",
                    "2026-01-01",
                    "2026-01-01T00:00:00+25:00",
                    "1764000000",
                    "1764000000000",
                ]
            )
        elif kind == 6:
            ev[r.choice(["event_id", "order_id", "account_id"])] = ""
        elif kind == 7:
            f = r.choice(["event_id", "order_id", "account_id", "promo_code", "campaign_id"])
            ev[f] = "x" * r.randrange(257, 5000)
        elif kind == 8:
            ev["ip"] = "1" * r.randrange(129, 1000)
        elif kind == 9:
            ev["currency"] = "RUB" * 6
        else:
            ev["account_created_at"] = iso(self.ts)[:-1]  # no offset
        return Msg(dumps(ev), "bad_value")

    def future_ts(self) -> Msg:
        r = self.r
        ev = self.event()
        ev["ts"] = r.choice(
            [
                iso(self.now + r.uniform(3600, 86_400 * 365 * 50)),
                "9999-12-31T23:59:59.999Z",
                "2999-01-01T00:00:00+14:00",
            ]
        )
        return Msg(dumps(ev), "future_ts")

    # -- the stream ----------------------------------------------------------------------------

    def messages(self) -> Iterator[Msg]:
        kinds: list[tuple[Callable[[], Msg], float, bool]] = [
            # (generator, weight, allowed during warm-up)
            (self.ok, 36, True),
            (self.weird_ok, 6, True),
            (self.late, 2, False),
            (self.duplicate, 1, False),
            (self.tombstone, 2, True),
            (self.near_limit, 0.15, True),
            (self.too_large, 0.25, True),
            (self.not_utf8, 8, True),
            (self.not_json, 12, True),
            (self.not_object, 4, True),
            (self.missing_field, 6, True),
            (self.wrong_type, 10, True),
            (self.bad_value, 10, True),
            (self.future_ts, 3, True),
        ]
        warm = [(g, w) for g, w, ok in kinds if ok]
        for i in range(self.n):
            self.i = i
            pool = warm if self.i < WARM_MESSAGES else [(g, w) for g, w, _ in kinds]
            if self.i < 50 or self.last_valid is None:
                gen: Callable[[], Msg] = self.ok
            else:
                gen = self.r.choices([g for g, _ in pool], [w for _, w in pool])[0]
            m = gen()
            if m.expect == "ok":
                self.last_valid = m.value
            yield m


def corpus(seed: int, now: float, n: int) -> list[Msg]:
    return list(Fuzzer(seed, now, n).messages())


def offline_outcome(m: Msg, now: float) -> str:
    res = parse(m.value, now=now, max_bytes=MAX_BYTES, max_future_skew_s=FUTURE_SKEW_S)
    return "ok" if isinstance(res, Event) else res.reason


# ---------------------------------------------------------------- the test --


def key(i: int, m: Msg) -> bytes | None:
    """Keys on two thirds of the messages; a tombstone always has one (Kafka requires it)."""
    return None if i % 3 == 0 and m.value is not None else f"k-{i}".encode()


def produce_corpus(bootstrap: str, topic: str, msgs: list[Msg]) -> None:
    sent = produce(
        bootstrap,
        topic,
        [(key(i, m), m.value, 0) for i, m in enumerate(msgs)],
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=1_048_576,
    )
    assert [s.offset for s in sent] == list(range(len(msgs))), (
        "messages did not land in corpus order"
    )


def read_dlq(bootstrap: str, topic: str, n: int, timeout: float) -> list[Any]:
    c = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500, max_records=10_000).values():
                out.extend(recs)
        for recs in c.poll(timeout_ms=1000).values():  # anything beyond n is a bug too
            out.extend(recs)
        return out
    finally:
        c.close()


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler(threading.Thread):
    """(seconds, VmRSS MB, messages consumed) every ``every_s`` while the process lives."""

    def __init__(
        self, pid: int, consumed: Callable[[], float | None], every_s: float = 0.5
    ) -> None:
        super().__init__(daemon=True)
        self.pid, self.consumed, self.every = pid, consumed, every_s
        self.samples: list[tuple[float, float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.halt.wait(self.every):
            try:
                rss = vm_rss_mb(self.pid)
            except (OSError, AssertionError):
                return
            n = self.consumed()
            if n is not None:
                self.samples.append((time.monotonic() - t0, rss, n))


def test_fuzzed_stream_no_crash_every_bad_message_dead_lettered_memory_flat(
    topic: Callable[..., str],
    kafka_bootstrap: str,
    detector_config: Callable[..., Path],
    start_detector: Callable[..., Any],
) -> None:
    now = time.time()
    t0 = time.monotonic()
    msgs = corpus(SEED, now, N_MESSAGES)
    expect = Counter(m.expect for m in msgs)
    # Offline cross-check of the generator against the parser (late and duplicate are decided
    # later, by the watermark and the store; the parser alone calls them "ok").
    parser_view = {"late": "ok", "duplicate": "ok"}
    mismatched = [
        (i, m.expect, got, (m.value or b"")[:120])
        for i, m in enumerate(msgs)
        if (got := offline_outcome(m, now)) != parser_view.get(m.expect, m.expect)
    ]
    assert not mismatched, f"{len(mismatched)} messages classified differently: {mismatched[:10]}"
    gen_s = time.monotonic() - t0

    events, dlq, alerts = topic(hint="fuzz"), topic(hint="fuzz-dlq"), topic(hint="fuzz-alerts")
    t1 = time.monotonic()
    produce_corpus(kafka_bootstrap, events, msgs)
    produce_s = time.monotonic() - t1

    cfg = detector_config(
        events,
        kafka={"topics": {"events": events, "dead_letters": dlq, "alerts": alerts}},
        events={"idle_advance_s": 3600},  # the stream's clock is its own, not the wall's
        logging={"level": "info"},
    )
    t2 = time.monotonic()
    d = start_detector(cfg)

    def consumed() -> float | None:  # None when a scrape fails (a busy process may be slow)
        got = d.metrics()
        return (
            sum(v for k, v in got.items() if k.startswith("detector_events_total{"))
            if got
            else None
        )

    sampler = RssSampler(d.proc.pid, consumed)
    sampler.start()
    d.wait_events(len(msgs), timeout=240)
    run_s = time.monotonic() - t2
    time.sleep(1.0)  # one more sample at rest
    sampler.halt.set()
    sampler.join()
    assert d.proc.poll() is None, "the detector died"
    m = d.wait_for(d.metrics, 30, "a metrics scrape")

    # Memory figures first, so that every outcome below reports them.
    samples = sampler.samples
    (d.log.parent / "rss.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    after = [x for x in samples if x[2] >= WARMUP_FRACTION * len(msgs)]
    assert len(after) >= 5, f"too few samples after warm-up: {samples}"
    warm_rss, final_rss = after[0][1], after[-1][1]
    peak_rss = max(x[1] for x in after)
    report = (
        f"{len(msgs)} messages {dict(expect)}; generate {gen_s:.1f}s, produce {produce_s:.1f}s, "
        f"consume {run_s:.1f}s; VmRSS first sample {samples[0][1]:.0f} MB, after warm-up "
        f"{warm_rss:.0f} MB, peak {peak_rss:.0f} MB, final {final_rss:.0f} MB"
    )
    print(report)

    # Outcomes, from the detector's own counters.
    def total(outcome: str) -> float:
        return m.get(f'detector_events_total{{outcome="{outcome}"}}', 0.0)

    bad = Counter({k: v for k, v in expect.items() if k not in ("ok", "late", "duplicate")})
    got = {o: total(o) for o in ("ok", "late", "duplicate", "dead_letter")}
    want = {**{o: expect[o] for o in ("ok", "late", "duplicate")}, "dead_letter": bad.total()}
    assert got == want, report
    for reason, n in bad.items():
        assert m.get(f'detector_dead_letters_total{{reason="{reason}"}}') == n, reason

    # The dead-letter topic, record by record: original key and bytes, reason, source position.
    recs = read_dlq(kafka_bootstrap, dlq, bad.total(), timeout=120)
    assert len(recs) == bad.total()
    got_reasons: Counter[str] = Counter()
    for rec in recs:
        h = {k: v.decode() for k, v in rec.headers}
        off = int(h["dlq.source.offset"])
        assert h["dlq.source.topic"] == events and h["dlq.source.partition"] == "0"
        assert h["dlq.reason"] == msgs[off].expect, (off, h, (msgs[off].value or b"")[:100])
        assert (rec.key, rec.value) == (key(off, msgs[off]), msgs[off].value), off
        assert h["dlq.detail"]
        got_reasons[h["dlq.reason"]] += 1
    assert got_reasons == bad
    assert len({int(dict(r.headers)["dlq.source.offset"]) for r in recs}) == len(recs)

    # Memory: flat after warm-up.
    assert final_rss - warm_rss < RSS_GROWTH_MAX_MB, report
    assert peak_rss - warm_rss < 2 * RSS_GROWTH_MAX_MB, report

    # A clean stop after all that.
    assert d.stop() == 0
    assert "Traceback" not in d.log.read_text(errors="replace")
