"""One account redeeming many distinct codes: harvested personal codes."""

from __future__ import annotations

import math

from detector.config import AccountStackingRule, Config
from detector.features.view import Features
from detector.rules.base import Finding, RuleContext, variants, window_label


class AccountStacking:
    name = "account_stacking"
    scope = "account"

    def least(self, cfg: Config) -> float:
        fewest = [c.min_codes for c in variants(cfg, self.name) if c.enabled]
        return min(fewest, default=math.inf)

    def evaluate(self, f: Features, ctx: RuleContext) -> Finding | None:
        cfg: AccountStackingRule = ctx.cfg.rules.account_stacking
        if not cfg.enabled:
            return None
        codes = f.codes[cfg.window]
        if codes < cfg.min_codes:
            return None
        win = window_label(ctx.cfg.windows.seconds(cfg.window))
        camp = f.top_campaign[cfg.window]
        return Finding(
            rule=self.name,
            scope="account",
            key=f.entity.key,
            campaign=camp,
            severity=cfg.severity,
            value=float(codes),
            threshold=float(cfg.min_codes),
            summary=f"account {f.entity.key} redeemed {codes} distinct codes of campaign {camp} "
            f"in {win}; likely harvested personal codes: hold its orders and review.",
        )
