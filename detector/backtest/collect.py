"""What a backtest keeps from a replay: per-bucket series for plots, alerts, episodes and diffs.

The series come from the pipeline itself through its observer hook (``PipelineObserver``): the
figures are the ones the rules and the campaign model saw, not a re-computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from detector.alerts.record import Alert
from detector.backtest.evaluate import epoch
from detector.config import Config
from detector.features.view import Features
from detector.pipeline import Stats
from detector.rules import RateObservation
from detector.state.keys import standalone_campaign


@dataclass(slots=True)
class CampaignSeries:
    """One row per closed bucket: the short-window share, the model's view and its score."""

    start: list[float] = field(default_factory=list)
    share: list[float] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    warmed_up: list[bool] = field(default_factory=list)
    redemptions: float = 0.0


@dataclass(slots=True)
class CodeSeries:
    """Per bucket (start time -> peak figure seen in it) for one promo code."""

    campaign: str | None
    accounts: dict[float, int] = field(default_factory=dict)  # code_shared's window
    households: dict[float, int] = field(default_factory=dict)  # linked by devices, IPs
    new_accounts: dict[float, int] = field(default_factory=dict)  # bot_farm's window
    new_devices: dict[float, int] = field(default_factory=dict)


def _peak(d: dict[float, int], t: float, v: int) -> None:
    if v > d.get(t, -1):
        d[t] = v


class Collector:
    """A ``PipelineObserver`` and an ``AlertSink``: everything one replay shows."""

    sees_every_entity = True  # plots show codes that never came near a rule's line

    def __init__(self, cfg: Config, progress: Callable[[Stats], None] | None = None) -> None:
        self.cfg = cfg
        self.bucket_s = cfg.windows.bucket_s
        self.campaigns: dict[str, CampaignSeries] = {}
        self.codes: dict[str, CodeSeries] = {}
        self.alerts: list[Alert] = []
        self._progress = progress

    # -- PipelineObserver ----------------------------------------------------------------------

    def features(self, f: Features) -> None:
        ent = f.entity
        if ent.scope != "code":
            return
        s = self.codes.get(ent.key)
        if s is None:
            s = self.codes[ent.key] = CodeSeries(ent.campaign)
        t = math.floor(f.t / self.bucket_s) * self.bucket_s
        w = self.cfg.rule_for("code_shared", ent.campaign).window
        _peak(s.accounts, t, f.accounts[w])
        _peak(s.households, t, f.households(w))
        wb = self.cfg.rule_for("bot_farm", ent.campaign).window
        if wb in f.new_accounts:
            _peak(s.new_accounts, t, f.new_accounts[wb])
            _peak(s.new_devices, t, f.new_devices[wb])

    def campaign_bucket(
        self, start: float, obs: RateObservation, band: tuple[float, float]
    ) -> None:
        s = self.campaigns.get(obs.campaign)
        if s is None:
            s = self.campaigns[obs.campaign] = CampaignSeries()
        s.start.append(start)
        s.share.append(obs.share)
        s.expected.append(obs.expected_share)
        s.low.append(max(0.0, band[0]))
        s.high.append(band[1])
        s.score.append(obs.score)
        s.warmed_up.append(obs.warmed_up)
        s.redemptions += obs.redemptions

    def batch(self, stats: Stats) -> None:
        if self._progress is not None:
            self._progress(stats)

    # -- AlertSink -----------------------------------------------------------------------------

    def write(self, alerts: Sequence[Alert]) -> None:
        self.alerts.extend(alerts)

    def close(self) -> None:
        return None

    def span(self) -> tuple[float, float]:
        """First bucket start and last bucket end the campaign models saw."""
        starts = [s.start[0] for s in self.campaigns.values() if s.start]
        ends = [s.start[-1] + self.bucket_s for s in self.campaigns.values() if s.start]
        return (min(starts), max(ends)) if starts else (0.0, 0.0)

    # -- selections for the report -------------------------------------------------------------

    def top_campaigns(self, n: int, always: Iterable[str] = ()) -> list[str]:
        """The ``n`` busiest campaigns, after those in ``always`` (e.g. with alerts)."""
        by_volume = sorted(self.campaigns, key=lambda c: (-self.campaigns[c].redemptions, c))
        picked = [c for c in dict.fromkeys(always) if c in self.campaigns]
        return picked + [c for c in by_volume[:n] if c not in picked]

    def top_codes(self, n: int, series: str, always: Iterable[str] = ()) -> list[str]:
        """Codes with alerts first, then by their peak of ``series``.

        For ``accounts`` (code sharing), codes of campaigns declared public and codes on their own
        are left out: the rule ignores them and their crowds would hide the personal codes.
        Codes that never had two accounts are left out too.
        """

        def peak(code: str) -> int:
            d: dict[float, int] = getattr(self.codes[code], series)
            return max(d.values(), default=0)

        def eligible(code: str) -> bool:
            if peak(code) < 2:
                return False  # one account (or one new account) is every code's normal
            if series != "accounts":
                return True
            camp = self.codes[code].campaign
            if camp is None or camp == standalone_campaign(code):
                return False  # a code on its own is a public code: code_shared ignores it
            return camp not in self.cfg.campaigns or self.cfg.campaigns[camp].kind != "public"

        picked = [c for c in dict.fromkeys(always) if c in self.codes][:n]
        ranked = sorted(
            (c for c in self.codes if c not in picked and eligible(c)),
            key=lambda c: (-peak(c), c),
        )
        return picked + ranked[: max(0, n - len(picked))]


# -- alert episodes and their differences ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EpisodeRow:
    """One (rule, key) alert episode: its firing record and, if any, its resolution."""

    alert_id: str
    rule: str
    severity: str
    scope: str
    key: str
    campaign: str | None
    fired: float
    resolved: float | None
    value: float
    threshold: float | None
    summary: str


def episodes(alerts: Iterable[Alert]) -> list[EpisodeRow]:
    fired: dict[str, Alert] = {}
    resolved: dict[str, float] = {}
    for a in alerts:
        if a.status == "firing":
            fired.setdefault(a.alert_id, a)
        else:
            resolved[a.alert_id] = epoch(a.detected_at)
    rows = [
        EpisodeRow(
            a.alert_id,
            a.rule,
            a.severity,
            a.scope,
            a.key,
            a.campaign_id,
            epoch(a.detected_at),
            resolved.get(a.alert_id),
            a.value,
            a.threshold,
            a.summary,
        )
        for a in fired.values()
    ]
    return sorted(rows, key=lambda e: (e.fired, e.rule, e.key))


@dataclass(frozen=True, slots=True)
class EpisodeDiff:
    """An episode of one run with no counterpart in the other, or with a different course."""

    change: str  # "only A", "only B", "timing", "severity", "resolution"
    a: EpisodeRow | None
    b: EpisodeRow | None

    @property
    def row(self) -> EpisodeRow:
        r = self.a or self.b
        assert r is not None
        return r


def diff_episodes(
    a: Sequence[EpisodeRow], b: Sequence[EpisodeRow], tolerance_s: float
) -> list[EpisodeDiff]:
    """Episodes that differ; two match when (rule, key) agree and they fire within a bucket.

    CONTRACT.md §4: two runs give the same alerts when they give the same (rule, key, status)
    episodes, each ``detected_at`` within one bucket of the other.
    """
    out: list[EpisodeDiff] = []
    left = list(b)
    for ea in a:
        match = next(
            (
                eb
                for eb in left
                if (eb.rule, eb.key) == (ea.rule, ea.key)
                and abs(eb.fired - ea.fired) <= tolerance_s
            ),
            None,
        )
        if match is None:
            out.append(EpisodeDiff("only A", ea, None))
            continue
        left.remove(match)
        if match.severity != ea.severity:
            out.append(EpisodeDiff("severity", ea, match))
        elif (ea.resolved is None) != (match.resolved is None) or (
            ea.resolved is not None
            and match.resolved is not None
            and abs(ea.resolved - match.resolved) > tolerance_s
        ):
            out.append(EpisodeDiff("resolution", ea, match))
    out += [EpisodeDiff("only B", None, eb) for eb in left]
    return sorted(_pair_shifted(out), key=lambda d: (d.row.fired, d.row.rule, d.row.key))


def _overlap(a: EpisodeRow, b: EpisodeRow) -> bool:
    end_a = a.resolved if a.resolved is not None else float("inf")
    end_b = b.resolved if b.resolved is not None else float("inf")
    return a.fired <= end_b and b.fired <= end_a


def _pair_shifted(diffs: list[EpisodeDiff]) -> list[EpisodeDiff]:
    """An episode of A and one of B on the same (rule, key) that overlap: the same alert,
    raised earlier or later (the usual effect of a threshold change)."""
    only_b = [d.b for d in diffs if d.change == "only B" and d.b is not None]
    out: list[EpisodeDiff] = []
    for d in diffs:
        if d.change == "only B":
            continue
        if d.change == "only A" and d.a is not None:
            ea = d.a
            eb = next(
                (x for x in only_b if (x.rule, x.key) == (ea.rule, ea.key) and _overlap(ea, x)),
                None,
            )
            if eb is not None:
                only_b.remove(eb)
                out.append(EpisodeDiff("timing", ea, eb))
                continue
        out.append(d)
    return out + [EpisodeDiff("only B", None, eb) for eb in only_b]
