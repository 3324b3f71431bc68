"""Prometheus metrics, on an injected registry (tests build fresh ones).

Label sets are bounded: outcomes and dead-letter reasons are closed sets, partitions are the
topic's, campaigns on scores are the top ``metrics.top_campaigns`` by volume plus ``other``, and a
promo code appears as a label only on ``detector_firing_alerts``, for at most
``metrics.max_firing_labels`` alerts (the rest are counted in
``detector_firing_alerts_unlabelled``).
"""

from __future__ import annotations

import platform
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from detector import __version__
from detector.alerts.record import Alert
from detector.events.parse import REASONS

OUTCOMES = ("ok", "dead_letter", "late", "duplicate")
_LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry, max_firing_labels: int = 50) -> None:
        r = registry
        self.registry = r
        self.events = Counter(
            "detector_events", "Events consumed, by outcome.", ["outcome"], registry=r
        )
        self.dead_letters = Counter(
            "detector_dead_letters", "Events dead-lettered, by reason.", ["reason"], registry=r
        )
        for o in OUTCOMES:
            self.events.labels(o)
        for reason in REASONS:
            self.dead_letters.labels(reason)
        self.batch_seconds = Histogram(
            "detector_batch_duration_seconds",
            "Time to process one batch end to end (parse, state, rules, alerts).",
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.decision_lag = Histogram(
            "detector_decision_lag_seconds",
            "From the record's produce timestamp to the detector's decision on it.",
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "detector_consumer_lag_records",
            "Records between the committed position and the partition's end.",
            ["topic", "partition"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "detector_store_operation_duration_seconds",
            "State-store (Redis) operation time.",
            ["op"],
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "detector_store_errors", "State-store operations that failed.", ["op"], registry=r
        )
        self.store_up = Gauge(
            "detector_store_up", "1 while the state store answers, 0 while it does not.", registry=r
        )
        self.delivery_failures = Counter(
            "detector_delivery_failures",
            "Records a sink did not deliver (sent again; consumption waits meanwhile), by sink.",
            ["sink"],
            registry=r,
        )
        for sink in ("kafka_alerts", "kafka_dead_letters"):
            self.delivery_failures.labels(sink)
        self.model_score = Gauge(
            "detector_model_score",
            "Latest campaign-rate anomaly score (top campaigns by volume, the rest as other).",
            ["campaign"],
            registry=r,
        )
        self.alerts = Counter(
            "detector_alerts",
            "Alert records emitted, by rule, severity and status.",
            ["rule", "severity", "status"],
            registry=r,
        )
        self.suppressed = Counter(
            "detector_alerts_suppressed",
            "Findings not raised as alerts, by rule and reason.",
            ["rule", "reason"],
            registry=r,
        )
        self.firing = Gauge(
            "detector_firing_alerts",
            "1 per currently firing alert (capped; see detector_firing_alerts_unlabelled).",
            ["rule", "severity", "scope", "key", "campaign"],
            registry=r,
        )
        self.firing_unlabelled = Gauge(
            "detector_firing_alerts_unlabelled",
            "Firing alerts beyond the label cap, by rule and severity.",
            ["rule", "severity"],
            registry=r,
        )
        self.build_info = Gauge(
            "detector_build_info", "Build information.", ["version", "python"], registry=r
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.last_batch = Gauge(
            "detector_last_batch_timestamp_seconds",
            "Wall time of the last batch whose state was written.",
            registry=r,
        )
        self.watermark = Gauge(
            "detector_watermark_timestamp_seconds", "The detector's event-time clock.", registry=r
        )
        self.config_reloads = Counter(
            "detector_config_reloads", "Config reloads, by result.", ["result"], registry=r
        )
        for res in ("applied", "rejected", "restart_required", "unchanged"):
            self.config_reloads.labels(res)
        self.config_info = Gauge(
            "detector_config_info", "The active config's hash.", ["hash"], registry=r
        )
        self._max_labels = max_firing_labels
        self._labelled: dict[str, tuple[str, ...]] = {}
        self._unlabelled: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def set_config(self, config_hash: str) -> None:
        self.config_info.clear()
        self.config_info.labels(config_hash).set(1)

    def alert(self, a: Alert) -> None:
        """Count an emitted record and keep the firing gauge in step with it."""
        self.alerts.labels(a.rule, a.severity, a.status).inc()
        self.track(a)

    def track(self, a: Alert) -> None:
        with self._lock:
            if a.status == "firing":
                if a.alert_id in self._labelled or a.alert_id in self._unlabelled:
                    return
                if len(self._labelled) < self._max_labels:
                    labels = (a.rule, a.severity, a.scope, a.key, a.campaign_id or "")
                    self._labelled[a.alert_id] = labels
                    self.firing.labels(*labels).set(1)
                else:
                    self._unlabelled[a.alert_id] = (a.rule, a.severity)
                    self.firing_unlabelled.labels(a.rule, a.severity).inc()
                return
            labels_or_none = self._labelled.pop(a.alert_id, None)
            if labels_or_none is not None:
                self.firing.remove(*labels_or_none)
            pair = self._unlabelled.pop(a.alert_id, None)
            if pair is not None:
                self.firing_unlabelled.labels(*pair).dec()

    def sync(self, firing: list[Alert]) -> None:
        """Make the firing gauge match the shared episode states exactly.

        Every instance exports the same firing set (Prometheus rules aggregate with max), so an
        instance that did not deliver a record, or missed a resolution, still tells the truth.
        """
        ids = {a.alert_id for a in firing}
        for gone in [i for i in (*self._labelled, *self._unlabelled) if i not in ids]:
            rule, severity = (self._labelled.get(gone) or self._unlabelled[gone])[:2]
            self.track(
                Alert(
                    alert_id=gone,
                    status="resolved",
                    rule=rule,
                    severity=severity,  # type: ignore[arg-type]
                    scope="global",
                    key="*",
                    campaign_id=None,
                    detected_at="",
                    value=0.0,
                    threshold=None,
                    summary="",
                )
            )
        for a in firing:
            self.track(a)

    def store_observer(self, op: str, seconds: float, ok: bool) -> None:
        self.store_seconds.labels(op).observe(seconds)
        if not ok:
            self.store_errors.labels(op).inc()
        self.store_up.set(1 if ok else 0)


def serve(metrics: Metrics, host: str, port: int) -> Any:
    """Serve /metrics; returns the server so that tests and shutdown can stop it."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
