"""Many fresh accounts redeeming one code from a few devices."""

from __future__ import annotations

from detector.config import BotFarmRule
from detector.features.view import Features
from detector.rules.base import Finding, RuleContext, window_label


class BotFarm:
    name = "bot_farm"
    scope = "code"

    def evaluate(self, f: Features, ctx: RuleContext) -> Finding | None:
        cfg: BotFarmRule = ctx.cfg.rule_for(self.name, f.entity.campaign)
        if not cfg.enabled:
            return None
        w = cfg.window
        accounts = f.new_accounts[w]
        if accounts < cfg.min_new_accounts:
            return None
        # Unknown devices (null) say nothing: fall back to IPs only then.
        farm, what = (f.new_devices[w], "devices") if f.new_devices[w] else (f.new_ips[w], "IPs")
        if farm == 0 or accounts - farm < cfg.min_extra_accounts:
            return None
        win = window_label(ctx.cfg.windows.seconds(w))
        return Finding(
            rule=self.name,
            scope="code",
            key=f.entity.key,
            campaign=f.entity.campaign,
            severity=cfg.severity,
            value=round(accounts / farm, 3),
            threshold=None,
            summary=f"code {f.entity.key}: {accounts} new accounts in {win} from only {farm} "
            f"{what} ({accounts / farm:.1f} accounts each); likely a bot farm: block the "
            f"{what} and review the accounts.",
        )
