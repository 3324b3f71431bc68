"""Many fresh accounts redeeming one code from a few devices or IPs."""

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
        # Devices or IPs unknown (null) tell nothing; the tighter known one is the farm's size.
        sources = [n for n in (f.new_devices[w], f.new_ips[w]) if n > 0]
        if not sources:
            return None
        farm = min(sources)
        per_source = accounts / farm
        if per_source < cfg.min_accounts_per_device:
            return None
        win = window_label(ctx.cfg.windows.seconds(w))
        return Finding(
            rule=self.name,
            scope="code",
            key=f.entity.key,
            campaign=f.entity.campaign,
            severity=cfg.severity,
            value=round(per_source, 3),
            threshold=cfg.min_accounts_per_device,
            summary=f"code {f.entity.key}: {accounts} new accounts in {win} from only {farm} "
            f"devices/IPs ({per_source:.1f} accounts each); likely a bot farm: block the "
            f"devices/IPs and review the accounts.",
        )
