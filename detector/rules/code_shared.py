"""A personal code redeemed by several distinct accounts: the 2013 leak."""

from __future__ import annotations

import math

from detector.config import CodeSharedRule, Config
from detector.features.view import Features
from detector.rules.base import Finding, RuleContext, variants, window_label
from detector.state.keys import standalone_campaign


def personal_norm(f: Features, ctx: RuleContext) -> str | None:
    """Why the code's campaign is personal (declared, or learned from the stream), or None."""
    code, camp = f.entity.key, f.entity.campaign
    kind = ctx.kind(camp)
    if kind == "public":
        return None
    if kind is not None:
        return f"campaign {camp} is declared personal: 1 account per code"
    # Undeclared: personal only once learned from the stream. A code on its own, or a young
    # campaign with a single popular code, is a public launch, not a leak.
    if camp is None or camp == standalone_campaign(code):
        return None
    cfg: CodeSharedRule = ctx.cfg.rule_for("code_shared", camp)
    # The code under test is left out: its own sharing must not unlearn its campaign.
    others = f.campaign_codes - 1
    shared = max(f.campaign_shared_codes - (1 if f.accounts["memory"] >= 2 else 0), 0)
    if others < cfg.learn_min_codes or shared > cfg.learn_max_shared_fraction * others:
        return None
    return (
        f"campaign {camp} looks personal: {others - shared} of its {others} other codes "
        f"recently used have 1 account"
    )


class CodeShared:
    name = "code_shared"
    scope = "code"

    def least(self, cfg: Config) -> float:
        fewest = [
            min(c.min_accounts, 2) if c.second_household else c.min_accounts
            for c in variants(cfg, self.name)
            if c.enabled
        ]
        return min(fewest, default=math.inf)

    def evaluate(self, f: Features, ctx: RuleContext) -> Finding | None:
        code, camp = f.entity.key, f.entity.campaign
        cfg: CodeSharedRule = ctx.cfg.rule_for(self.name, camp)
        if not cfg.enabled:
            return None
        norm = personal_norm(f, ctx)
        if norm is None:
            return None
        w = cfg.window
        accounts = f.accounts[w]
        # Checked in this order so that accounts are linked into households (the costly part)
        # only for a personal code with 2+ accounts.
        if accounts < 2 or (accounts < cfg.min_accounts and not cfg.second_household):
            return None
        households = f.households(w)
        if accounts < cfg.min_accounts and households < 2:
            return None
        win = window_label(ctx.cfg.windows.seconds(w))
        return Finding(
            rule=self.name,
            scope="code",
            key=code,
            campaign=camp,
            severity=cfg.severity,
            value=float(accounts),
            # Below min_accounts it fired on a second household: that is the line it crossed.
            threshold=float(cfg.min_accounts if accounts >= cfg.min_accounts else 2),
            summary=f"personal code {code} used by {accounts} accounts ({f.devices[w]} devices, "
            f"{f.ips[w]} IPs, {households} households) in {win}; {norm}. Likely leaked: suspend "
            f"the code.",
        )
