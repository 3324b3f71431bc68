"""A campaign's share of all orders far above its learned, time-of-day aware baseline.

Evaluated once per closed bucket by the model owner, not per event: the model sees one value per
bucket (the campaign's redemptions divided by all orders), scores it, then learns it.
"""

from __future__ import annotations

from dataclasses import dataclass

from detector.config import CampaignRateRule, Config
from detector.rules.base import Finding


@dataclass(frozen=True, slots=True)
class RateObservation:
    campaign: str
    redemptions: float  # in the bucket
    orders: float  # all orders in the bucket
    recent: float  # the campaign's redemptions over the short window
    score: float
    expected_share: float
    warmed_up: bool

    @property
    def share(self) -> float:
        return self.redemptions / self.orders if self.orders > 0 else 0.0

    @property
    def ratio(self) -> float:
        return self.share / self.expected_share if self.expected_share > 0 else float("inf")


class CampaignRate:
    name = "campaign_rate"
    scope = "campaign"

    def evaluate(self, o: RateObservation, cfg_all: Config) -> Finding | None:
        cfg: CampaignRateRule = cfg_all.rule_for(self.name, o.campaign)
        # A model with too little history never raises anything.
        if not cfg.enabled or not o.warmed_up:
            return None
        if o.score < cfg.score_threshold or o.recent < cfg.min_redemptions:
            return None
        ratio = o.ratio
        if ratio < cfg.min_ratio:
            return None
        severity = cfg.severity
        if cfg.page_ratio is not None and ratio >= cfg.page_ratio:
            severity = "page"
        shown = f"{ratio:.1f}x" if ratio != float("inf") else "far above"
        return Finding(
            rule=self.name,
            scope="campaign",
            key=o.campaign,
            campaign=o.campaign,
            severity=severity,
            value=round(min(ratio, 1e9), 3),
            threshold=cfg.min_ratio,
            summary=f"campaign {o.campaign}: {o.redemptions:.0f} redemptions in the last bucket, "
            f"{o.share:.1%} of orders vs a learned {o.expected_share:.1%} ({shown}, score "
            f"{o.score:.3f}); check for a leaked code or an unannounced promotion.",
        )
