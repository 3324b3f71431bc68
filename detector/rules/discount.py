"""A campaign's discount-to-total ratio far above its norm: a misconfigured discount."""

from __future__ import annotations

from detector.config import DiscountAnomalyRule
from detector.features.view import Features
from detector.rules.base import Finding, RuleContext, window_label


class DiscountAnomaly:
    name = "discount_anomaly"
    scope = "campaign"

    def evaluate(self, f: Features, ctx: RuleContext) -> Finding | None:
        camp = f.entity.key
        cfg: DiscountAnomalyRule = ctx.cfg.rule_for(self.name, camp)
        if not cfg.enabled:
            return None
        n = f.ratio_n[cfg.window]
        if n < cfg.min_redemptions:
            return None
        mean = f.ratio_sum[cfg.window] / n
        model = ctx.ratio_baseline(camp)
        norm: float | None = None
        if model is not None and model.warmed_up:
            norm = model.expected()
        line = cfg.absolute_ratio
        if norm is not None:
            line = min(line, max(norm * cfg.min_factor, cfg.min_ratio))
        if mean < line:
            return None
        win = window_label(ctx.cfg.windows.seconds(cfg.window))
        spent = f.discount_sum[cfg.window]
        was = f"its norm is {norm:.0%}" if norm is not None else "no norm learned yet"
        return Finding(
            rule=self.name,
            scope="campaign",
            key=camp,
            campaign=camp,
            severity=cfg.severity,
            value=round(mean, 4),
            threshold=round(line, 4),
            summary=f"campaign {camp}: discounts average {mean:.0%} of order value over "
            f"{n:.0f} orders in {win} ({spent:,.0f} spent); {was}. Check the campaign's "
            f"discount setting.",
        )
