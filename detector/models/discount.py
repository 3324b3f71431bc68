"""DiscountBaseline: a campaign's normal discount-to-total ratio per ORDER, from closed buckets.

Each bucket brings the number of discounted orders, the mean of their ratios and the mean of the
squared ratios; the model keeps exponentially weighted sums of the three, so its mean and standard
deviation are per ORDER (not per bucket), whatever the campaign's volume. Only a ratio ABOVE the
norm is anomalous (a cheaper order is not a misconfigured discount). Frozen hyperparameters,
chosen by principle: ``ALPHA`` 0.01 per bucket remembers about 100 active buckets; ``WARMUP`` 30
orders before the norm is trusted.

It learns the discount AMOUNT per order the same way (``amount``, ``amount_m2``): a campaign
giving a fixed amount has a varied ratio (the same 200 off is 44% of a 455 order), and only its
amount tells a small order from a changed setting (``fixed_amount``).
"""

from __future__ import annotations

import json
import math
from typing import Self

from river.base import AnomalyDetector

ALPHA = 0.01
WARMUP = 30.0
_MIN_STD = 0.002


class DiscountBaseline(AnomalyDetector):
    def __init__(self) -> None:
        self._w = 0.0  # weighted count of orders
        self._s = 0.0  # weighted sum of ratios
        self._s2 = 0.0  # weighted sum of squared ratios
        self._seen = 0.0
        self._aw = 0.0  # weighted count of orders with an amount
        self._a = 0.0  # weighted sum of amounts
        self._a2 = 0.0  # weighted sum of squared amounts

    @staticmethod
    def _clean(x: dict[str, float], key: str, default: float | None) -> float | None:
        v = x.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return default
        return float(v)

    def learn_one(self, x: dict[str, float]) -> None:  # type: ignore[override]
        v = self._clean(x, "value", None)
        if v is None:
            return
        v = min(max(v, 0.0), 1.0)
        n = max(self._clean(x, "weight", 1.0) or 1.0, 0.0)
        m2 = self._clean(x, "m2", v * v)
        m2 = v * v if m2 is None else min(max(m2, v * v), 1.0)
        keep = 1.0 - ALPHA
        self._w = keep * self._w + n
        self._s = keep * self._s + n * v
        self._s2 = keep * self._s2 + n * m2
        self._seen += n
        a = self._clean(x, "amount", None)
        a2 = self._clean(x, "amount_m2", None)
        if a is not None and a >= 0 and a2 is not None:
            self._aw = keep * self._aw + n
            self._a = keep * self._a + n * a
            self._a2 = keep * self._a2 + n * max(a2, a * a)

    def std(self) -> float:
        if self._w <= 0:
            return 0.0
        mean = self._s / self._w
        return max(math.sqrt(max(self._s2 / self._w - mean * mean, 0.0)), _MIN_STD)

    def score_one(self, x: dict[str, float]) -> float:  # type: ignore[override]
        v = self._clean(x, "value", None)
        if v is None or self._w <= 0:
            return 0.0
        v = min(max(v, 0.0), 1.0)  # ratios live in [0, 1], as learned
        n = max(self._clean(x, "weight", 1.0) or 1.0, 1.0)
        z = (v - self.expected()) / (self.std() / math.sqrt(n))
        # 0 at the norm or below; 0.5 at 3 standard errors above; towards 1 far above.
        return 0.0 if z <= 0 else 1.0 - math.exp(-math.log(2) * z / 3.0)

    @property
    def warmed_up(self) -> bool:
        return self._seen >= WARMUP

    def expected(self) -> float:
        return self._s / self._w if self._w > 0 else 0.0

    def fixed_amount(self, max_cv: float) -> float | None:
        """The campaign's usual discount amount if its orders get nearly the same one (standard
        deviation at most ``max_cv`` of the mean, once warmed up); None otherwise."""
        return _steady(self._aw, self._a, self._a2, max_cv)

    def exact_ratio(self, max_cv: float) -> bool:
        """Whether every order gets nearly the same ratio (as ``fixed_amount``, unfloored std)."""
        return _steady(self._w, self._s, self._s2, max_cv) is not None

    def band(self) -> tuple[float, float]:
        mean, std = self.expected(), self.std()
        return max(0.0, mean - 3 * std), min(1.0, mean + 3 * std)

    def snapshot(self) -> bytes:
        return json.dumps(
            [self._w, self._s, self._s2, self._seen, self._aw, self._a, self._a2]
        ).encode()

    @classmethod
    def restore(cls, data: bytes) -> Self:
        m = cls()
        # Snapshots from before amounts were learned have four values: amounts start unlearned.
        vals = [float(v) for v in json.loads(data)] + [0.0, 0.0, 0.0]
        m._w, m._s, m._s2, m._seen, m._aw, m._a, m._a2 = vals[:7]
        return m


def _steady(w: float, s: float, s2: float, max_cv: float) -> float | None:
    """The mean of a weighted sum if its standard deviation is at most ``max_cv`` of it."""
    if max_cv <= 0 or w < WARMUP or s <= 0:
        return None
    mean = s / w
    return mean if math.sqrt(max(s2 / w - mean * mean, 0.0)) <= max_cv * mean else None
