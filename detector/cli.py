"""The `detector` command: replay, run, simulate, backtest, check-config, demo."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog

from detector import __version__
from detector.config import Config, load_config
from detector.errors import DetectorError
from detector.logs import setup

log = structlog.get_logger(__name__)

# Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3


def _config(path: str | None, redis_url: str | None = None) -> Config:
    overrides = {"redis": {"url": redis_url}} if redis_url else None
    return load_config(path, overrides)


def cmd_replay(a: argparse.Namespace) -> int:
    from detector.app import print_summary, replay

    cfg = _config(a.config, a.redis_url)
    setup(cfg.logging.level, cfg.logging.format)
    backend = "redis" if a.redis_url or a.state == "redis" else "memory"
    stats = replay(
        cfg,
        a.events,
        alerts_out=a.alerts_out,
        dead_letters_out=a.dead_letters_out,
        backend=backend,
        echo=sys.stdout if a.alerts_out is None else None,
    )
    print_summary(stats)
    return EXIT_OK


def cmd_run(a: argparse.Namespace) -> int:
    from detector.app import run

    mtime = Path(a.config).stat().st_mtime if a.config and Path(a.config).exists() else None
    cfg = _config(a.config)
    setup(cfg.logging.level, cfg.logging.format)
    return run(cfg, a.config, mtime)


def cmd_check_config(a: argparse.Namespace) -> int:
    cfg = load_config(a.file)
    print(cfg.effective_json())
    print(f"# config OK, hash {cfg.config_hash()}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    """Replay a built-in leak scenario on the embedded store and print its alerts."""
    from detector.app import print_summary, replay
    from detector.simulate.scenario import ScenarioParams, generate, write_jsonl

    setup("warning")
    sc = generate(ScenarioParams.from_seed(a.seed, hours=12.0, incidents=("leak",)))
    with tempfile.TemporaryDirectory() as tmp:
        events = str(Path(tmp) / "events.jsonl")
        n = write_jsonl(sc.events, events)
        leak = next(i for i in sc.truth if i.kind == "leak")
        print(
            f"demo: {n} simulated orders over 12 h (seed {a.seed}); personal codes "
            f"{', '.join(leak.keys)} of campaign {leak.campaign_id} leak from {leak.start}\n"
            f"alerts raised by `detector replay`:"
        )
        stats = replay(load_config(None), events, alerts_out=None, echo=sys.stdout)
    print_summary(stats, sys.stdout)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detector", description=__doc__)
    p.add_argument("--version", action="version", version=f"detector {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="replay a JSONL file of events through the detector")
    r.add_argument("events", help="events JSONL file, or - for standard input")
    r.add_argument("--alerts-out", help="alerts JSONL file (default: print alerts)")
    r.add_argument("--config", help="config YAML")
    r.add_argument("--dead-letters-out", help="dead-letter JSONL file for bad lines")
    r.add_argument("--redis-url", help="keep state in this Redis instead of in memory")
    r.add_argument("--state", choices=("memory", "redis"), default="memory")
    r.set_defaults(func=cmd_replay)

    run = sub.add_parser("run", help="consume Kafka with state in Redis (the service)")
    run.add_argument("--config", help="config YAML (reloaded on change or SIGHUP)")
    run.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config and print effective values")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    d = sub.add_parser("demo", help="replay a built-in leak scenario (no services needed)")
    d.add_argument("--seed", type=int, default=7)
    d.set_defaults(func=cmd_demo)

    from detector.simulate.command import register as register_simulate

    register_simulate(sub)
    from detector.backtest.command import register as register_backtest

    register_backtest(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return int(a.func(a))
    except DetectorError as e:
        from detector.errors import ConfigError

        print(f"detector: {e}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK
