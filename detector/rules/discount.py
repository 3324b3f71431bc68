"""A campaign's discount far above its norm: a misconfigured discount.

The norm is the campaign's discount-to-total ratio, or its amount when every order gets the same
amount off (a fixed-amount campaign's ratio varies with the order's size, its amount does not).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
        recent = f.recent_discounts
        ratios = [r for r, _ in recent]
        model = ctx.ratio_baseline(camp)
        fixed = model.fixed_amount(cfg.fixed_amount_cv) if model is not None else None
        what = "{:.0%} of the order value"
        if fixed is not None:
            # The same amount off every order: only the amount can tell a changed setting from
            # a small order (whose ratio is high by nature).
            norm = f"its norm is a fixed {fixed:,.2f} per order"
            amounts = [a for _, a in recent]
            least = fixed * cfg.min_factor
            exact = model is not None and model.fixed_amount(cfg.exact_cv) is not None
            hit = _first_hit(amounts, 1 if exact else cfg.min_redemptions, lambda j: least)
            what = "{:,.2f}"
        elif model is not None and model.warmed_up:
            mean, std = model.expected(), model.std()
            norm = f"its norm is {mean:.0%} (sd {std:.0%})"
            base = max(mean * cfg.min_factor, cfg.min_ratio)
            exact = model.exact_ratio(cfg.exact_cv)
            hit = _first_hit(
                ratios,
                1 if exact else cfg.min_redemptions,
                lambda j: min(max(base, mean + cfg.min_sigmas * std / math.sqrt(j)), 1.0),
            )
        else:
            norm = "no norm learned yet"
            j = cfg.min_redemptions + 1
            hit = None
            if len(ratios) >= j and min(ratios[:j]) >= cfg.absolute_ratio:
                hit = (j, sum(ratios[:j]) / j, cfg.absolute_ratio)
        if hit is None:
            return None
        j, value, line = hit
        given = f.discount_sum.get("short", 0.0)
        shown = what.format(value)
        got = (
            f"its last {j} orders got discounts of {shown} on average"
            if j > 1
            else f"its last order got a discount of {shown}"
        )
        return Finding(
            rule=self.name,
            scope="campaign",
            key=camp,
            campaign=camp,
            severity=cfg.severity,
            value=round(value, 4),
            threshold=round(line, 4),
            summary=f"campaign {camp}: {got}; {norm}; {given:,.0f} given in 10 min. Check the "
            "campaign's discount setting.",
        )


def _first_hit(
    recent: list[float], least: int, line: Callable[[int], float]
) -> tuple[int, float, float] | None:
    """The shortest run of at least ``least`` latest orders whose mean clears ``line(run)``."""
    total = 0.0
    for j, r in enumerate(recent, start=1):
        total += r
        if j >= least and total / j >= line(j):
            return j, total / j, line(j)
    return None
