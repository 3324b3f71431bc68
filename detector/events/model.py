"""The order event of CONTRACT.md §1 as a strict pydantic model."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _aware(v: datetime) -> datetime:
    if v.tzinfo is None:
        raise ValueError("timestamp has no offset; use RFC 3339 with 'Z' or '+hh:mm'")
    return v


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("amount must be a finite number")
    return v


AwareTime = Annotated[datetime, AfterValidator(_aware)]
Amount = Annotated[float, Field(ge=0), AfterValidator(_finite)]


class OrderEvent(BaseModel):
    """One order; strict: ids are strings, amounts JSON numbers, timestamps carry an offset."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    event_id: str = Field(min_length=1, max_length=256)
    ts: AwareTime
    order_id: str = Field(min_length=1, max_length=256)
    account_id: str = Field(min_length=1, max_length=256)
    promo_code: str | None = Field(default=None, max_length=256)
    campaign_id: str | None = Field(default=None, max_length=256)
    order_total: Amount | None = None
    discount: Amount | None = None
    currency: str | None = Field(default=None, max_length=16)
    account_created_at: AwareTime | None = None
    ip: str | None = Field(default=None, max_length=128)
    device_id: str | None = Field(default=None, max_length=256)
