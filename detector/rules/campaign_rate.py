"""A campaign's share of all orders far above its learned, time-of-day aware baseline.

Evaluated once per closed bucket by the model owner, not per event: the model sees one value per
bucket, the campaign's redemptions over all orders in the short window ending with that bucket
(a sliding share is far less noisy than a one-minute share at night), scores it, then learns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from detector.config import CampaignRateRule, Config
from detector.rules.base import Finding


@dataclass(frozen=True, slots=True)
class RateObservation:
    campaign: str
    redemptions: float  # over the short window
    orders: float  # all orders over the short window
    score: float
    expected_share: float
    warmed_up: bool

    @property
    def share(self) -> float:
        return self.redemptions / self.orders if self.orders > 0 else 0.0

    @property
    def ratio(self) -> float:
        return self.share / self.expected_share if self.expected_share > 0 else math.inf

    @property
    def sigmas(self) -> float:
        """Excess redemptions over the expectation, in Poisson standard deviations."""
        expected = max(self.expected_share * self.orders, 1.0)
        return (self.redemptions - expected) / math.sqrt(expected)


class CampaignRate:
    name = "campaign_rate"
    scope = "campaign"

    def evaluate(self, o: RateObservation, cfg_all: Config) -> Finding | None:
        cfg: CampaignRateRule = cfg_all.rule_for(self.name, o.campaign)
        # A model with too little history never raises anything.
        if not cfg.enabled or not o.warmed_up:
            return None
        if o.score < cfg.score_threshold or o.redemptions < cfg.min_redemptions:
            return None
        ratio = o.ratio
        if ratio < cfg.min_ratio or o.sigmas < cfg.min_sigmas:
            return None
        severity = cfg.severity
        if cfg.page_ratio is not None and ratio >= cfg.page_ratio:
            severity = "page"
        shown = f"{ratio:.1f}x" if ratio != math.inf else "far above"
        return Finding(
            rule=self.name,
            scope="campaign",
            key=o.campaign,
            campaign=o.campaign,
            severity=severity,
            value=round(min(ratio, 1e9), 3),
            threshold=cfg.min_ratio,
            summary=f"campaign {o.campaign}: {o.redemptions:.0f} redemptions in 10 min, "
            f"{o.share:.1%} of orders vs a learned {o.expected_share:.1%} ({shown}, score "
            f"{o.score:.2f}); check for a leaked code or an unannounced promotion.",
        )
