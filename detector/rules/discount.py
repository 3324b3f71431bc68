"""A campaign's discount far above its norm: a misconfigured discount.

The norm is the campaign's discount-to-total ratio, or its amount when every order gets the same
amount off (a fixed-amount campaign's ratio varies with the order's size, its amount does not).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from detector.config import Config, DiscountAnomalyRule
from detector.features.view import Features
from detector.models.discount import DiscountBaseline
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
        if model is not None and fixed is not None:
            # The same amount off every order: only the amount can tell a changed setting from
            # a small order (whose ratio is high by nature).
            amounts = [a for _, a in recent]
            least = 1 if model.fixed_amount(cfg.exact_cv) is not None else cfg.min_redemptions
            hit = _first_hit(amounts, least, lambda j: fixed * cfg.min_factor)
            what, norm = "{:,.2f}", f"its norm is a fixed {fixed:,.2f} per order"
            if hit is None:
                # A raised amount is capped by the order's value: a free order shows it in its
                # ratio, once its amount is above the setting (a small order's is not).
                above = next(
                    (j for j, a in enumerate(amounts) if a <= fixed * (1 + cfg.fixed_amount_cv)),
                    len(amounts),
                )
                hit = _ratio_hit(ratios[:above], least, model, cfg)
                if hit is not None:
                    what = "{:.0%} of the order value"
                    norm += f" ({model.expected():.0%} of the order value, sd {model.std():.0%})"
        elif model is not None and model.warmed_up:
            norm = f"its norm is {model.expected():.0%} (sd {model.std():.0%})"
            least = 1 if model.exact_ratio(cfg.exact_cv) else cfg.min_redemptions
            hit = _ratio_hit(ratios, least, model, cfg)
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


def _ratio_hit(
    ratios: list[float], least: int, model: DiscountBaseline, cfg: DiscountAnomalyRule
) -> tuple[int, float, float] | None:
    """``_first_hit`` on ratios against the learned norm: ``min_factor`` times it, ``min_sigmas``
    standard errors above it and at least ``min_ratio`` (at most 1, a free order)."""
    mean, std = model.expected(), model.std()
    base = max(mean * cfg.min_factor, cfg.min_ratio)
    return _first_hit(
        ratios, least, lambda j: min(max(base, mean + cfg.min_sigmas * std / math.sqrt(j)), 1.0)
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
