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
        # On a busy code a few fresh ones among many new ones are chance: the binomial tail says
        # how unlikely they are (3 of 9 is 1 in 1,400 at 2%; 3 of 3 is 1 in 110,000). A farm
        # also brings more newcomers than the code had in the hour before; a flash sale brings
        # old and new customers alike. Both tests together (Fisher's method) are one p-value.
        fresh = f.fresh_accounts[w]
        if (
            fresh >= cfg.min_fresh_accounts
            and fresh >= cfg.min_fresh_share * accounts
            and personal_norm(f, ctx) is None
        ):
            wins = ctx.cfg.windows
            share = cfg.expected_fresh_share or wins.fresh_account_age_s / wins.new_account_age_s
            p_fresh = binomial_tail(fresh, accounts, share)
            p_new, before = newcomer_surprise(f, w, window_label(wins.long_s))
            p = fisher(p_fresh, p_new)
            # Accounts beyond one per device or per IP, whichever is fewer: a farm's few proxies.
            shared = accounts - min(f.new_devices[w] or accounts, f.new_ips[w] or accounts)
            if p > cfg.max_fresh_pvalue and not (
                p <= cfg.max_fresh_pvalue_shared and shared >= cfg.min_shared_accounts
            ):
                return None
            age = window_label(int(wins.fresh_account_age_s))
            also = f", {shared} of them on a device or IP of another" if shared else ""
            return self._finding(
                f,
                cfg,
                value=float(fresh),
                threshold=float(cfg.min_fresh_accounts),
                summary=f"code {f.entity.key}: {fresh} accounts registered less than {age} "
                f"before their order redeemed it in {win} ({fresh} of {accounts} new "
                f"accounts{also}; {before}; "
                f"{odds(p)} by chance if {share:.1%} of new accounts were that fresh and "
                f"newcomers came as before); likely a bot farm starting: review the accounts "
                f"and their devices and IPs.",
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


def newcomer_surprise(f: Features, w: str, long_label: str) -> tuple[float, str]:
    """How unlikely the code's new accounts among its redeemers in window ``w`` are, given its
    share of newcomers before (in the ``long`` window, outside ``w``), and both shares in words.

    The share is uncertain when the hour had few redeemers: a beta-binomial tail with a uniform
    prior, so a code with no history says nothing (a launch) and one with little says little.
    """
    new_now = f.new_accounts[w]
    # Never fewer redeemers than newcomers, whichever set dropped a member.
    redeemers = max(f.accounts[w], new_now)
    now = f"{new_now} of its {redeemers} redeemers new"
    if w == "long":
        return 1.0, f"{now}, no window before to compare"
    if "long" not in f.new_accounts:
        return 1.0, f"{now}, too many in the {long_label} before to compare"
    new_before = max(f.new_accounts["long"] - new_now, 0)
    all_before = max(f.accounts["long"] - f.accounts[w], new_before)
    p = beta_binomial_tail(new_now, redeemers, new_before + 1.0, all_before - new_before + 1.0)
    return p, f"{now}, {new_before} of {all_before} in the {long_label} before"


def fisher(p1: float, p2: float) -> float:
    """Fisher's combination of two independent p-values: P(chi2 with 4 df >= -2 ln(p1 p2))."""
    q = p1 * p2
    return q * (1 - math.log(q)) if q > 0 else 0.0


def beta_binomial_tail(k: int, n: int, a: float, b: float) -> float:
    """P(X >= k) for X ~ BetaBinomial(n, a, b): a binomial whose rate is known as Beta(a, b)."""
    if k <= 0:
        return 1.0
    lb = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    ln = math.lgamma(n + 1)
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(
            ln
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + math.lgamma(i + a)
            + math.lgamma(n - i + b)
            - math.lgamma(n + a + b)
            - lb
        )
    return min(total, 1.0)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p). Terms in log space: a farm of thousands of accounts
    would overflow ``comb(n, k)`` as a float, and a first term that underflows may still be
    followed by large ones when k is below the mean."""
    if p >= 1 or k <= 0:
        return 1.0
    lp, lq, ln = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    total = 0.0
    for i in range(k, n + 1):
        term = math.exp(ln - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
        total += term
        if i > n * p and term <= total * 1e-17:
            break  # past the mode the terms only shrink
    return min(total, 1.0)


def odds(p: float) -> str:
    """'1 in 46,000' for 2.2e-5: two significant figures, read at a glance."""
    if p <= 1e-9:
        return "under 1 in a billion"
    return f"1 in {float(f'{1 / p:.2g}'):,.0f}"
