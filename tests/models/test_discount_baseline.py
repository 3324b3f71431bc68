"""DiscountBaseline's amount norm: which campaigns give a fixed amount off every order."""

from __future__ import annotations

import json
import random

from detector.models.discount import DiscountBaseline


def learned(amount_of: str, buckets: int = 60, seed: int = 0) -> DiscountBaseline:
    """A campaign's model after ``buckets`` closed buckets of 5 orders each, lognormal totals,
    ``fixed`` 200 off or ``percent`` 10% off."""
    rng = random.Random(seed)
    m = DiscountBaseline()
    for _ in range(buckets):
        totals = [3600 * rng.lognormvariate(0, 0.7) for _ in range(5)]
        amounts = [200.0 if amount_of == "fixed" else 0.1 * t for t in totals]
        ratios = [a / t for a, t in zip(amounts, totals, strict=True)]
        m.learn_one(
            {
                "value": sum(ratios) / 5,
                "weight": 5,
                "m2": sum(r * r for r in ratios) / 5,
                "amount": sum(amounts) / 5,
                "amount_m2": sum(a * a for a in amounts) / 5,
            }
        )
    return m


def test_a_campaign_giving_the_same_amount_off_every_order_has_a_fixed_amount() -> None:
    fixed = learned("fixed").fixed_amount(0.05)
    assert fixed is not None and abs(fixed - 200.0) < 1e-6


def test_a_percentage_campaign_has_no_fixed_amount() -> None:
    assert learned("percent").fixed_amount(0.05) is None


def test_a_zero_cv_judges_every_campaign_by_ratio() -> None:
    assert learned("fixed").fixed_amount(0.0) is None


def test_no_fixed_amount_before_the_norm_is_warmed_up() -> None:
    assert learned("fixed", buckets=2).fixed_amount(0.05) is None


def test_the_amount_norm_survives_a_snapshot() -> None:
    m = learned("fixed")
    again = DiscountBaseline.restore(m.snapshot())
    assert again.fixed_amount(0.05) == m.fixed_amount(0.05)
    assert again.snapshot() == m.snapshot()


def test_a_snapshot_from_before_amounts_keeps_its_ratio_norm_and_learns_amounts_afresh() -> None:
    m = learned("fixed")
    old = json.dumps(json.loads(m.snapshot())[:4]).encode()  # the four-value format
    again = DiscountBaseline.restore(old)
    assert (again.expected(), again.std(), again.warmed_up) == (m.expected(), m.std(), True)
    assert again.fixed_amount(0.05) is None


def test_a_percentage_campaign_gives_an_exact_ratio_and_a_fixed_amount_campaign_does_not() -> None:
    assert learned("percent").exact_ratio(0.01)
    assert not learned("fixed").exact_ratio(0.01)  # 200 off: the ratio follows the order size
    assert not learned("percent").exact_ratio(0.0)  # 0 turns the single-order test off
    assert not learned("percent", buckets=2).exact_ratio(0.01)  # not before warm-up
