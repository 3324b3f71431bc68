"""``detector backtest``: replay history through the pipeline, score it, compare configs, plot.

    detector backtest EVENTS.jsonl --config A.yaml [--truth TRUTH.json] [--compare B.yaml]
        --report DIR

Each config is replayed with ``detector.app.replay`` (the same pipeline as ``run``, on the
embedded store, clocked by event time); a collector observes the pipeline for the plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from detector.backtest.collect import Collector, EpisodeDiff, diff_episodes, episodes
from detector.backtest.evaluate import evaluate
from detector.backtest.report import (
    RunView,
    describe_change,
    fmt_latency,
    write_report,
)
from detector.config import Config, load_config
from detector.errors import ConfigError
from detector.metrics import Metrics
from detector.pipeline import Stats


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``backtest`` sub-command; its handler is ``args.func(args) -> int``."""
    p = subparsers.add_parser(
        "backtest",
        help="replay history with a config (or two), score against truth, write an HTML report",
        description="Replay an events file through the detector pipeline (embedded store, event "
        "time as the clock) with --config, and with --compare a second config; print alerts by "
        "rule and severity, per labelled incident detection and latency (--truth), false "
        "alerts per day and the alert episodes that differ; write DIR/index.html with plots.",
    )
    p.add_argument("events", help="events JSONL file (read once per config)")
    p.add_argument("--config", required=True, help="config YAML to test (A)")
    p.add_argument("--compare", metavar="B.yaml", help="a second config to compare with (B)")
    p.add_argument("--truth", help="simulator truth JSON (detect/miss, latency, false alerts)")
    p.add_argument("--report", required=True, metavar="DIR", help="write DIR/index.html here")
    p.add_argument(
        "--top-campaigns", type=int, default=4, help="campaigns plotted by volume (default 4)"
    )
    p.add_argument("--top-codes", type=int, default=6, help="codes plotted (default 6)")
    p.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress bar on stderr (auto: only on a terminal)",
    )
    p.set_defaults(func=run)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("    - rec/s", style="progress.data.speed")
        return Text(f"{speed / 1000:5.1f}k rec/s", style="progress.data.speed")


def _count_lines(path: str) -> int:
    n = 0
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


@contextmanager
def _progress(mode: str, err: IO[str]) -> Iterator[Progress]:
    console = Console(file=err, force_terminal=True if mode == "on" else None)
    disable = mode == "off" or (mode == "auto" and not console.is_terminal)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        TaskProgressColumn(),
        _RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    ) as prog:
        yield prog


def _replay(
    cfg: Config, events: str, alerts_out: Path, progress: Callable[[Stats], None]
) -> tuple[Stats, Collector, dict[tuple[str, str], int]]:
    from detector.app import replay

    collector = Collector(cfg, progress)
    metrics = Metrics(CollectorRegistry(), cfg.metrics.max_firing_labels)
    alerts_out.unlink(missing_ok=True)
    stats = replay(
        cfg,
        events,
        alerts_out=str(alerts_out),
        backend="memory",
        metrics=metrics,
        extra_sinks=[collector],
        observer=collector,
    )
    suppressed: dict[tuple[str, str], int] = {}
    for metric in metrics.suppressed.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.value > 0:
                suppressed[(s.labels["rule"], s.labels["reason"])] = int(s.value)
    return stats, collector, suppressed


def _load(path: str, which: str, err: IO[str]) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"detector backtest: {which} config {path}: {e}", file=err)
        return None


def run(a: argparse.Namespace) -> int:
    from detector.cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE
    from detector.logs import setup

    out, err = sys.stdout, sys.stderr
    if a.events == "-" or not Path(a.events).is_file():
        print(
            f"detector backtest: events file {a.events!r} not found (a file is needed: it is "
            "read once per config)",
            file=err,
        )
        return EXIT_USAGE
    configs = [("A", a.config)] + ([("B", a.compare)] if a.compare else [])
    loaded: list[tuple[str, str, Config]] = []
    for label, path in configs:
        cfg = _load(path, label, err)
        if cfg is None:
            return EXIT_CONFIG
        loaded.append((label, path, cfg))
    truth: dict[str, Any] | None = None
    if a.truth:
        try:
            truth = json.loads(Path(a.truth).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            print(f"detector backtest: cannot read truth file {a.truth!r}: {e}", file=err)
            return EXIT_USAGE
    setup("warning")
    report_dir = Path(a.report)
    report_dir.mkdir(parents=True, exist_ok=True)
    total = _count_lines(a.events)
    runs: list[RunView] = []
    with _progress(a.progress, err) as prog:
        for label, path, cfg in loaded:
            name = Path(path).name
            task = prog.add_task(
                f"{label} {name if len(name) <= 20 else name[:19] + '…'}", total=total
            )

            def tick(stats: Stats, task: Any = task) -> None:
                prog.update(task, completed=stats.records)

            stats, col, suppressed = _replay(
                cfg, a.events, report_dir / f"alerts-{label}.jsonl", tick
            )
            prog.update(task, completed=total)
            eps = episodes(col.alerts)
            ev = evaluate(col.alerts, truth) if truth is not None else None
            runs.append(RunView(label, path, cfg, stats, col, eps, suppressed, ev))
    diffs = None
    if len(runs) == 2:
        tol = float(max(r.cfg.windows.bucket_s for r in runs))
        diffs = diff_episodes(runs[0].episodes, runs[1].episodes, tol)
    print_summary(runs, truth, diffs, out)

    campaign_alerts = [e.key for r in runs for e in r.episodes if e.scope == "campaign"]
    campaign_alerts += [
        i["campaign_id"] for i in (truth or {}).get("incidents", []) if i.get("campaign_id")
    ]
    campaigns = runs[0].collector.top_campaigns(a.top_campaigns, campaign_alerts)
    shared = runs[0].collector.top_codes(
        a.top_codes,
        "accounts",
        [e.key for r in runs for e in r.episodes if e.rule == "code_shared"],
    )
    farm = runs[0].collector.top_codes(
        a.top_codes,
        "new_accounts",
        [e.key for r in runs for e in r.episodes if e.rule == "bot_farm"],
    )
    index = write_report(report_dir, a.events, runs, truth, diffs, campaigns, shared, farm)
    print(f"\nreport: {index}", file=out)
    return EXIT_OK


# -- terminal summary ----------------------------------------------------------------------------


def _cols(rows: Sequence[Sequence[str]], out: IO[str], indent: str = "  ") -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        out.write("\n")


def _incident(run: RunView, inc_id: str) -> str:
    assert run.evaluation is not None
    r = next(i for i in run.evaluation.incidents if i.id == inc_id)
    if r.benign:
        return f"benign, {r.alerts} false alert(s)" if r.alerts else "benign, quiet"
    if not r.detected:
        return "MISSED"
    return f"detected {fmt_latency(r.latency_s)} {r.rule}/{r.severity}"


def print_summary(
    runs: Sequence[RunView],
    truth: Mapping[str, Any] | None,
    diffs: Sequence[EpisodeDiff] | None,
    out: IO[str],
) -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(runs[0].cfg.windows.time_zone)
    for r in runs:
        s = r.stats
        out.write(
            f"{r.label} = {r.path} (config {r.cfg.config_hash()}): records {s.records}  ok {s.ok}"
            f"  dead-lettered {sum(s.dead_letters.values())}  late {s.late}  duplicate "
            f"{s.duplicate}\n"
        )
    labels = [r.label for r in runs]
    out.write("\nalert episodes by rule and severity\n")
    keys = sorted({(e.rule, e.severity) for r in runs for e in r.episodes})
    rows = [["rule", "severity", *labels]]
    for rule, sev in keys:
        rows.append(
            [rule, sev]
            + [str(sum(1 for e in r.episodes if (e.rule, e.severity) == (rule, sev))) for r in runs]
        )
    rows.append(["total", "", *(str(len(r.episodes)) for r in runs)])
    _cols(rows, out)
    sup = sorted({k for r in runs for k in r.suppressed})
    if sup:
        out.write("\nfindings suppressed (not alerted)\n")
        _cols(
            [["rule", "reason", *labels]]
            + [[k[0], k[1], *(str(r.suppressed.get(k, 0)) for r in runs)] for k in sup],
            out,
        )
    if truth is not None and all(r.evaluation is not None for r in runs):
        out.write("\nlabelled incidents (latency from the incident's anchor)\n")
        rows = [["incident", "kind", *labels]]
        for inc in truth.get("incidents", []):
            rows.append([inc["id"], inc["kind"], *(_incident(r, inc["id"]) for r in runs)])
        _cols(rows, out)
        out.write("\nfalse alerts per day\n")
        rows = [["severity", *labels]]
        for sev in ("page", "ticket"):
            cells = []
            for r in runs:
                assert r.evaluation is not None
                n = sum(1 for x in r.evaluation.false_alerts if x.severity == sev)
                cells.append(f"{r.evaluation.false_per_day(sev):.2f} ({n})")
            rows.append([sev, *cells])
        _cols(rows, out)
    if diffs is not None:
        out.write(f"\nalert episodes that differ (A vs B): {len(diffs)}\n")
        rows = []
        for d in diffs:
            e = d.row
            rows.append([e.rule, e.severity, f"{e.scope}={e.key}", describe_change(d, tz)])
        _cols(rows, out)
