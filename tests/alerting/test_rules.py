"""Alerting as code: Prometheus rules, their promtool tests, Alertmanager, runbooks, dashboard.

Static checks run everywhere (promtool/amtool tests are skipped, with the reason, only when the
binary is missing); the ``stack``-marked tests check the running local stack: Prometheus has
loaded the rules and Alertmanager inhibits as configured.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from detector.alerts.record import Alert
from detector.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM_DIR / "tests").glob("*.yml"))
AM_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = REPO / "docs" / "runbooks"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "detector.json"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
RENDER = PROM_DIR / "render-rules.sh"

RUNBOOK_BASE = "https://github.com/promo-detector/promo-detector/blob/main/docs/runbooks"
SEVERITIES = {"page", "ticket", "info"}
FROM_METRIC = "{{ $labels.severity }}"

# alert name -> the detector rule (the metric's `rule` label) it re-raises
FINDINGS = {
    "PromoCodeShared": "code_shared",
    "CampaignRedemptionSpike": "campaign_rate",
    "BotFarmSuspected": "bot_farm",
    "DiscountAnomaly": "discount_anomaly",
    "CodeHarvesting": "account_stacking",
    "DetectorAlertCapReached": "alert_cap",
}
HEALTH = {"DetectorDown", "DetectorStalled", "ConsumerLagHigh", "DeadLetterRateHigh", "RedisErrors"}
BUILTIN_METRICS = {"up", "ALERTS", "ALERTS_FOR_STATE"}


# ----------------------------------------------------------------- helpers --


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed (Debian package 'prometheus' / "
            f"'prometheus-alertmanager'; `deploy/local/stack.sh deps` installs them)"
        )
    return path


def _run(*cmd: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in _load(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules.append({**rule, "_file": path.name, "_group": group["name"]})
    return rules


def alert_names() -> set[str]:
    return {r["alert"] for r in alert_rules()}


def promtool_cases() -> list[dict[str, Any]]:
    """Every alert_rule_test entry of every promtool test file."""
    cases = []
    for path in TEST_FILES:
        for test in _load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.append({**case, "_test": test.get("name", path.name)})
    return cases


def _static_labels(rule: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (rule.get("labels") or {}).items() if "{{" not in str(v)}


# PromQL pieces that are not metric names.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (Grafana $variables allowed)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end() :].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (op, le) (rate(a_bucket{job=~"$job",x="y{z}"}'
        "[$__rate_interval]))) / on (job) group_left (x) b_total offset 5m > 1e3 and "
        "sum without (instance) (c) unless absent(up) or vector(0) * time()"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "up"}


@pytest.fixture(scope="module")
def exported_names() -> set[str]:
    """Every sample name the detector's Metrics exports once each metric has a value."""
    registry = CollectorRegistry()
    # A label cap of 1 so that a second firing alert lands in the unlabelled gauge.
    m = Metrics(registry, max_firing_labels=1)

    def alert(alert_id: str, rule: str, key: str) -> Alert:
        return Alert(
            alert_id=alert_id,
            status="firing",
            rule=rule,
            severity="page",
            scope="code",
            key=key,
            campaign_id="NY-2013",
            detected_at="2026-01-01T00:00:00Z",
            value=3.0,
            threshold=3.0,
            summary="test",
        )

    m.alert(alert("code_shared-1", "code_shared", "NYX7K2Q9"))
    m.alert(alert("code_shared-2", "code_shared", "QWE12345"))
    m.store_observer("apply", 0.01, True)
    m.store_observer("apply", 0.02, False)
    m.consumer_lag.labels("orders", "0").set(12)
    m.model_score.labels("NY-2013").set(0.4)
    m.batch_seconds.observe(0.05)
    m.decision_lag.observe(1.5)
    m.last_batch.set(time.time())
    m.watermark.set(time.time() - 120)
    m.suppressed.labels("code_shared", "cooldown").inc()
    m.set_config("abc123")
    names = {s.name for family in registry.collect() for s in family.samples}
    # The helpers above must have populated what the rules rely on.
    assert {"detector_firing_alerts", "detector_firing_alerts_unlabelled"} <= names
    return names


# ------------------------------------------------------------- promtool --


def test_rule_files_exist() -> None:
    assert [p.name for p in RULE_FILES] == ["detector-findings.yml", "detector-health.yml"]
    assert TEST_FILES, "no promtool test files in deploy/prometheus/tests"


def test_promtool_check_rules() -> None:
    promtool = _tool("promtool")
    proc = _run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules() -> None:
    promtool = _tool("promtool")
    proc = _run(promtool, "test", "rules", *map(str, TEST_FILES), cwd=PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout + proc.stderr


def test_promtool_tests_load_the_real_rule_files() -> None:
    loaded = set()
    for path in TEST_FILES:
        for rf in _load(path)["rule_files"]:
            loaded.add((path.parent / rf).resolve())
    assert loaded == {p.resolve() for p in RULE_FILES}


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = promtool_cases()
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = alert_names()
    assert names - firing == set(), "alerts never expected to fire in a promtool test"
    assert names - silent == set(), "alerts never expected to stay silent in a promtool test"
    assert {c["alertname"] for c in cases} <= names, "a promtool test names an unknown alert"


def test_every_rule_of_an_alert_is_exercised() -> None:
    """Alerts made of several rules (signal=..., overflow=...): each rule fires in some test.

    An expected alert is attributed to the most specific rule of its name whose static labels
    it carries.
    """
    by_name: dict[str, list[dict[str, Any]]] = {}
    for rule in alert_rules():
        by_name.setdefault(rule["alert"], []).append(rule)
    covered: set[tuple[str, int]] = set()
    for case in promtool_cases():
        for exp in case.get("exp_alerts") or []:
            labels = {k: str(v) for k, v in (exp.get("exp_labels") or {}).items()}
            candidates = [
                (len(_static_labels(r)), i)
                for i, r in enumerate(by_name[case["alertname"]])
                if _static_labels(r).items() <= labels.items()
            ]
            assert candidates, f"no rule of {case['alertname']} yields {labels}"
            covered.add((case["alertname"], max(candidates)[1]))
    missing = [
        f"{name} rule #{i} {_static_labels(r)}"
        for name, rules in by_name.items()
        for i, r in enumerate(rules)
        if (name, i) not in covered
    ]
    assert not missing, f"rules never seen firing in a promtool test: {missing}"


# ---------------------------------------------------------- rule contents --


def test_the_expected_alerts_exist() -> None:
    assert alert_names() == set(FINDINGS) | HEALTH


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['expr'][:30]}")
def test_alert_has_labels_annotations_and_runbook(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    labels = rule.get("labels") or {}
    annotations = rule.get("annotations") or {}
    severity = labels.get("severity")
    assert severity in SEVERITIES or severity == FROM_METRIC, f"{name}: severity {severity!r}"
    assert labels.get("team") in {"fraud", "sre"}, f"{name}: team label"
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{name}: annotation {key} missing"
    assert "{{" in annotations["summary"] + annotations["description"], (
        f"{name}: summary/description should be templated with labels or the value"
    )
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}/{name}.md"
    assert (RUNBOOKS / f"{name}.md").is_file(), f"runbook docs/runbooks/{name}.md missing"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['expr'][:30]}")
def test_findings_copy_the_detector_severity_and_fire_at_once(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    if name not in FINDINGS:
        assert rule["labels"]["severity"] == "page", "health alerts page"
        return
    assert rule["labels"]["severity"] == FROM_METRIC
    assert rule["labels"]["team"] == "fraud"
    assert f'rule="{FINDINGS[name]}"' in rule["expr"]
    assert rule.get("for", "0s") in {"0s", "0"}, "the detector already debounces"
    assert metric_names(rule["expr"]) <= {
        "detector_firing_alerts",
        "detector_firing_alerts_unlabelled",
    }


def test_runbooks_are_indexed_and_explain_suspend_and_silence() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    for name in alert_names():
        text = (RUNBOOKS / f"{name}.md").read_text()
        assert text.startswith(f"# {name}\n")
        assert f"({name}.md)" in index, f"README.md does not link {name}.md"
        if name in FINDINGS:
            for needle in (
                "promo-alerts",
                "promo admin",
                "allow_list",
                "silences",
                "until",
                "SIGHUP",
                "amtool",
                "silence add",
            ):
                assert needle in text, f"{name}.md does not mention {needle!r}"
    assert "render-rules.sh" in index


def test_render_rules_rewrites_the_runbook_base(tmp_path: Path) -> None:
    _tool("promtool")  # the script validates its output with it
    base = "https://wiki.example.com/promo&fraud/runbooks"
    proc = _run("bash", str(RENDER), base + "/", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for src in RULE_FILES:
        out = (tmp_path / src.name).read_text()
        assert RUNBOOK_BASE not in out
        for rule in _load(tmp_path / src.name)["groups"][0]["rules"]:
            assert rule["annotations"]["runbook_url"] == f"{base}/{rule['alert']}.md"
        # nothing but the base changed
        assert out.replace(base, RUNBOOK_BASE) == src.read_text()
    bad = _run("bash", str(RENDER), "not a url", str(tmp_path))
    assert bad.returncode == 2


# ------------------------------------------------------------ Alertmanager --


def test_amtool_check_config() -> None:
    amtool = _tool("amtool")
    proc = _run(amtool, "check-config", str(AM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=PromoCodeShared", "severity=page", "campaign=NY-2013"], "pager"),
        (
            ["alertname=CampaignRedemptionSpike", "severity=ticket", "campaign=WINTER-13"],
            "fraud-team",
        ),
        (["alertname=PromoCodeShared", "severity=info"], "blackhole"),
        (["alertname=DetectorDown", "severity=page", "team=sre"], "pager"),
        # a rule without a valid severity must still reach someone
        (["alertname=Unknown"], "fraud-team"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    amtool = _tool("amtool")
    proc = _run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={AM_CONFIG}",
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alertmanager_config_shape() -> None:
    cfg = _load(AM_CONFIG)
    receivers = {r["name"]: r for r in cfg["receivers"]}
    assert set(receivers) == {"pager", "fraud-team", "blackhole"}
    assert set(receivers["blackhole"]) == {"name"}, "blackhole must have no notifier"
    urls = {}
    for name in ("pager", "fraud-team"):
        (hook,) = receivers[name]["webhook_configs"]
        assert hook["send_resolved"] is True
        urls[name] = hook["url"]
    assert urls == {
        "pager": "http://127.0.0.1:29095/pager",
        "fraud-team": "http://127.0.0.1:29095/fraud",
    }
    route = cfg["route"]
    assert "campaign" in route["group_by"] and "alertname" in route["group_by"]
    pages = next(r for r in route["routes"] if r["matchers"] == ['severity="page"'])
    assert _seconds(pages["group_wait"]) <= 10, "pages are measured in wall time: short wait"
    # Inhibitions only name alerts that exist.
    names = alert_names()
    for rule in cfg["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname(=~|=)"(.*)"', matcher)
            if m:
                assert set(m.group(2).split("|")) <= names, matcher


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert m, duration
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# ---------------------------------------------------------------- Grafana --


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash.get("annotations", {}).get("list", []) if "expr" in a]
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        if m:
            exprs.append(m.group(1))
    return exprs


def test_dashboard_json_is_sound() -> None:
    dash = _dashboard()
    assert dash["uid"] == "promo-detector" and dash["title"]
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in _panels(dash):
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
    text = json.dumps(dash)
    for family in (
        "detector_events_total",
        "detector_consumer_lag_records",
        "detector_dead_letters_total",
        "detector_batch_duration_seconds_bucket",
        "detector_decision_lag_seconds_bucket",
        "detector_firing_alerts",
        "detector_model_score",
        "detector_store_errors_total",
        "detector_store_up",
        "detector_config_reloads_total",
    ):
        assert family in text, f"dashboard lacks {family}"


def test_grafana_provisioning_matches_compose_and_dashboard() -> None:
    ds = _load(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://127.0.0.1:29090"
    provider = _load(GRAFANA / "provisioning" / "dashboards" / "detector.yml")
    (prov,) = provider["providers"]
    path = prov["options"]["path"]
    compose = _load(COMPOSE)["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["volumes"]}
    assert mounts[path] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    (var,) = [v for v in _dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert var["current"]["value"] == source["uid"]


def test_every_metric_in_rules_and_dashboard_is_exported(exported_names: set[str]) -> None:
    used: dict[str, str] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, f"rule {rule['alert']}")
    for expr in dashboard_exprs(_dashboard()):
        for name in metric_names(expr):
            used.setdefault(name, f"dashboard: {expr[:60]}")
    assert used, "no metric names found"
    unknown = {
        n: where
        for n, where in used.items()
        if n not in exported_names and n not in BUILTIN_METRICS
    }
    assert not unknown, f"not exported by detector/metrics.py: {unknown}"


# ------------------------------------------------------------ live stack --


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _post_json(url: str, body: Any) -> None:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.mark.stack
def test_live_prometheus_loaded_the_rules(
    prometheus_url: str, stack_sh: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    stack_sh("reload")
    expected = {(r["alert"], r["_file"]) for r in alert_rules()}

    def loaded() -> set[tuple[str, str]] | None:
        groups = _get_json(f"{prometheus_url}/api/v1/rules?type=alert")["data"]["groups"]
        got = {
            (r["name"], Path(g["file"]).name)
            for g in groups
            for r in g["rules"]
            if r["health"] in {"ok", "unknown"}
        }
        return got if expected <= got else None

    _wait(loaded, 20, "Prometheus to list every alert rule of deploy/prometheus/rules")


@pytest.mark.stack
def test_live_alertmanager_inhibits_as_configured(
    alertmanager_url: str, stack_sh: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Synthetic alerts (severity info: routed to the blackhole, nobody is notified)."""
    stack_sh("reload")
    status = _get_json(f"{alertmanager_url}/api/v2/status")
    assert "fraud-team" in status["config"]["original"]
    job = f"pytest-inhibit-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)

    def alert(ends: datetime, **labels: str) -> dict[str, Any]:
        return {
            "labels": {"job": job, "severity": "info", **labels},
            "annotations": {"summary": "tests/alerting synthetic alert"},
            "startsAt": now.isoformat(),
            "endsAt": ends.isoformat(),
        }

    def post(ends: datetime) -> None:
        _post_json(
            f"{alertmanager_url}/api/v2/alerts",
            [
                alert(ends, alertname="DetectorDown", signal="instance_down", instance="i1"),
                alert(ends, alertname="RedisErrors", signal="store_down", instance="i1"),
                alert(ends, alertname="RedisErrors", signal="store_down", instance="i2"),
                alert(ends, alertname="DetectorStalled", signal="no_batches", instance="i2"),
                alert(ends, alertname="PromoCodeShared", key="PYTEST1", campaign="PYTEST"),
            ],
        )

    def states() -> dict[tuple[str, str], bool]:
        query = urllib.parse.urlencode({"filter": f'job="{job}"'})
        alerts = _get_json(f"{alertmanager_url}/api/v2/alerts?{query}")
        return {
            (a["labels"]["alertname"], a["labels"].get("instance", "")): bool(
                a["status"]["inhibitedBy"]
            )
            for a in alerts
        }

    post(now + timedelta(minutes=5))
    try:
        got = _wait(lambda: (s := states()) and len(s) == 5 and s, 10, "the synthetic alerts")
        assert got == {
            ("DetectorDown", "i1"): False,
            ("RedisErrors", "i1"): True,  # muted by DetectorDown of the same instance
            ("RedisErrors", "i2"): False,
            ("DetectorStalled", "i2"): True,  # muted by RedisErrors of the same instance
            ("PromoCodeShared", ""): False,  # one instance down does not mute findings
        }
        # Every detector down: findings are muted too.
        _post_json(
            f"{alertmanager_url}/api/v2/alerts",
            [
                alert(now + timedelta(minutes=5), alertname="DetectorDown", signal="all_down"),
            ],
        )
        _wait(
            lambda: states().get(("PromoCodeShared", "")),
            10,
            "PromoCodeShared to be inhibited by DetectorDown{signal=all_down}",
        )
    finally:
        # Resolve them all.
        post(datetime.now(UTC))
        _post_json(
            f"{alertmanager_url}/api/v2/alerts",
            [
                alert(datetime.now(UTC), alertname="DetectorDown", signal="all_down"),
            ],
        )
