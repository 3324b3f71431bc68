"""The backtest report: DIR/index.html with PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from detector.backtest.collect import CodeSeries, Collector, EpisodeDiff, EpisodeRow
from detector.backtest.evaluate import Evaluation, epoch
from detector.config import Config
from detector.pipeline import Stats

RULE_COLORS = {
    "code_shared": "#d62728",
    "bot_farm": "#9467bd",
    "account_stacking": "#8c564b",
    "discount_anomaly": "#ff7f0e",
    "campaign_rate": "#1f77b4",
    "alert_cap": "#000000",
}
INCIDENT_COLOR = "#7f7f7f"
DPI = 110


@dataclass(slots=True)
class RunView:
    """One replayed config, as the report shows it."""

    label: str  # "A" or "B"
    path: str
    cfg: Config
    stats: Stats
    collector: Collector
    episodes: list[EpisodeRow]
    suppressed: dict[tuple[str, str], int]
    evaluation: Evaluation | None


# -- formatting helpers ------------------------------------------------------------------------


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    sign = "-" if s < 0 else ""
    s = abs(s)
    if s < 60:
        return f"{sign}{s:.0f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m{int(s % 60):02d}s"
    return f"{sign}{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_latency(s: float | None) -> str:
    """Latency from an incident's anchor; negative: the alert came before the anchor."""
    if s is None:
        return "-"
    return f"{fmt_duration(-s)} before the anchor" if s < 0 else fmt_duration(s)


def describe_change(d: EpisodeDiff, tz: tzinfo = UTC) -> str:
    if d.change == "timing" and d.a is not None and d.b is not None:
        dt = d.b.fired - d.a.fired
        when = "later" if dt > 0 else "earlier"
        return (
            f"fires {fmt_duration(abs(dt))} {when} in B ({fmt_time(d.b.fired, tz)}, value "
            f"{d.b.value:g}) than in A ({fmt_time(d.a.fired, tz)}, value {d.a.value:g})"
        )
    if d.change == "severity" and d.a is not None and d.b is not None:
        return f"severity {d.a.severity} in A, {d.b.severity} in B"
    if d.change == "resolution" and d.a is not None and d.b is not None:
        return f"resolves at {fmt_time(d.a.resolved, tz)} in A, {fmt_time(d.b.resolved, tz)} in B"
    return "only in A" if d.change == "only A" else "only in B"


def fmt_time(t: float | None, tz: tzinfo = UTC) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S")


def _slug(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40]
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def _x(t: float) -> float:
    """Epoch seconds as a matplotlib date number (days since its 1970 epoch); the time zone is
    the axis' locator and formatter's business."""
    return t / 86400.0


def _xs(ts: Iterable[float]) -> list[float]:
    return [_x(t) for t in ts]


def _time_axis(ax: Axes, tz: tzinfo, label: bool = True) -> None:
    loc = mdates.AutoDateLocator(tz=tz, minticks=5, maxticks=12)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(loc)
    fmt = mdates.ConciseDateFormatter(loc, tz=tz)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(fmt)
    if label:
        ax.set_xlabel(f"event time ({tz})")
    ax.grid(True, axis="x", color="#dddddd", linewidth=0.6)


def _incidents_for(truth: Mapping[str, Any] | None, campaign: str | None = None) -> list[Any]:
    if not truth:
        return []
    incs = list(truth.get("incidents", []))
    if campaign is None:
        return incs
    return [i for i in incs if i.get("campaign_id") == campaign]


def _shade_incidents(ax: Axes, incs: Sequence[Mapping[str, Any]], tz: tzinfo, text: bool) -> None:
    for inc in incs:
        t0 = _x(epoch(inc["start"]))
        t1 = _x(epoch(inc["end"]))
        benign = bool(inc.get("benign"))
        ax.axvspan(
            t0,
            t1,
            color=INCIDENT_COLOR,
            alpha=0.10 if benign else 0.18,
            hatch="//" if benign else None,
            linewidth=0,
            zorder=0,
        )
        if text:
            # Left of the span's start: alert markers sit at the top edge right of it.
            ax.text(
                t0,
                0.96,
                f"{inc['id']}" + (" (benign)" if benign else ""),
                transform=ax.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color="#444444",
            )


def _mark_episodes(
    ax: Axes,
    eps: Iterable[EpisodeRow],
    tz: tzinfo,
    end: float,
    markers: bool = True,
    spans: bool = True,
) -> set[str]:
    """Shade each episode from firing to resolution; ▼ at firing, △ at resolution (top edge)."""
    rules: set[str] = set()
    for e in eps:
        c = RULE_COLORS.get(e.rule, "#2ca02c")
        rules.add(e.rule)
        t0 = _x(e.fired)
        t1 = _x(e.resolved if e.resolved is not None else end)
        if spans:
            ax.axvspan(t0, t1, color=c, alpha=0.13, linewidth=0, zorder=0)
            ax.axvline(t0, color=c, linewidth=1.0, alpha=0.9, zorder=1)
        if markers:
            tr = ax.get_xaxis_transform()
            ax.plot([t0], [0.99], marker="v", color=c, markersize=8, transform=tr, clip_on=False)
            if e.resolved is not None:
                ax.plot(
                    [t1],
                    [0.99],
                    marker="^",
                    markerfacecolor="white",
                    color=c,
                    markersize=7,
                    transform=tr,
                    clip_on=False,
                )
    return rules


def _alert_legend(rules: Iterable[str]) -> list[Any]:
    handles: list[Any] = []
    for r in sorted(rules):
        handles.append(Patch(facecolor=RULE_COLORS.get(r, "#2ca02c"), alpha=0.35, label=r))
    if handles:
        handles.append(
            Line2D([], [], marker="v", color="#555555", linestyle="", label="alert firing")
        )
        handles.append(
            Line2D(
                [],
                [],
                marker="^",
                markerfacecolor="white",
                color="#555555",
                linestyle="",
                label="alert resolved",
            )
        )
    return handles


def _incident_legend(incs: Sequence[Mapping[str, Any]]) -> list[Any]:
    out: list[Any] = []
    if any(not i.get("benign") for i in incs):
        out.append(Patch(facecolor=INCIDENT_COLOR, alpha=0.3, label="labelled incident"))
    if any(i.get("benign") for i in incs):
        out.append(Patch(facecolor=INCIDENT_COLOR, alpha=0.15, hatch="//", label="benign surprise"))
    return out


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# -- plots -------------------------------------------------------------------------------------


def plot_campaign(
    run: RunView, campaign: str, truth: Mapping[str, Any] | None, tz: tzinfo, path: Path
) -> bool:
    s = run.collector.campaigns.get(campaign)
    if s is None or not s.start:
        return False
    thr = run.cfg.rule_for("campaign_rate", campaign).score_threshold
    bucket_s = run.collector.bucket_s
    end = s.start[-1] + bucket_s
    t = _xs(s.start)
    fig, (ax1, ax2) = plt.subplots(
        2,
        1,
        figsize=(12, 6),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 2], "hspace": 0.08},
        layout="constrained",
    )
    pct = 100.0
    ax1.fill_between(
        t,
        [v * pct for v in s.low],
        [v * pct for v in s.high],
        step="post",
        color="#1f77b4",
        alpha=0.18,
        linewidth=0,
        label="normal band (model)",
    )
    ax1.step(
        t,
        [v * pct for v in s.expected],
        where="post",
        color="#1f77b4",
        linestyle="--",
        linewidth=1.2,
        label="learned baseline (expected share)",
    )
    ax1.step(
        t,
        [v * pct for v in s.share],
        where="post",
        color="black",
        linewidth=0.9,
        label="redemption share (short window)",
    )
    incs = _incidents_for(truth, campaign)
    _shade_incidents(ax1, incs, tz, text=True)
    _shade_incidents(ax2, incs, tz, text=False)
    # Campaign alerts as spans; alerts on its codes and accounts only as markers (their
    # episodes last as long as the code's memory window and would cover the plot).
    mine = [e for e in run.episodes if e.scope == "campaign" and e.key == campaign]
    inner = [e for e in run.episodes if e.scope != "campaign" and e.campaign == campaign]
    rules = _mark_episodes(ax1, mine, tz, end)
    rules |= _mark_episodes(ax1, inner, tz, end, spans=False)
    _mark_episodes(ax2, mine, tz, end, markers=False)
    for e in inner:
        ax1.annotate(
            e.key,
            (_x(e.fired), 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -9),
            textcoords="offset points",
            fontsize=7,
            color=RULE_COLORS.get(e.rule, "#2ca02c"),
            va="top",
        )
    ax1.set_ylabel("redemptions\n% of all orders")
    ax1.set_ylim(bottom=0)
    ax1.grid(True, axis="y", color="#eeeeee")
    handles, _ = ax1.get_legend_handles_labels()
    handles += _incident_legend(incs)
    ax1.legend(
        handles=handles + _alert_legend(rules),
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        fontsize=8,
        frameon=False,
    )
    cold = [not w for w in s.warmed_up]
    ax2.fill_between(
        t,
        0,
        1.05,
        where=cold,
        step="post",
        color="#f2e6c9",
        alpha=0.8,
        linewidth=0,
        label="model warming up (cannot alert)",
    )
    ax2.step(t, s.score, where="post", color="#2f4f4f", linewidth=0.9, label="model score")
    ax2.axhline(thr, color="#d62728", linestyle="--", linewidth=1.2)
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("anomaly score")
    ax2.legend(
        handles=[
            *ax2.get_legend_handles_labels()[0],
            Line2D([], [], color="#d62728", linestyle="--", label=f"score_threshold {thr:g}"),
        ],
        title="alerts also need min_ratio,\nmin_redemptions, min_sigmas",
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.005, 0.8),
        fontsize=8,
        frameon=False,
    )
    # One time axis for every campaign of the run, so that plots line up.
    lo, hi = run.collector.span()
    ax2.set_xlim(_x(lo), _x(hi))
    _time_axis(ax2, tz)
    _time_axis(ax1, tz, label=False)
    fig.suptitle(
        f"Campaign {campaign}: redemption share vs learned baseline, model score "
        f"[{run.label}: {Path(run.path).name}]",
        fontsize=11,
        x=0.02,
        ha="left",
    )
    _save(fig, path)
    return True


def _steps(d: Mapping[float, int]) -> tuple[list[float], list[int]]:
    ts = sorted(d)
    return ts, [d[x] for x in ts]


@dataclass(frozen=True, slots=True)
class _CodeKind:
    rule: str
    main: str  # CodeSeries attribute
    second: str
    main_label: str
    second_label: str
    color: str
    title: str


CODE_KINDS = {
    "accounts": _CodeKind(
        "code_shared",
        "accounts",
        "households",
        "distinct accounts",
        "households (accounts linked by a shared device or IP)",
        "#d62728",
        "Distinct accounts per code",
    ),
    "new_accounts": _CodeKind(
        "bot_farm",
        "new_accounts",
        "new_devices",
        "new accounts",
        "their distinct devices",
        "#9467bd",
        "New accounts per code",
    ),
}


def _code_lines(kind: str, cfg: Any) -> list[tuple[float, str, str]]:
    if kind == "accounts":
        lines = [(float(cfg.min_accounts), f"min_accounts {cfg.min_accounts}", "#d62728")]
        if cfg.second_household:
            lines.append((2.0, "2 households", "#ff7f0e"))
        return lines
    return [(float(cfg.min_new_accounts), f"min_new_accounts {cfg.min_new_accounts}", "#9467bd")]


def plot_codes(
    run: RunView,
    codes: Sequence[str],
    kind: str,
    truth: Mapping[str, Any] | None,
    tz: tzinfo,
    path: Path,
) -> bool:
    """Small multiples: per code, distinct accounts (or new accounts) with the rule's line."""
    k = CODE_KINDS[kind]
    codes = [c for c in codes if c in run.collector.codes]
    if not codes:
        return False
    ncols = 3 if len(codes) > 4 else 2 if len(codes) > 1 else 1
    nrows = math.ceil(len(codes) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(10.0, 4.4 * ncols + 0.6), 2.9 * nrows + 1.2),
        squeeze=False,
        layout="constrained",
    )
    log_any = False
    for i, (ax, code) in enumerate(zip(axes.flat, codes, strict=False)):
        s: CodeSeries = run.collector.codes[code]
        lines = _code_lines(kind, run.cfg.rule_for(k.rule, s.campaign))
        ts, vs = _steps(getattr(s, k.main))
        ts2, vs2 = _steps(getattr(s, k.second))
        eps = [e for e in run.episodes if e.key == code and e.rule == k.rule]
        # Zoom on the code's alerts with a few hours of context, else on its activity.
        lo, hi = (min(ts), max(ts)) if ts else (0.0, 0.0)
        if eps:
            first = min(e.fired for e in eps)
            last = max(e.resolved or e.fired for e in eps)
            lo, hi = max(lo, first - 3 * 3600.0), min(max(hi, last), last + 3 * 3600.0)
        pad = max(1800.0, (hi - lo) * 0.04)
        x0, x1 = lo - pad, hi + pad
        dense = len(ts) > 80
        ax.step(_xs(ts), vs, where="post", color="black", linewidth=1.1)
        if not dense:
            ax.plot(_xs(ts), vs, "o", color="black", markersize=2.5)
        ax.step(_xs(ts2), vs2, where="post", color="#2ca02c", linestyle=":", linewidth=1.3)
        for y, text, color in lines:
            ax.axhline(y, color=color, linestyle="--", linewidth=1.1)
            ax.annotate(
                text,
                (1.0, y),
                xycoords=("axes fraction", "data"),
                xytext=(-2, 1),
                textcoords="offset points",
                color=color,
                fontsize=7,
                ha="right",
                va="bottom",
            )
        incs = [i for i in _incidents_for(truth) if code in i.get("keys", [])]
        _shade_incidents(ax, incs, tz, text=False)
        _mark_episodes(ax, eps, tz, x1)
        top = max([*vs, *vs2, *(y for y, _, _ in lines), 1])
        line_top = max(y for y, _, _ in lines)
        if top > 8 * line_top:
            # A crowd of 100 would flatten the lines at 2 and 3: the crossing is what matters.
            log_any = True
            ax.set_yscale("log")
            ax.set_ylim(0.8, top * 1.6)
            ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _p: f"{v:g}"))
        else:
            ax.set_ylim(0, top * 1.15 + 0.5)
            ax.yaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        ax.set_xlim(_x(x0), _x(x1))
        camp = f"  ({s.campaign})" if s.campaign else ""
        ax.set_title(f"{code}{camp}", fontsize=9, loc="left", fontweight="bold")
        _time_axis(ax, tz, label=False)
        ax.tick_params(labelsize=7)
        if i % ncols == 0:
            ax.set_ylabel(k.main_label, fontsize=8)
    for ax in list(axes.flat)[len(codes) :]:
        ax.axis("off")
    rules_shown = {e.rule for c in codes for e in run.episodes if e.key == c and e.rule == k.rule}
    handles = [
        Line2D([], [], color="black", label=k.main_label),
        Line2D([], [], color="#2ca02c", linestyle=":", label=k.second_label),
        Line2D([], [], color=k.color, linestyle="--", label=f"{k.rule} threshold"),
        *_alert_legend(rules_shown),
    ]
    handles += _incident_legend(
        [i for i in _incidents_for(truth) if any(c in i.get("keys", []) for c in codes)]
    )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), 5 if ncols == 3 else 4),
        fontsize=8,
        frameon=False,
    )
    window = getattr(run.cfg.rules, k.rule).window
    fig.suptitle(
        f"{k.title} ({window} window, at each redemption) vs the {k.rule} threshold"
        f"  [{run.label}: {Path(run.path).name}]\nevent time {tz}"
        f"{'; log scale where a crowd dwarfs the threshold' if log_any else ''}",
        fontsize=10,
        x=0.01,
        ha="left",
    )
    _save(fig, path)
    return True


def _label(key: str) -> str:
    return key if len(key) <= 16 else key[:15] + "…"


def _lanes(spans: Sequence[tuple[float, float]]) -> list[int]:
    """A lane per (start, end) span (sorted by start) so that none overlaps another."""
    lane_end: list[float] = []
    out = []
    for start, stop in spans:
        for i, busy in enumerate(lane_end):
            if busy <= start:
                lane_end[i] = stop
                out.append(i)
                break
        else:
            lane_end.append(stop)
            out.append(len(lane_end) - 1)
    return out


def plot_timeline(run: RunView, truth: Mapping[str, Any] | None, tz: tzinfo, path: Path) -> bool:
    """Every alert episode on one time axis, one row per rule, labelled incidents shaded."""
    if not run.collector.campaigns:
        return False
    t0, t1 = run.collector.span()
    rules = sorted({e.rule for e in run.episodes} | {"code_shared", "campaign_rate"})
    # A label's width in seconds on this axis (7 pt text, ~1000 px of axes for 12 inches).
    per_char = (t1 - t0) / 1000.0 * 6.5
    placed: list[tuple[EpisodeRow, float, bool]] = []  # episode, y, label on the left
    ticks: list[float] = []
    y = 0.0
    for rule in rules:
        eps = sorted((e for e in run.episodes if e.rule == rule), key=lambda e: e.fired)
        spans, left = [], []
        for e in eps:
            stop = e.resolved if e.resolved is not None else t1
            room = (len(_label(e.key)) + 2) * per_char
            on_left = stop + room > t1  # would run past the axes: put it before the bar
            left.append(on_left)
            spans.append((e.fired - room, stop) if on_left else (e.fired, stop + room))
        order = sorted(range(len(eps)), key=lambda i: spans[i][0])
        lanes_sorted = _lanes([spans[i] for i in order])
        lanes = [0] * len(eps)
        for i, lane in zip(order, lanes_sorted, strict=True):
            lanes[i] = lane
        n = max(lanes, default=0) + 1
        placed += [(e, y + ln, lf) for e, ln, lf in zip(eps, lanes, left, strict=True)]
        ticks.append(y + (n - 1) / 2)
        y += n + 0.4
    fig, ax = plt.subplots(figsize=(12, 2.0 + 0.42 * y), layout="constrained")
    incs = _incidents_for(truth)
    _shade_incidents(ax, incs, tz, text=False)
    if incs:
        # Incident names on a top axis, where they cannot cover the bars.
        top = ax.secondary_xaxis("top")
        top.set_xticks(
            [_x(epoch(i["start"])) for i in incs],
            [i["id"] + (" (benign)" if i.get("benign") else "") for i in incs],
        )
        top.tick_params(labelsize=7, rotation=30, length=3, colors="#444444")
        for lbl in top.get_xticklabels():
            lbl.set_horizontalalignment("left")
    for e, yy, on_left in placed:
        c = RULE_COLORS.get(e.rule, "#2ca02c")
        a = _x(e.fired)
        b = _x(e.resolved if e.resolved is not None else t1)
        page = e.severity == "page"
        ax.barh(
            yy,
            b - a,
            left=a,
            height=0.55,
            color=c,
            alpha=0.85 if page else 0.4,
            edgecolor=c,
            linewidth=0.8,
        )
        ax.plot([a], [yy], marker="v", color=c, markersize=7, markeredgecolor="white")
        ax.annotate(
            _label(e.key),
            (a if on_left else b, yy),
            xytext=(-5 if on_left else 3, 0),
            textcoords="offset points",
            fontsize=7,
            va="center",
            ha="right" if on_left else "left",
            color="#222222",
        )
    ax.set_yticks(ticks, rules)
    ax.set_ylim(y - 0.4 + 0.1, -0.9)
    ax.set_xlim(_x(t0), _x(t1))
    _time_axis(ax, tz)
    handles = [
        Patch(facecolor="#555555", alpha=0.85, label="page"),
        Patch(facecolor="#555555", alpha=0.4, label="ticket"),
        Line2D([], [], marker="v", color="#555555", linestyle="", label="alert firing"),
    ]
    handles += _incident_legend(incs)
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False
    )
    fig.suptitle(
        f"Alert episodes by rule (bar: firing → resolved; label: key)  "
        f"[{run.label}: {Path(run.path).name}]",
        fontsize=11,
        x=0.01,
        ha="left",
    )
    _save(fig, path)
    return True


# -- HTML --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1500px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right}
.ok{color:#1a7f37;font-weight:600}.miss{color:#c62828;font-weight:600}.muted{color:#777}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.pair img,.one img{width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:1px 4px;border-radius:3px}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], raw: bool = False) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{h}</tr>{body}</table>"


def _incident_cell(run: RunView, inc_id: str) -> str:
    assert run.evaluation is not None
    r = next(i for i in run.evaluation.incidents if i.id == inc_id)
    if r.benign:
        if r.alerts:
            return f'<span class="miss">{r.alerts} alert(s)</span> (false: benign)'
        return '<span class="ok">quiet</span> (benign)'
    if not r.detected:
        return '<span class="miss">missed</span>'
    return (
        f'<span class="ok">detected</span> {_e(fmt_latency(r.latency_s))} by '
        f"{_e(r.rule)} ({_e(r.severity)})"
    )


def _images(runs: Sequence[RunView], files: Mapping[str, str], alt: str) -> str:
    imgs = [files[r.label] for r in runs if r.label in files]
    if not imgs:
        return ""
    cls = "pair" if len(imgs) > 1 else "one"
    inner = "".join(
        f'<a href="{_e(src)}"><img src="{_e(src)}" alt="{_e(alt)}"></a>' for src in imgs
    )
    return f'<div class="{cls}">{inner}</div>'


def write_report(
    out_dir: Path,
    events: str,
    runs: Sequence[RunView],
    truth: Mapping[str, Any] | None,
    diffs: Sequence[EpisodeDiff] | None,
    campaigns: Sequence[str],
    shared_codes: Sequence[str],
    farm_codes: Sequence[str],
) -> Path:
    """Render every plot and DIR/index.html; returns the index path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tz = ZoneInfo(runs[0].cfg.windows.time_zone)
    plots = out_dir / "plots"
    for old in plots.glob("*.png"):
        old.unlink()  # from an earlier report into this directory
    parts: list[str] = []

    def rel(p: Path) -> str:
        return p.relative_to(out_dir).as_posix()

    title = "Backtest of " + " vs ".join(f"{r.label}: {Path(r.path).name}" for r in runs)
    parts.append(f"<h1>{_e(title)}</h1>")
    parts.append(
        f"<p>Events <code>{_e(events)}</code> replayed through the detector pipeline "
        f"(embedded store, event time as the clock). Time axes are in {_e(tz)}.</p>"
    )
    parts.append(
        _table(
            ["run", "config", "hash", "records", "ok", "dead-lettered", "late", "duplicate"],
            [
                [
                    r.label,
                    r.path,
                    r.cfg.config_hash(),
                    str(r.stats.records),
                    str(r.stats.ok),
                    str(sum(r.stats.dead_letters.values())),
                    str(r.stats.late),
                    str(r.stats.duplicate),
                ]
                for r in runs
            ],
        )
    )

    # Alerts by rule and severity.
    parts.append("<h2>Alerts by rule and severity</h2>")
    keys = sorted({(e.rule, e.severity) for r in runs for e in r.episodes})
    rows = []
    for rule, sev in keys:
        rows.append(
            [rule, sev]
            + [str(sum(1 for e in r.episodes if (e.rule, e.severity) == (rule, sev))) for r in runs]
        )
    parts.append(_table(["rule", "severity", *(f"episodes {r.label}" for r in runs)], rows))
    sup = sorted({k for r in runs for k in r.suppressed})
    if sup:
        parts.append("<p>Findings suppressed (not alerted):</p>")
        parts.append(
            _table(
                ["rule", "reason", *(r.label for r in runs)],
                [[k[0], k[1], *(str(r.suppressed.get(k, 0)) for r in runs)] for k in sup],
            )
        )

    # Truth.
    if truth and all(r.evaluation is not None for r in runs):
        parts.append("<h2>Labelled incidents</h2>")
        inc_rows = []
        for inc in truth.get("incidents", []):
            inc_rows.append(
                [
                    _e(inc["id"]),
                    _e(inc["kind"] + (" (benign)" if inc.get("benign") else "")),
                    _e(inc.get("campaign_id") or "-"),
                    _e(", ".join(inc.get("keys", [])[:3])),
                    _e(fmt_time(epoch(inc["anchor"]), tz)),
                    *(_incident_cell(r, inc["id"]) for r in runs),
                ]
            )
        parts.append(
            _table(
                ["incident", "kind", "campaign", "keys", "anchor", *(r.label for r in runs)],
                inc_rows,
                raw=True,
            )
        )
        fa = []
        for sev in ("page", "ticket", "info"):
            row = [sev]
            for r in runs:
                assert r.evaluation is not None
                n = sum(1 for a in r.evaluation.false_alerts if a.severity == sev)
                row.append(f"{r.evaluation.false_per_day(sev):.2f} ({n})")
            fa.append(row)
        parts.append(
            "<p>Latency: first alert minus the incident's anchor (the truth file's "
            "<code>anchor_rule</code>, e.g. a leak's first redemption by a second account).</p>"
        )
        parts.append("<p>False alerts per day (count): alerts matching no harmful incident.</p>")
        parts.append(_table(["severity", *(r.label for r in runs)], fa))

    # Differences.
    if diffs is not None:
        parts.append(f"<h2>Alert episodes that differ between A and B ({len(diffs)})</h2>")
        if diffs:
            parts.append(
                _table(
                    [
                        "difference",
                        "rule",
                        "severity",
                        "key",
                        "campaign",
                        "fired (A, else B)",
                        "resolved",
                        "summary",
                    ],
                    [_diff_row(d, tz) for d in diffs],
                )
            )
        else:
            parts.append("<p>None: both configs give the same alert episodes.</p>")

    # Timeline.
    parts.append("<h2>Alert timeline</h2>")
    files: dict[str, str] = {}
    for r in runs:
        p = plots / f"timeline-{r.label}.png"
        if plot_timeline(r, truth, tz, p):
            files[r.label] = rel(p)
    parts.append(_images(runs, files, "alert timeline"))

    # Campaigns.
    parts.append("<h2>Campaigns: redemption share, learned baseline and band, model score</h2>")
    parts.append(
        "<p>Per closed bucket, the campaign's redemptions over all orders in the short window "
        "(black), the share the model expected (dashed) and its normal band (shaded). Below, the "
        "model's anomaly score with the <code>rules.campaign_rate.score_threshold</code> line. "
        "Coloured spans are alert episodes (▼ firing, △ resolved); grey spans are labelled "
        "incidents.</p>"
    )
    for c in campaigns:
        files = {}
        for r in runs:
            p = plots / f"campaign-{_slug(c)}-{r.label}.png"
            if plot_campaign(r, c, truth, tz, p):
                files[r.label] = rel(p)
        if files:
            parts.append(f"<h3>Campaign {_e(c)}</h3>" + _images(runs, files, f"campaign {c}"))

    # Codes.
    for kind, codes, head, blurb in (
        (
            "accounts",
            shared_codes,
            "Codes: distinct accounts per code (code sharing)",
            "Distinct accounts that redeemed each code in <code>rules.code_shared.window</code>, "
            "with the <code>rules.code_shared.min_accounts</code> threshold (and the second-"
            "household line when <code>second_household</code> is on). Codes with alerts first, "
            "then the codes with most accounts (campaigns declared public are not shown).",
        ),
        (
            "new_accounts",
            farm_codes,
            "Codes: new accounts per code (bot farms)",
            "Accounts younger than <code>windows.new_account_age_s</code> that redeemed each code "
            "in <code>rules.bot_farm.window</code>, and their distinct devices, with the "
            "<code>rules.bot_farm.min_new_accounts</code> threshold.",
        ),
    ):
        files = {}
        for r in runs:
            p = plots / f"codes-{kind}-{r.label}.png"
            if plot_codes(r, codes, kind, truth, tz, p):
                files[r.label] = rel(p)
        if files:
            parts.append(f"<h2>{_e(head)}</h2><p>{blurb}</p>" + _images(runs, files, head))

    parts.append(
        f'<p class="muted">generated {_e(datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"))} '
        "UTC by <code>detector backtest</code></p>"
    )
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    index = out_dir / "index.html"
    index.write_text(doc, encoding="utf-8")
    return index


def _diff_row(d: EpisodeDiff, tz: tzinfo) -> list[str]:
    e = d.row
    return [
        describe_change(d, tz),
        e.rule,
        e.severity,
        f"{e.scope}={e.key}",
        e.campaign or "-",
        fmt_time(e.fired, tz),
        fmt_time(e.resolved, tz),
        e.summary,
    ]
