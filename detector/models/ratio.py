"""RatioBaseline: a campaign's normal discount-to-total ratio, learned robustly, bucket by bucket.

Fed each closed bucket's mean discount ratio (in [0, 1]). Only a ratio ABOVE the norm is anomalous
(a bucket of cheaper-than-usual discounts is not a misuse), so the score is one-sided.

The norm is a robust, exponentially weighted location and scale (an M-estimator): each update of
the location and of the mean absolute deviation clips the residual at ``CLIP_K`` deviations, so a
burst of abusive buckets barely moves the baseline it is measured against, while a lasting change of
the campaign's mix is still followed, at a bounded pace. Two floats of state plus a count; the
snapshot is exact JSON.

Score: the one-sided Gaussian tail probability ``p`` of the excess, with sigma taken as 1.25 mean
absolute deviations, on the same log scale as :class:`~detector.models.rate.RateModel`:
``score = -log10(p) / 10`` clipped to [0, 1] (0 at or below the norm; 0.3 at about 3 sigma, 0.5 at
about 4.3 sigma, 1.0 beyond about 6.4 sigma).

Frozen hyperparameters, chosen by principle (no labelled data exists for this signal):
``ALPHA`` 0.02 remembers about 50 buckets (an hour of 1-minute buckets with traffic);
``WARMUP`` 30 buckets before the norm is trusted (a median/MAD is stable after a few dozen points);
``CLIP_K`` 3 deviations is the usual Huber-type bound; ``MIN_DEV`` half a percentage point keeps a
campaign with a perfectly constant ratio from alarming on rounding noise.
"""

from __future__ import annotations

import json
import math
from typing import Any, Self

from river.base import AnomalyDetector

ALPHA = 0.02
WARMUP = 30
CLIP_K = 3.0
MIN_DEV = 0.005
SIGMA_PER_MAD = 1.25  # sigma / mean absolute deviation for a normal law (sqrt(pi / 2))
SNAPSHOT_VERSION = 1


class RatioBaseline(AnomalyDetector):
    """Robust one-sided baseline of a ratio in [0, 1].

    >>> m = RatioBaseline()
    >>> for i in range(100):
    ...     m.learn_one({"value": 0.20 + 0.01 * (i % 3)})
    >>> round(m.expected(), 2), m.score_one({"value": 0.1}), m.score_one({"value": 0.6}) > 0.9
    (0.21, 0.0, True)
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.dev = 0.0

    @staticmethod
    def _value(x: dict[Any, Any]) -> float | None:
        v = x.get("value")
        if v is None or isinstance(v, bool):
            return None
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            return None
        if not math.isfinite(f):
            return None
        return min(max(f, 0.0), 1.0)

    def learn_one(self, x: dict[Any, Any]) -> None:
        v = self._value(x)
        if v is None:
            return
        if self.n == 0:
            self.mean = v
        else:
            a = max(ALPHA, 1.0 / (self.n + 1))  # a plain average at first, then forgetting
            clip = CLIP_K * max(self.dev, MIN_DEV) if self.n >= WARMUP else math.inf
            r = min(max(v - self.mean, -clip), clip)
            self.dev += a * (min(abs(v - self.mean), clip) - self.dev)
            self.mean += a * r
        self.n += 1

    def score_one(self, x: dict[Any, Any]) -> float:
        v = self._value(x)
        if v is None or self.n == 0:
            return 0.0
        z = (v - self.mean) / (SIGMA_PER_MAD * max(self.dev, MIN_DEV))
        if z <= 0.0:
            return 0.0
        p = 0.5 * math.erfc(z / math.sqrt(2.0))
        return min(1.0, max(0.0, -math.log10(p + 1e-10) / 10.0))

    @property
    def warmed_up(self) -> bool:
        return self.n >= WARMUP

    def expected(self) -> float:
        """The learned typical ratio."""
        return self.mean

    def band(self) -> tuple[float, float]:
        half = 3.0 * SIGMA_PER_MAD * max(self.dev, MIN_DEV)
        return max(0.0, self.mean - half), min(1.0, self.mean + half)

    def snapshot(self) -> bytes:
        state = {"version": SNAPSHOT_VERSION, "n": self.n, "mean": self.mean, "dev": self.dev}
        return json.dumps(state, separators=(",", ":")).encode()

    @classmethod
    def restore(cls, data: bytes) -> Self:
        state = json.loads(data)
        if state.get("version", SNAPSHOT_VERSION) != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported RatioBaseline snapshot version {state.get('version')!r}")
        model = cls()
        model.n, model.mean, model.dev = int(state["n"]), float(state["mean"]), float(state["dev"])
        return model
