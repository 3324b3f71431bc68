"""The order event of CONTRACT.md §1 as a strict pydantic model."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _rfc3339(v: object) -> object:
    # Strict mode would also read a string of digits as Unix time (seconds or milliseconds,
    # guessed by size): not RFC 3339 and without an offset. So: a string shaped like a date-time,
    # then parsed in lax mode (the only mode in which a validator's string is parsed).
    if not isinstance(v, str):
        raise PydanticCustomError("datetime_type", "Input should be an RFC 3339 string")
    if not _DATE_TIME.match(v):
        raise ValueError("timestamp must be RFC 3339, e.g. 2026-01-12T10:00:00Z")
    return v


def _aware(v: datetime) -> datetime:
    if v.tzinfo is None:
        raise ValueError("timestamp has no offset; use RFC 3339 with 'Z' or '+hh:mm'")
    return v


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("amount must be a finite number")
    return v


AwareTime = Annotated[
    datetime, Field(strict=False), BeforeValidator(_rfc3339), AfterValidator(_aware)
]
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
