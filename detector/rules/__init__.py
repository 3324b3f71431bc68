"""Fraud-team rules. Event-driven rules by scope; ``campaign_rate`` runs on closed buckets."""

from detector.rules.account_stacking import AccountStacking
from detector.rules.base import Finding, Rule, RuleContext
from detector.rules.bot_farm import BotFarm
from detector.rules.campaign_rate import CampaignRate, RateObservation
from detector.rules.code_shared import CodeShared
from detector.rules.discount import DiscountAnomaly

EVENT_RULES: dict[str, tuple[Rule, ...]] = {
    "code": (CodeShared(), BotFarm()),
    "account": (AccountStacking(),),
    "campaign": (DiscountAnomaly(),),
}

# Every rule name an alert can carry, including the lifecycle's own summary alert.
RULE_NAMES = (
    "code_shared",
    "bot_farm",
    "account_stacking",
    "discount_anomaly",
    "campaign_rate",
    "alert_cap",
)

__all__ = [
    "EVENT_RULES",
    "RULE_NAMES",
    "CampaignRate",
    "Finding",
    "RateObservation",
    "Rule",
    "RuleContext",
]
