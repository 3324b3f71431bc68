"""A campaign's discount-to-total ratio far above its norm: a misconfigured discount."""

from __future__ import annotations

import math

from detector.config import Config, DiscountAnomalyRule
from detector.features.view import Features
from detector.rules.base import Finding, RuleContext


class DiscountAnomaly:
    name = "discount_anomaly"
    scope = "campaign"

    def least(self, cfg: Config) -> float:
        return 0.0  # campaigns are few: always evaluated

    def evaluate(self, f: Features, ctx: RuleContext) -> Finding | None:
        camp = f.entity.key
        cfg: DiscountAnomalyRule = ctx.cfg.rule_for(self.name, camp)
        if not cfg.enabled:
            return None
        recent = f.recent_ratios
        model = ctx.ratio_baseline(camp)
        if model is not None and model.warmed_up:
            mean, std = model.expected(), model.std()
            norm = f"its norm is {mean:.0%} (sd {std:.0%})"
            hit = _first_hit(recent, cfg, mean, std)
        else:
            norm = "no norm learned yet"
            j = cfg.min_redemptions + 1
            hit = None
            if len(recent) >= j and min(recent[:j]) >= cfg.absolute_ratio:
                hit = (j, sum(recent[:j]) / j, cfg.absolute_ratio)
        if hit is None:
            return None
        j, ratio, line = hit
        given = f.discount_sum.get("short", 0.0)
        return Finding(
            rule=self.name,
            scope="campaign",
            key=camp,
            campaign=camp,
            severity=cfg.severity,
            value=round(ratio, 4),
            threshold=round(line, 4),
            summary=f"campaign {camp}: its last {j} orders got discounts of {ratio:.0%} of their "
            f"value on average; {norm}; {given:,.0f} given in 10 min. Check the campaign's "
            f"discount setting.",
        )


def _first_hit(
    recent: list[float], cfg: DiscountAnomalyRule, mean: float, std: float
) -> tuple[int, float, float] | None:
    """The shortest run of latest orders whose mean ratio clears every line."""
    total = 0.0
    base = max(mean * cfg.min_factor, cfg.min_ratio)
    for j, r in enumerate(recent, start=1):
        total += r
        if j < cfg.min_redemptions:
            continue
        line = min(max(base, mean + cfg.min_sigmas * std / math.sqrt(j)), 1.0)
        if total / j >= line:
            return j, total / j, line
    return None
