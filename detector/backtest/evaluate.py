"""Score alerts against a simulator truth file: detections, latencies, false alerts per day."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from detector.alerts.record import Alert

# An alert this long after an incident's end still belongs to it (windows drain slowly).
_TAIL_S = 3 * 3600.0
# Slack before an incident's start: an alert can't predict it, but clocks are per event.
_LEAD_S = 60.0


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class IncidentResult:
    id: str
    kind: str
    benign: bool
    detected: bool
    latency_s: float | None
    rule: str | None
    severity: str | None
    alerts: int


@dataclass(slots=True)
class Evaluation:
    incidents: list[IncidentResult]
    false_alerts: list[Alert]
    days: float
    by_rule: dict[tuple[str, str], int] = field(default_factory=dict)

    def false_per_day(self, severity: str) -> float:
        n = sum(1 for a in self.false_alerts if a.severity == severity)
        return n / self.days if self.days > 0 else float(n)

    @property
    def missed(self) -> list[IncidentResult]:
        return [i for i in self.incidents if not i.benign and not i.detected]


def _involved(inc: Mapping[str, Any]) -> set[str]:
    keys = set(inc.get("keys") or [])
    if inc.get("campaign_id") and inc.get("scope") == "campaign":
        keys.add(inc["campaign_id"])
    details = inc.get("details") or {}
    for name in ("accounts", "codes"):
        keys.update(details.get(name, []))
    return keys


def _belongs(a: Alert, inc: Mapping[str, Any], keys: set[str]) -> bool:
    t = epoch(a.detected_at)
    if not epoch(inc["start"]) - _LEAD_S <= t <= epoch(inc["end"]) + _TAIL_S:
        return False
    if a.key in keys:
        return True
    # A campaign-level alert on the incident's campaign (rate spike, discount) belongs to it.
    return a.scope == "campaign" and a.key == inc.get("campaign_id")


def evaluate(alerts: Iterable[Alert], truth: Mapping[str, Any]) -> Evaluation:
    firing = sorted((a for a in alerts if a.status == "firing"), key=lambda a: a.detected_at)
    incidents: Sequence[Mapping[str, Any]] = truth.get("incidents", [])
    matched: set[str] = set()
    results = []
    for inc in incidents:
        keys = _involved(inc)
        mine = [a for a in firing if _belongs(a, inc, keys)]
        matched.update(a.alert_id for a in mine)
        first = mine[0] if mine else None
        pages = [a for a in mine if a.severity == "page"]
        results.append(
            IncidentResult(
                id=inc["id"],
                kind=inc["kind"],
                benign=bool(inc.get("benign")),
                detected=first is not None,
                latency_s=epoch(first.detected_at) - epoch(inc["anchor"]) if first else None,
                rule=first.rule if first else None,
                severity=(pages[0] if pages else first).severity if first else None,
                alerts=len(mine),
            )
        )
    # Alerts on benign surprises are false alerts too: nobody should be woken by a flash sale.
    benign_ids = {
        a.alert_id
        for inc in incidents
        if inc.get("benign")
        for a in firing
        if _belongs(a, inc, _involved(inc))
    }
    false = [a for a in firing if a.alert_id not in matched or a.alert_id in benign_ids]
    days = (epoch(truth["end"]) - epoch(truth["start"])) / 86400 if "end" in truth else 1.0
    by_rule: dict[tuple[str, str], int] = {}
    for a in firing:
        by_rule[(a.rule, a.severity)] = by_rule.get((a.rule, a.severity), 0) + 1
    return Evaluation(results, false, days, by_rule)
