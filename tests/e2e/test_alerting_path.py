"""End to end: leaked personal code -> detector -> Prometheus -> Alertmanager -> pager.

One test, three phases on one timeline (they overlap so that the file stays under ~6 min):

1. A personal campaign is used normally by its owners; then strangers on other devices and
   IPs redeem one owner's code. Event times are the wall clock. `detector run` (instance
   ``leak``) consumes the topic; Prometheus scrapes it and raises PromoCodeShared; Alertmanager
   posts it to our webhook on 127.0.0.1:29095/pager. Measured: first leaked produce ->
   detector gauge -> Prometheus alert firing -> webhook receipt.
2. The leak stops: the detector resolves its alert (alerts JSONL + gauge gone) once the code's
   strangers leave ``windows.memory_s`` and ``alerts.resolve_after_s`` has passed; Prometheus
   holds the alert for ``keep_firing_for: 2m``; Alertmanager then posts the resolution.
3. Once the detector has resolved, instance ``leak`` is stopped (SIGTERM, exit 0) and its
   DetectorDown (``for: 1m``) must reach /pager, told apart from the stack's default dead
   target by our target labels. A second, idle detector (instance ``standby``) stays up all
   along, as the rest of a fleet would: without it the job would be all down, and
   DetectorDown{signal="all_down"} inhibits the findings' resolved notifications by design.

Run with ``-rP`` (or ``-s``) to see the measured times; they are also recorded as junit
properties.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

REPO = Path(__file__).resolve().parents[2]
# tests/conftest.py's DetectorProcess (conftest modules are not imported by name).
DetectorProcess = Any

pytestmark = [pytest.mark.stack, pytest.mark.slow]

WEBHOOK_HOST = "127.0.0.1"
WEBHOOK_PORT = 29095  # deploy/alertmanager/alertmanager.yml: pager and fraud-team webhooks

# Small windows so that the whole path runs in minutes (multiples of bucket_s; memory_s >= 60).
BUCKET_S = 5
MEMORY_S = 60
RESOLVE_AFTER_S = 10
KEEP_FIRING_FOR_S = 120  # deploy/prometheus/rules/detector-findings.yml, PromoCodeShared
DOWN_FOR_S = 60  # deploy/prometheus/rules/detector-health.yml, DetectorDown
PAGE_GROUP_INTERVAL_S = 60  # alertmanager.yml, severity=page route

FIRE_BOUND_S = 120.0  # first leaked event -> page at the webhook (aim: <= 60 s)


# ------------------------------------------------------------------ webhook receiver --


@dataclass
class Received:
    path: str
    at: float  # wall clock of receipt
    body: dict[str, Any]


@dataclass
class Webhook:
    """What Alertmanager POSTed to 127.0.0.1:29095, in arrival order."""

    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self, path: str) -> list[tuple[float, dict[str, Any]]]:
        """(receipt time, alert) for every alert of every notification posted to ``path``."""
        with self.lock:
            posts = [r for r in self.received if r.path == path]
        return [(r.at, a) for r in posts for a in r.body.get("alerts", [])]

    def find(
        self, path: str, status: str, labels: dict[str, str]
    ) -> tuple[float, dict[str, Any]] | None:
        """The first alert posted to ``path`` with this status whose labels include ``labels``."""
        for at, a in self.alerts(path):
            if a.get("status") == status and all(
                a.get("labels", {}).get(k) == v for k, v in labels.items()
            ):
                return at, a
        return None

    def get(self, path: str, status: str, labels: dict[str, str]) -> dict[str, Any]:
        hit = self.find(path, status, labels)
        assert hit is not None, f"no {status} alert {labels} posted to {path}"
        return hit[1]


def _handler(hook: Webhook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            at = time.time()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"unparsed": raw.decode(errors="replace")}
            with hook.lock:
                hook.received.append(Received(self.path, at, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: Alertmanager posts the stack's default DetectorDown all the time

    return Handler


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        server = ThreadingHTTPServer((WEBHOOK_HOST, WEBHOOK_PORT), _handler(hook))
    except OSError as e:
        pytest.fail(
            f"cannot listen on {WEBHOOK_HOST}:{WEBHOOK_PORT} ({e}). Alertmanager's webhooks "
            f"(deploy/alertmanager/alertmanager.yml) point there, so this test must own the port: "
            f"stop whatever holds it (another end-to-end test, the demo: `ss -ltnp | grep "
            f"{WEBHOOK_PORT}`) and re-run."
        )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()
    thread.join(5)


# --------------------------------------------------------------------------- helpers --


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def prom_query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(expr)}")
    if status != 200:
        return []
    return list(json.loads(body)["data"]["result"])


def prom_alerts(prometheus_url: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{prometheus_url}/api/v1/alerts")
    if status != 200:
        return []
    return list(json.loads(body)["data"]["alerts"])


def rfc3339_epoch(text: str) -> float:
    """Prometheus/Alertmanager timestamps (nanosecond precision, 'Z') to epoch seconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
    return base + (float(f"0.{frac}") if frac else 0.0)


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    detectors: tuple[DetectorProcess, ...] = (),
    every: float = 0.2,
) -> Any:
    """Poll until ``predicate()`` is truthy; fail early if a detector that should run died."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        for d in detectors:
            if d.proc.poll() is not None:
                raise AssertionError(
                    f"detector exited with {d.proc.returncode} while waiting for {what}:\n"
                    + d.log.read_text()[-3000:]
                )
        if time.monotonic() >= deadline:
            tails = "".join(
                f"\n--- {d.log.name} tail ---\n{d.log.read_text()[-2000:]}" for d in detectors
            )
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{tails}")
        time.sleep(every)


def read_alert_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Shop:
    """Order events with event time = now, produced to Kafka one at a time."""

    def __init__(self, bootstrap: str, topic: str, run: str) -> None:
        self._p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        self._topic = topic
        self._run = run
        self._n = 0
        self._lock = threading.Lock()

    def order(
        self,
        account: str,
        device: str,
        ip: str,
        *,
        code: str | None = None,
        campaign: str | None = None,
        account_age_days: float = 400,
    ) -> float:
        """Produce one order now; returns the wall time just before the produce call."""
        with self._lock:
            self._n += 1
            n = self._n
        now = datetime.now(UTC)
        total = 40.0 + (n * 7) % 60
        event = {
            "event_id": f"e-{self._run}-{n}",
            "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "order_id": f"o-{self._run}-{n}",
            "account_id": account,
            "promo_code": code,
            "campaign_id": campaign,
            "order_total": total,
            "discount": round(total * 0.15, 2) if code else 0.0,
            "currency": "EUR",
            "account_created_at": (now - timedelta(days=account_age_days))
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
            "ip": ip,
            "device_id": device,
        }
        t = time.time()
        self._p.send(self._topic, key=account.encode(), value=json.dumps(event).encode())
        self._p.flush()
        return t

    @property
    def produced(self) -> int:
        return self._n

    def close(self) -> None:
        self._p.close()


# ------------------------------------------------------------------------------ test --


@pytest.mark.timeout(540)
def test_leaked_code_pages_resolves_and_detector_down_pages(
    webhook: Webhook,
    topic: Callable[..., str],
    detector_config: Callable[..., Path],
    start_detector: Callable[..., DetectorProcess],
    prom_target: Callable[..., Path],
    prometheus_url: str,
    kafka_bootstrap: str,
    redis_prefix: str,
    record_property: Callable[[str, object], None],
) -> None:
    run = uuid.uuid4().hex[:8]
    campaign = f"E2E-BDAY-{run}"  # unique: a fresh Alertmanager group, so group_wait applies
    owners = [f"acc-{run}-{i:02d}" for i in range(1, 7)]
    codes = {a: f"BDAY{run.upper()}{i:02d}" for i, a in enumerate(owners, 1)}
    devices = {a: f"dev-{run}-{i:02d}" for i, a in enumerate(owners, 1)}
    ips = {a: f"10.20.{i}.{10 + i}" for i, a in enumerate(owners, 1)}
    victim = owners[0]
    leaked = codes[victim]
    times: dict[str, float] = {}

    # --- two detectors on job "detector", told apart by our target labels ----------------
    events = topic(partitions=1, hint="e2e-orders")
    cfg = detector_config(
        events,
        name="leak.yaml",
        kafka={
            "topics": {
                "events": events,
                "dead_letters": topic(hint="e2e-dlq"),
                "alerts": topic(hint="e2e-alerts"),
            }
        },
        campaigns={campaign: {"kind": "personal"}},
        windows={
            "bucket_s": BUCKET_S,
            "recent_s": 10,
            "short_s": 30,
            "long_s": 60,
            "memory_s": MEMORY_S,
        },
        alerts={"resolve_after_s": RESOLVE_AFTER_S, "cooldown_s": 30},
        events={"allowed_lateness_s": 2, "idle_advance_s": 3},
    )
    idle = topic(partitions=1, hint="e2e-standby")
    standby_cfg = detector_config(
        idle,
        name="standby.yaml",
        kafka={
            "topics": {
                "events": idle,
                "dead_letters": topic(hint="e2e-standby-dlq"),
                "alerts": topic(hint="e2e-standby-alerts"),
            }
        },
        redis={"key_prefix": f"{redis_prefix}standby:"},
    )
    alerts_path = Path(json.loads(cfg.read_text())["alerts"]["jsonl_path"])
    det = start_detector(cfg)
    standby = start_detector(standby_cfg)
    leak_labels = {"e2e_run": run, "role": "leak"}
    prom_target(det.metrics_port, leak_labels)
    prom_target(standby.metrics_port, {"e2e_run": run, "role": "standby"})
    both = (det, standby)

    wait_until(
        lambda: (
            len(
                [
                    r
                    for r in prom_query(prometheus_url, f'up{{e2e_run="{run}"}}')
                    if r["value"][1] == "1"
                ]
            )
            == 2
        ),
        60,
        "Prometheus to discover and scrape both detectors (file_sd)",
        both,
    )
    # The stack's default target 127.0.0.1:29100 has no detector: while it is the only one,
    # DetectorDown{signal="all_down"} fires and inhibits every finding of job "detector".
    wait_until(
        lambda: (
            not any(
                a["labels"].get("alertname") == "DetectorDown"
                and a["labels"].get("signal") in ("all_down", "no_target")
                for a in prom_alerts(prometheus_url)
            )
        ),
        30,
        "DetectorDown all_down/no_target to clear now that our detectors are up",
        both,
    )

    # --- normal use: each owner redeems their own code; some orders without a code --------
    shop = Shop(kafka_bootstrap, events, run)
    stop_background = threading.Event()

    def background() -> None:
        """The rest of the shop keeps ordering (1/s), without the leaked code."""
        i = 0
        while not stop_background.wait(1.0):
            a = owners[1 + i % (len(owners) - 1)]
            shop.order(
                a,
                devices[a],
                ips[a],
                code=codes[a] if i % 3 == 0 else None,
                campaign=campaign if i % 3 == 0 else None,
            )
            i += 1

    try:
        for a in owners:
            shop.order(a, devices[a], ips[a], code=codes[a], campaign=campaign)
            shop.order(a, devices[a], ips[a])
            time.sleep(0.2)
        det.wait_events(shop.produced, timeout=30)
        assert not read_alert_records(alerts_path), "normal personal-code use raised alerts"
        bg = threading.Thread(target=background, name="shop", daemon=True)
        bg.start()

        # --- the leak: strangers, each on their own device and network, use one code -------
        # Produced from a thread (1/s) while the main thread measures the path.
        def leak() -> None:
            for i in range(1, 5):
                t = shop.order(
                    f"stranger-{run}-{i}",
                    f"dev-x-{run}-{i}",
                    f"198.51.100.{i}",
                    code=leaked,
                    campaign=campaign,
                    account_age_days=3 + i,
                )
                times.setdefault("first_leak_produced", t)
                times["last_leak_produced"] = t
                time.sleep(1.0)

        leaker = threading.Thread(target=leak, name="leak", daemon=True)
        leaker.start()
        wait_until(lambda: "first_leak_produced" in times, 10, "the first leaked event")
        t0 = times["first_leak_produced"]

        gauge = (
            f'detector_firing_alerts{{campaign="{campaign}",key="{leaked}",rule="code_shared",'
            f'scope="code",severity="page"}}'
        )

        # --- firing: detector gauge, Prometheus alert, page at the webhook ----------------
        prom_active_at: list[float] = []

        def fired() -> bool:
            now = time.time()
            if "gauge_seen" not in times and det.metric(gauge) == 1:
                times["gauge_seen"] = now
            if "prom_firing_seen" not in times:
                for a in prom_alerts(prometheus_url):
                    lb = a["labels"]
                    if (
                        lb.get("alertname") == "PromoCodeShared"
                        and lb.get("key") == leaked
                        and a["state"] == "firing"
                    ):
                        times["prom_firing_seen"] = now
                        prom_active_at.append(rfc3339_epoch(a["activeAt"]))
            hit = webhook.find("/pager", "firing", {"alertname": "PromoCodeShared", "key": leaked})
            if hit is not None:
                times["webhook_firing"] = hit[0]
            return hit is not None

        wait_until(fired, FIRE_BOUND_S, f"PromoCodeShared for {leaked} at /pager", both, 0.25)
        page = webhook.get("/pager", "firing", {"alertname": "PromoCodeShared", "key": leaked})
        labels, annotations = page["labels"], page["annotations"]
        assert labels["alertname"] == "PromoCodeShared"
        assert labels["severity"] == "page"
        assert labels["rule"] == "code_shared"
        assert labels["scope"] == "code"
        assert labels["key"] == leaked
        assert labels["campaign"] == campaign
        assert labels["job"] == "detector"
        assert "instance" not in labels, "findings must not page once per detector instance"
        runbook = annotations.get("runbook_url", "")
        assert runbook.endswith("/PromoCodeShared.md"), annotations
        assert (REPO / "docs" / "runbooks" / "PromoCodeShared.md").exists()
        assert leaked in annotations.get("summary", "")
        assert not webhook.find("/fraud", "firing", {"key": leaked}), "a page also went as ticket"

        firing = [r for r in read_alert_records(alerts_path) if r["status"] == "firing"]
        assert [(r["rule"], r["key"], r["campaign_id"], r["severity"]) for r in firing] == [
            ("code_shared", leaked, campaign, "page")
        ], firing
        # A second household (the first stranger) is already enough: the owner + 1 stranger.
        assert firing[0]["value"] == 2.0, firing

        # --- the leak has stopped: the detector resolves ------------------------------------
        leaker.join(10)
        t_leak_end = times["last_leak_produced"]

        def resolved_in_detector() -> bool:
            recs = [r for r in read_alert_records(alerts_path) if r["status"] == "resolved"]
            if recs and "detector_resolved" not in times:
                times["detector_resolved"] = time.time()
            gone = det.metric(gauge, 0.0) == 0.0 and not any(
                k.startswith("detector_firing_alerts{") for k in det.metrics()
            )
            if recs and gone:
                times["gauge_gone"] = time.time()
            return bool(recs) and gone

        # The strangers leave the memory window, then resolve_after_s at bucket ends.
        detector_bound = MEMORY_S + RESOLVE_AFTER_S + 4 * BUCKET_S + 30
        wait_until(resolved_in_detector, detector_bound, "the detector to resolve", both)
        recs = read_alert_records(alerts_path)
        assert [(r["status"], r["alert_id"]) for r in recs] == [
            ("firing", firing[0]["alert_id"]),
            ("resolved", firing[0]["alert_id"]),
        ], recs
        stop_background.set()
        bg.join(5)

        # --- stop the detector: SIGTERM, clean exit, DetectorDown for this instance -------
        times["detector_stopped"] = time.time()
        assert det.stop() == 0, det.log.read_text()[-3000:]
        assert "detector stopped cleanly" in det.log.read_text()

        def resolution_and_down() -> bool:
            r = webhook.find("/pager", "resolved", {"alertname": "PromoCodeShared", "key": leaked})
            if r is not None:
                times.setdefault("webhook_resolved", r[0])
            d = webhook.find(
                "/pager",
                "firing",
                {"alertname": "DetectorDown", "signal": "instance_down", **leak_labels},
            )
            if d is not None:
                times.setdefault("webhook_down", d[0])
            return r is not None and d is not None

        # Prometheus keeps the finding 2 min after its series went; pages then wait for the
        # group's next group_interval tick. DetectorDown: for 1 min, then the tick of the
        # DetectorDown group (already open: the stack's default target is always down).
        bound = max(KEEP_FIRING_FOR_S, DOWN_FOR_S) + PAGE_GROUP_INTERVAL_S + 60
        wait_until(
            resolution_and_down, bound, "the resolved page and DetectorDown at /pager", (standby,)
        )
    finally:
        stop_background.set()
        shop.close()
        # Shown on failure too: how far the path got, in seconds from the first leaked event.
        t_first = times.get("first_leak_produced")
        if t_first is not None:
            print("timeline:", {k: round(v - t_first, 2) for k, v in sorted(times.items())})

    res = webhook.get("/pager", "resolved", {"alertname": "PromoCodeShared", "key": leaked})
    assert res["labels"]["campaign"] == campaign
    assert res["endsAt"] and not res["endsAt"].startswith("0001"), res
    down = webhook.get(
        "/pager", "firing", {"alertname": "DetectorDown", "signal": "instance_down", **leak_labels}
    )
    assert down["labels"]["instance"] == f"127.0.0.1:{det.metrics_port}"
    assert down["labels"]["severity"] == "page"
    assert down["annotations"]["runbook_url"].endswith("/DetectorDown.md")
    # The standby stayed up all along: no DetectorDown for it.
    assert not webhook.find("/pager", "firing", {"alertname": "DetectorDown", "role": "standby"})

    # --- the measured times ----------------------------------------------------------------
    report = {
        "leak_produced_to_gauge_s": times["gauge_seen"] - t0,
        "leak_produced_to_prometheus_active_at_s": (prom_active_at[0] - t0)
        if prom_active_at
        else None,
        "leak_produced_to_prometheus_firing_seen_s": times["prom_firing_seen"] - t0,
        "leak_produced_to_webhook_s": times["webhook_firing"] - t0,
        "leak_end_to_detector_resolved_s": times["detector_resolved"] - t_leak_end,
        "leak_end_to_webhook_resolved_s": times["webhook_resolved"] - t_leak_end,
        "detector_resolved_to_webhook_resolved_s": times["webhook_resolved"]
        - times["detector_resolved"],
        "detector_stopped_to_down_page_s": times["webhook_down"] - times["detector_stopped"],
    }
    for k, v in report.items():
        record_property(k, None if v is None else round(v, 2))
    print("alerting path times:", json.dumps({k: v and round(v, 2) for k, v in report.items()}))
    fire_s = times["webhook_firing"] - t0
    assert fire_s <= FIRE_BOUND_S, f"first leaked event -> page took {fire_s:.1f}s"
