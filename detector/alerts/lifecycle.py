"""Alert episodes: fire once per (rule, key), resolve after the condition has cleared for a while.

The state of every open episode lives in the store (``al`` hash), so the lifecycle survives
restarts and is shared by every instance: each transition is a compare-and-set written atomically
with its outbox record, so one episode gives exactly one firing and one resolved record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import orjson

from detector.alerts.record import Alert, rfc3339
from detector.config import Config
from detector.rules.base import Finding
from detector.state.base import AlertChange

Suppression = Literal["cooldown", "allow_list", "silenced", "cap"]

CAP_RULE = "alert_cap"


@dataclass(frozen=True, slots=True)
class Episode:
    alert_id: str
    rule: str
    scope: str
    key: str
    campaign: str | None
    severity: str
    status: str
    fired_at: float
    last_true: float
    cleared_at: float | None
    resolved_at: float | None
    value: float
    threshold: float | None
    summary: str

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @staticmethod
    def decode(raw: bytes) -> Episode:
        return Episode(**orjson.loads(raw))

    def record(self, status: str, at: float) -> bytes:
        return Alert(
            alert_id=self.alert_id,
            status=status,  # type: ignore[arg-type]
            rule=self.rule,
            severity=self.severity,  # type: ignore[arg-type]
            scope=self.scope,  # type: ignore[arg-type]
            key=self.key,
            campaign_id=self.campaign,
            detected_at=rfc3339(at),
            value=self.value,
            threshold=self.threshold,
            summary=self.summary
            if status == "firing"
            else f"resolved: {self.rule} on {self.key} has been clear since "
            f"{rfc3339(self.cleared_at or at)}. Was: {self.summary}",
        ).to_json()


def episode_name(rule: str, key: str) -> str:
    return f"{rule}\x1f{key}"


@dataclass(frozen=True, slots=True)
class Target:
    """What a rule was evaluated on, whether or not its condition held."""

    rule: str
    scope: str
    key: str
    campaign: str | None


@dataclass(slots=True)
class Decisions:
    changes: list[AlertChange]
    suppressed: list[tuple[str, Suppression]]


class Lifecycle:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def _muted(self, f: Finding, t: float) -> Suppression | None:
        if f.key in self.cfg.allow_list or (f.campaign and f.campaign in self.cfg.allow_list):
            return "allow_list"
        for s in self.cfg.silences:
            matches = s.key in (f.key, f.campaign) and s.rule in (None, f.rule)
            if matches and t < s.until.timestamp():
                return "silenced"
        return None

    def decide(
        self,
        raw_states: dict[str, bytes],
        observations: Iterable[tuple[Target, Finding | None, float]],
        now: float,
    ) -> Decisions:
        """Transitions for these observations at event times; ``now`` is the detector clock."""
        cfg = self.cfg.alerts
        states = {n: Episode.decode(b) for n, b in raw_states.items()}
        firing = sum(1 for e in states.values() if e.status == "firing" and e.rule != CAP_RULE)
        out = Decisions([], [])
        capped_at: float | None = None
        for target, finding, t in observations:
            name = episode_name(target.rule, target.key)
            cur = states.get(name)
            new: Episode | None = None
            record: bytes | None = None
            if finding is not None:
                if cur is not None and cur.status == "firing":
                    # Observations can arrive slightly out of time order (a re-check at a
                    # bucket's end runs after that bucket's events): time decides, not order.
                    if cur.cleared_at is None or t < cur.cleared_at:
                        if t <= cur.last_true:
                            continue
                        new = replace(cur, last_true=t)
                    else:
                        new = replace(cur, last_true=t, cleared_at=None)
                elif cur is not None and t - (cur.resolved_at or t) < cfg.cooldown_s:
                    out.suppressed.append((target.rule, "cooldown"))
                    continue
                elif (why := self._muted(finding, t)) is not None:
                    out.suppressed.append((target.rule, why))
                    continue
                elif firing >= cfg.max_firing:
                    out.suppressed.append((target.rule, "cap"))
                    capped_at = t
                    continue
                else:
                    new = _open(finding, t)
                    record = new.record("firing", t)
                    firing += 1
            elif cur is None:
                continue
            elif cur.status == "firing":
                if t <= cur.last_true:
                    continue  # a stale "clear": the condition held later than this
                if cur.cleared_at is None:
                    new = replace(cur, cleared_at=t)
                elif t - cur.cleared_at >= cfg.resolve_after_s:
                    new = replace(cur, status="resolved", resolved_at=t)
                    record = new.record("resolved", t)
                    firing -= 1
                else:
                    continue
            elif t - (cur.resolved_at or t) >= cfg.cooldown_s:
                new = None  # cooldown over: forget the episode
            else:
                continue
            if cur is not None and new == cur:
                continue
            out.changes.append(
                AlertChange(
                    name,
                    raw_states.get(name),
                    new.encode() if new is not None else None,
                    record,
                )
            )
            if new is None:
                states.pop(name, None)
            else:
                states[name] = new
                raw_states = {**raw_states, name: out.changes[-1].new or b""}
        out.changes += self._cap_alert(states, raw_states, firing, capped_at, now)
        return out

    def _cap_alert(
        self,
        states: dict[str, Episode],
        raw: dict[str, bytes],
        firing: int,
        capped_at: float | None,
        now: float,
    ) -> list[AlertChange]:
        """One global alert while findings are being dropped because too many keys fire."""
        cap = self.cfg.alerts.max_firing
        name = episode_name(CAP_RULE, "*")
        finding = None
        if capped_at is not None:
            finding = Finding(
                rule=CAP_RULE,
                scope="global",
                key="*",
                campaign=None,
                severity="page",
                value=float(firing),
                threshold=float(cap),
                summary=f"{firing} alerts are firing, the cap of {cap}: new findings are being "
                f"dropped. Look at the firing alerts; raise alerts.max_firing if this is real.",
            )
        cur = states.get(name)
        if finding is None and (cur is None or cur.status != "firing" or firing >= cap):
            return []
        if finding is not None and capped_at is not None:
            if cur is not None and cur.status == "firing":
                return []
            new = _open(finding, capped_at)
            return [AlertChange(name, raw.get(name), new.encode(), new.record("firing", capped_at))]
        assert cur is not None
        new = replace(cur, status="resolved", resolved_at=now, cleared_at=now)
        return [AlertChange(name, raw.get(name), None, new.record("resolved", now))]


def _open(f: Finding, t: float) -> Episode:
    digest = hashlib.sha256(f"{f.rule}\x1f{f.key}\x1f{t:.3f}".encode()).hexdigest()[:20]
    return Episode(
        alert_id=f"{f.rule}-{digest}",
        rule=f.rule,
        scope=f.scope,
        key=f.key,
        campaign=f.campaign,
        severity=f.severity,
        status="firing",
        fired_at=t,
        last_true=t,
        cleared_at=None,
        resolved_at=None,
        value=f.value,
        threshold=f.threshold,
        summary=f.summary,
    )
