"""Many new accounts redeeming one code from a few devices, or a burst of fresh accounts on it."""

from __future__ import annotations

import math

from detector.config import BotFarmRule, Config
from detector.features.view import Features
from detector.rules.base import Finding, RuleContext, variants, window_label
from detector.rules.code_shared import personal_norm


class BotFarm:
    name = "bot_farm"
    scope = "code"

    def least(self, cfg: Config) -> float:
        # Fresh accounts are new ones, and new ones are accounts of the code.
        fewest = [
            min(c.min_new_accounts, c.min_fresh_accounts)
            for c in variants(cfg, self.name)
            if c.enabled
        ]
        return min(fewest, default=math.inf)

    def evaluate(self, f: Features, ctx: RuleContext) -> Finding | None:
        cfg: BotFarmRule = ctx.cfg.rule_for(self.name, f.entity.campaign)
        if not cfg.enabled:
            return None
        w = cfg.window
        win = window_label(ctx.cfg.windows.seconds(w))
        accounts = f.new_accounts[w]
        # Unknown devices (null) say nothing: fall back to IPs only then.
        farm, what = (f.new_devices[w], "devices") if f.new_devices[w] else (f.new_ips[w], "IPs")
        if accounts >= cfg.min_new_accounts and farm and accounts - farm >= cfg.min_extra_accounts:
            return self._finding(
                f,
                cfg,
                value=round(accounts / farm, 3),
                threshold=None,
                summary=f"code {f.entity.key}: {accounts} new accounts in {win} from only {farm} "
                f"{what} ({accounts / farm:.1f} accounts each); likely a bot farm: block the "
                f"{what} and review the accounts.",
            )
        # A slow farm reuses no device in its first minutes, but its accounts were registered
        # just before their orders; legitimate new customers registered any time that day. On a
        # personal code, strangers registering to use it are a leak: code_shared pages that.
        fresh = f.fresh_accounts[w]
        if (
            fresh >= cfg.min_fresh_accounts
            and fresh >= cfg.min_fresh_share * accounts
            and personal_norm(f, ctx) is None
        ):
            age = window_label(int(ctx.cfg.windows.fresh_account_age_s))
            return self._finding(
                f,
                cfg,
                value=float(fresh),
                threshold=float(cfg.min_fresh_accounts),
                summary=f"code {f.entity.key}: {fresh} accounts registered less than {age} "
                f"before their order redeemed it in {win} ({fresh} of {accounts} new accounts); "
                f"likely a bot farm starting: review the accounts and their devices and IPs.",
            )
        return None

    def _finding(
        self, f: Features, cfg: BotFarmRule, value: float, threshold: float | None, summary: str
    ) -> Finding:
        return Finding(
            rule=self.name,
            scope="code",
            key=f.entity.key,
            campaign=f.entity.campaign,
            severity=cfg.severity,
            value=value,
            threshold=threshold,
            summary=summary,
        )
