"""``detector simulate``: write a labelled stream to JSONL and/or Kafka, plus its truth file."""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import IO, Any

import orjson
from kafka import KafkaProducer

from detector.simulate.base import HOUR_MS, fmt_ts, parse_ts
from detector.simulate.incidents import BENIGN_KINDS, INCIDENT_KINDS
from detector.simulate.scenario import (
    DEFAULT_START,
    ScenarioParams,
    campaigns_yaml,
    generate,
    write_truth,
)

_COMPRESSION = ("none", "gzip", "snappy", "lz4", "zstd")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``simulate`` sub-command; its handler is ``args.func(args) -> int``."""
    p = subparsers.add_parser(
        "simulate",
        help="generate labelled order traffic with injected promo-code incidents",
        description="Generate a deterministic (per seed) stream of CONTRACT §1 order events "
        "with incidents (leak, slow_leak, bot_farm, harvest, discount_misconfig) and benign "
        "surprises (flash_sale, public_launch), and a truth file labelling them.",
    )
    p.add_argument("--seed", type=int, default=1, help="scenario seed (default 1)")
    p.add_argument(
        "--start",
        default=DEFAULT_START,
        help=f"RFC 3339 start, or 'now' (default {DEFAULT_START}); 'now' ends the "
        "stream at the wall clock, or starts it there with --realtime",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="emit each event when the wall clock reaches its ts offset from start",
    )
    p.add_argument("--hours", type=float, default=48.0, help="stream length (default 48)")
    p.add_argument(
        "--incidents",
        default="all",
        help=f"comma list of {','.join(INCIDENT_KINDS)}, or all, or none "
        "(repeat a kind for several)",
    )
    p.add_argument(
        "--benign",
        default=",".join(BENIGN_KINDS),
        help=f"comma list of {','.join(BENIGN_KINDS)}, or all, or none",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--declared",
        dest="declared",
        action="store_true",
        default=True,
        help="campaign declarations mark each campaign personal/public (default)",
    )
    g.add_argument(
        "--undeclared",
        dest="declared",
        action="store_false",
        help="declare no campaigns (the stream is the same)",
    )
    p.add_argument(
        "--out",
        "-o",
        help="JSONL output file, or - for stdout (the default when no Kafka topic is given)",
    )
    p.add_argument("--truth", help="write the truth JSON here")
    p.add_argument("--campaigns-out", help="write a 'campaigns:' YAML config snippet here")
    p.add_argument("--kafka-topic", help="also produce every event to this topic")
    p.add_argument(
        "--bootstrap",
        default="127.0.0.1:29092",
        help="Kafka bootstrap HOST:PORT (default 127.0.0.1:29092)",
    )
    p.add_argument(
        "--compression",
        choices=_COMPRESSION,
        default="none",
        help="Kafka batch compression (default none)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="events per second by wall clock (0 = as fast as possible)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiplies baseline volume")
    p.add_argument(
        "--max-events",
        type=int,
        default=0,
        help="stop after this many events (0 = the whole stream)",
    )
    p.set_defaults(func=run)


def _kinds(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    t = text.strip().lower()
    if t == "all":
        return allowed
    if t in ("none", ""):
        return ()
    out = tuple(k.strip() for k in t.split(",") if k.strip())
    bad = [k for k in out if k not in allowed]
    if bad:
        raise ValueError(
            f"unknown {what}: {', '.join(bad)} (allowed: {', '.join(allowed)}, all, none)"
        )
    return out


def _start(text: str, hours: float, realtime: bool) -> str:
    if text.strip().lower() != "now":
        parse_ts(text)  # validate early: a naive timestamp is an error
        return text
    now_ms = int(time.time() * 1000)
    return fmt_ts(now_ms if realtime else now_ms - round(hours * HOUR_MS))


def run(args: argparse.Namespace) -> int:
    try:
        if args.hours <= 0 or args.scale <= 0 or args.rate < 0:
            raise ValueError("--hours and --scale must be > 0, --rate >= 0")
        if args.realtime and args.rate > 0:
            raise ValueError("--realtime and --rate are exclusive (realtime paces by event time)")
        params = ScenarioParams.from_seed(
            args.seed,
            start=_start(args.start, args.hours, args.realtime),
            hours=args.hours,
            scale=args.scale,
            incidents=_kinds(args.incidents, INCIDENT_KINDS, "incident kind"),
            benign=_kinds(args.benign, BENIGN_KINDS, "benign kind"),
            declared=args.declared,
        )
    except (ValueError, TypeError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    sc = generate(params)
    if sc.dropped:
        print(
            f"simulate: {', '.join(sc.dropped)} did not fit in {args.hours} h after the "
            "warm-up and were left out",
            file=sys.stderr,
        )
    if args.truth:
        write_truth(sc, args.truth)
    if args.campaigns_out:
        with open(args.campaigns_out, "w", encoding="utf-8") as f:
            f.write(campaigns_yaml(sc.campaigns))
    out_path = args.out if args.out is not None else (None if args.kafka_topic else "-")
    producer = None
    if args.kafka_topic:
        try:
            producer = _producer(args.bootstrap, args.compression)
        except Exception as exc:  # kafka-python raises several unrelated types on connect
            print(f"simulate: cannot connect to Kafka at {args.bootstrap}: {exc}", file=sys.stderr)
            return 1
    fh: IO[bytes] | None = None
    if out_path == "-":
        fh = sys.stdout.buffer
    elif out_path:
        fh = open(out_path, "wb")  # noqa: SIM115 - closed in finally, may be stdout
    try:
        events = sc.events if args.max_events <= 0 else itertools.islice(sc.events, args.max_events)
        n, failed = _emit(
            events,
            fh,
            producer=producer,
            topic=args.kafka_topic,
            rate=args.rate,
            realtime_start_ms=sc.world.start_ms if args.realtime else None,
        )
    except KeyboardInterrupt:
        print("simulate: interrupted", file=sys.stderr)
        return 130
    finally:
        if fh is not None and fh is not sys.stdout.buffer:
            fh.close()
        elif fh is not None:
            fh.flush()
        if producer is not None:
            producer.close()
    dt = time.perf_counter() - t0
    print(
        f"simulate: seed {params.seed}: {n} events {sc.start} .. {sc.end} in {dt:.1f} s; "
        f"{len(sc.truth)} labelled ({', '.join(i.id for i in sc.truth) or 'none'})",
        file=sys.stderr,
    )
    if failed:
        print(f"simulate: {failed} Kafka sends failed", file=sys.stderr)
        return 1
    return 0


def _producer(bootstrap: str, compression: str) -> Any:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="detector-simulate",
        linger_ms=20,  # batch for throughput; order is kept by the idempotent producer
        batch_size=512 * 1024,
        compression_type=None if compression == "none" else compression,
    )


def _emit(
    events: Any,
    fh: IO[bytes] | None,
    *,
    producer: Any,
    topic: str | None,
    rate: float,
    realtime_start_ms: int | None,
) -> tuple[int, int]:
    """Write/produce every event, pacing by ``rate`` or by event time; (count, failed sends)."""
    dumps, nl = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    failed = [0]

    def on_error(_exc: BaseException) -> None:
        failed[0] += 1

    buf: list[bytes] = []
    wall0 = time.monotonic()
    n = 0
    for ev in events:
        if rate > 0.0 or realtime_start_ms is not None:
            if realtime_start_ms is not None:
                target = wall0 + (parse_ts(ev["ts"]) - realtime_start_ms) / 1000.0
            else:
                target = wall0 + n / rate
            delay = target - time.monotonic()
            if delay > 0.0:
                if fh is not None and buf:  # a paced stream must be visible as it goes
                    fh.write(b"".join(buf))
                    buf.clear()
                    fh.flush()
                time.sleep(delay)
        if fh is not None:
            buf.append(dumps(ev, option=nl))
            if len(buf) >= 4096:
                fh.write(b"".join(buf))
                buf.clear()
        if producer is not None:
            producer.send(topic, key=ev["order_id"].encode(), value=dumps(ev)).add_errback(on_error)
        n += 1
    if fh is not None and buf:
        fh.write(b"".join(buf))
    if producer is not None:
        producer.flush()
    return n, failed[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detector")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
