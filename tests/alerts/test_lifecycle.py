"""Alert episodes: one firing and one resolved record per (rule, key), cooldown, cap, mutes."""

from __future__ import annotations

from datetime import UTC, datetime

from detector.alerts.lifecycle import CAP_RULE, Lifecycle, Target
from detector.alerts.record import Alert
from detector.config import Config, load_config
from detector.rules.base import Finding
from detector.state.base import Commit
from detector.state.keys import Keys
from detector.state.memory import MemoryStore

T0 = 1_768_212_000.0
TG = Target("code_shared", "code", "NYX", "NY")


def finding(key: str = "NYX", value: float = 5.0) -> Finding:
    return Finding("code_shared", "code", key, "NY", "page", value, 3.0, f"{key} shared")


class Harness:
    def __init__(self, cfg: Config) -> None:
        self.lc = Lifecycle(cfg)
        self.store = MemoryStore(Keys("t:", 60, 60), 3600)

    def step(self, t: float, *obs: tuple[Target, Finding | None]) -> list[Alert]:
        d = self.lc.decide(self.store.alert_states(), [(tg, f, t) for tg, f in obs], t)
        self.store.commit(Commit(changes=d.changes))
        out = [Alert.from_json(raw) for _, raw in self.store.outbox()]
        self.store.ack_outbox([i for i, _ in self.store.outbox()])
        self.suppressed = d.suppressed
        return out


def cfg(**alerts: object) -> Config:
    return load_config(None, {"alerts": {"resolve_after_s": 300, "cooldown_s": 900, **alerts}})


def test_a_condition_that_keeps_holding_fires_once() -> None:
    h = Harness(cfg())
    first = h.step(T0, (TG, finding()))
    assert [(a.status, a.rule, a.key) for a in first] == [("firing", "code_shared", "NYX")]
    assert first[0].detected_at == "2026-01-12T10:00:00.000Z"
    for i in range(1, 10):
        assert h.step(T0 + 60 * i, (TG, finding(value=5 + i))) == []


def test_resolves_only_after_clear_for_resolve_after_with_the_same_id() -> None:
    h = Harness(cfg())
    fired = h.step(T0, (TG, finding()))[0]
    assert h.step(T0 + 60, (TG, None)) == []  # clear starts
    assert h.step(T0 + 200, (TG, None)) == []  # not yet 300 s
    resolved = h.step(T0 + 400, (TG, None))
    assert [a.status for a in resolved] == ["resolved"]
    assert resolved[0].alert_id == fired.alert_id


def test_a_flap_within_resolve_after_keeps_the_episode_open() -> None:
    h = Harness(cfg())
    h.step(T0, (TG, finding()))
    h.step(T0 + 60, (TG, None))
    assert h.step(T0 + 120, (TG, finding())) == []
    assert h.step(T0 + 200, (TG, None)) == []
    assert h.step(T0 + 450, (TG, None)) == []  # cleared at 200: 250 s < 300
    assert [a.status for a in h.step(T0 + 520, (TG, None))] == ["resolved"]


def test_cooldown_suppresses_a_new_episode_then_allows_one() -> None:
    h = Harness(cfg())
    h.step(T0, (TG, finding()))
    h.step(T0 + 10, (TG, None))
    h.step(T0 + 400, (TG, None))  # resolved at 400
    assert h.step(T0 + 500, (TG, finding())) == []
    assert h.suppressed == [("code_shared", "cooldown")]
    h.step(T0 + 1400, (TG, None))  # cooldown over: the episode is forgotten
    again = h.step(T0 + 1500, (TG, finding()))
    assert [a.status for a in again] == ["firing"]


def test_allow_list_and_active_silences_mute_but_expired_silences_do_not() -> None:
    until = datetime.fromtimestamp(T0 + 3600, UTC).isoformat()
    c = load_config(
        None,
        {
            "allow_list": ["VIP"],
            "silences": [
                {"key": "NOISY", "until": until, "reason": "known partner"},
            ],
        },
    )
    h = Harness(c)
    assert h.step(T0, (Target("code_shared", "code", "VIP", "NY"), finding("VIP"))) == []
    assert h.suppressed == [("code_shared", "allow_list")]
    assert h.step(T0, (Target("code_shared", "code", "NOISY", "NY"), finding("NOISY"))) == []
    assert h.suppressed == [("code_shared", "silenced")]
    late = h.step(T0 + 7200, (Target("code_shared", "code", "NOISY", "NY"), finding("NOISY")))
    assert [a.key for a in late] == ["NOISY"]


def test_cap_on_firing_keys_raises_one_global_summary_alert() -> None:
    h = Harness(cfg(max_firing=2))
    obs = [(Target("code_shared", "code", f"C{i}", "NY"), finding(f"C{i}")) for i in range(4)]
    out = h.step(T0, *obs)
    assert sorted(a.key for a in out if a.rule == "code_shared") == ["C0", "C1"]
    cap = [a for a in out if a.rule == CAP_RULE]
    assert len(cap) == 1 and cap[0].scope == "global" and cap[0].key == "*"
    assert ("code_shared", "cap") in h.suppressed
    # Once keys resolve below the cap, the summary alert resolves too.
    h.step(T0 + 10, *[(tg, None) for tg, _ in obs[:2]])
    out = h.step(T0 + 400, *[(tg, None) for tg, _ in obs[:2]])
    assert sorted((a.rule, a.status) for a in out) == [
        (CAP_RULE, "resolved"),
        ("code_shared", "resolved"),
        ("code_shared", "resolved"),
    ]


def test_two_instances_deciding_the_same_episode_emit_one_record() -> None:
    c = cfg()
    store = MemoryStore(Keys("t:", 60, 60), 3600)
    a, b = Lifecycle(c), Lifecycle(c)
    states = store.alert_states()
    da = a.decide(states, [(TG, finding(), T0)], T0)
    db = b.decide(states, [(TG, finding(), T0 + 1)], T0 + 1)
    assert store.commit(Commit(changes=da.changes)) == [True]
    assert store.commit(Commit(changes=db.changes)) == [False]
    assert len(store.outbox()) == 1


def test_metrics_gauge_follows_the_shared_firing_set() -> None:
    from prometheus_client import CollectorRegistry

    from detector.metrics import Metrics

    m = Metrics(CollectorRegistry())

    def alert(i: str, status: str = "firing") -> Alert:
        return Alert(
            alert_id=i,
            status=status,
            rule="code_shared",
            severity="page",
            scope="code",  # type: ignore[arg-type]
            key=f"K{i}",
            campaign_id="NY",
            detected_at="",
            value=2,
            threshold=2,
            summary="",
        )

    def firing() -> set[str]:
        return {
            s.labels["key"]
            for metric in m.registry.collect()
            if metric.name == "detector_firing_alerts"
            for s in metric.samples
        }

    m.alert(alert("1"))
    m.sync([alert("2")])  # another instance fired 2 and resolved 1
    assert firing() == {"K2"}
