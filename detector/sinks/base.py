"""Where alerts and dead letters go."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from detector.alerts.record import Alert
from detector.sources.base import Record


class AlertSink(Protocol):
    """Idempotent on (alert_id, status): writing a record twice leaves one record."""

    def write(self, alerts: Sequence[Alert]) -> None: ...

    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    def send(self, record: Record, reason: str, detail: str) -> None: ...

    def flush(self) -> None:
        """Return once every record sent is durable at its destination."""
        ...

    def close(self) -> None: ...
