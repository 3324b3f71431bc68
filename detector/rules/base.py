"""What a rule is: a condition over an entity's features that, when it holds, is a finding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from detector.config import Config, Severity
from detector.features.view import Features
from detector.models.discount import DiscountBaseline


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule's condition holds for ``key``: what was measured and the line it crossed."""

    rule: str
    scope: str
    key: str
    campaign: str | None
    severity: Severity
    value: float
    threshold: float | None
    summary: str


@dataclass(frozen=True, slots=True)
class RuleContext:
    cfg: Config
    # The learned discount-ratio norm of a campaign, if one is modelled.
    ratio_baseline: Callable[[str], DiscountBaseline | None]

    def kind(self, campaign: str | None) -> str | None:
        """The declared kind of a campaign, or None when it is not declared."""
        if campaign is None or campaign not in self.cfg.campaigns:
            return None
        return self.cfg.campaigns[campaign].kind


class Rule(Protocol):
    name: str
    scope: str

    def evaluate(self, f: Features, ctx: RuleContext) -> Finding | None:
        """The finding when the condition holds at ``f.t``, else None."""
        ...

    def least(self, cfg: Config) -> float:
        """The fewest distinct accounts (code rules) or codes (account rules) the entity has
        when the rule fires, under any campaign's overrides (inf when it cannot fire).

        The pipeline does not evaluate an entity whose sets are smaller than every rule's least
        (and that has no open episode): ``evaluate`` must return None below it.
        """
        ...


def variants(cfg: Config, rule: str) -> list[Any]:
    """The rule's config, and each one with a campaign's overrides applied."""
    return [getattr(cfg.rules, rule)] + [cfg.rule_for(rule, c) for c in cfg.campaigns]


def window_label(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds % 3600 == 0 else f"{seconds // 60} min"
