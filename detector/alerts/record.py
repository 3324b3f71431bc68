"""The alert record of CONTRACT.md §4, as written to the alerts file and topic."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Alert(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    alert_id: str
    status: Literal["firing", "resolved"]
    rule: str
    severity: Literal["page", "ticket", "info"]
    scope: Literal["code", "campaign", "account", "global"]
    key: str
    campaign_id: str | None
    detected_at: str
    value: float
    threshold: float | None
    summary: str

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())

    @classmethod
    def from_json(cls, raw: bytes) -> Alert:
        return cls.model_validate_json(raw)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()
