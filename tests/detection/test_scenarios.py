"""Detection quality over many simulated streams (issue 4's bar), never one tuned stream.

Each seed draws its own traffic shape, campaign sizes, incident rates and ramps from ranges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from detector.backtest.evaluate import evaluate

Replayed = tuple[list[Any], dict[str, Any], Any]

SEEDS = [1, 2, 3, 4, 5, 6]
# Clean days: those of SEEDS, and 129, where a family member uses the owner's personal code from
# the owner's home IP 16 h after the owner's use from home (tests/detection/test_households.py).
CLEAN_SEEDS = [100 + s for s in SEEDS] + [129]
# Latency budgets in event-time seconds from the truth's anchor (see docs/simulator.md); a bot
# farm's anchor is its start, slow farms included.
BUDGET_S = {"leak": 300, "slow_leak": 900, "bot_farm": 300, "discount_misconfig": 300}


@pytest.mark.slow
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_every_incident_pages_within_its_budget(
    seed: int, declared: bool, simulate_and_replay: Callable[..., Replayed]
) -> None:
    alerts, truth, _ = simulate_and_replay(seed, declared=declared, hours=36.0)
    ev = evaluate(alerts, truth)
    report = [(i.kind, i.detected, i.latency_s, i.rule, i.severity) for i in ev.incidents]
    for inc in ev.incidents:
        if inc.benign:
            continue
        assert inc.detected, f"missed {inc.kind}: {report}"
        if inc.kind in BUDGET_S:
            assert inc.severity == "page", f"{inc.kind} did not page: {report}"
            assert inc.latency_s is not None
            assert inc.latency_s <= BUDGET_S[inc.kind], f"{inc.kind} too slow: {report}"


@pytest.mark.slow
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
@pytest.mark.parametrize("seed", CLEAN_SEEDS)
def test_clean_days_with_a_flash_sale_and_a_launch_never_page(
    seed: int, declared: bool, simulate_and_replay: Callable[..., Replayed]
) -> None:
    alerts, truth, _ = simulate_and_replay(seed, declared=declared, hours=48.0, incidents=())
    ev = evaluate(alerts, truth)
    pages = [
        (a.rule, a.key, a.detected_at, a.summary) for a in ev.false_alerts if a.severity == "page"
    ]
    assert pages == []
    tickets = [a for a in ev.false_alerts if a.severity == "ticket"]
    assert len(tickets) / ev.days <= 1.0, [(a.rule, a.key, a.summary) for a in tickets]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_a_farm_reusing_no_device_in_its_first_minutes_pages_within_5_min_of_its_start(
    seed: int, simulate_and_replay: Callable[..., Replayed]
) -> None:
    # Ten devices and ten proxies for two accounts a minute: no device is shared before about
    # the tenth account, so only the accounts' freshness and their number give the farm away
    # that early. Seed 1's farm registered its accounts up to 5 h ahead, so only half are fresh:
    # at 143 s, 3 fresh of 6 new accounts is 1 in 5,800 by chance, as clean days show; 6 new
    # of 22 redeemers where 6 of 133 were new in the hour before makes it a page.
    farm = {"n_accounts": 60, "duration_min": 30.0, "n_devices": 10, "n_ips": 10}
    alerts, truth, _ = simulate_and_replay(
        seed,
        hours=24.0,
        incidents=("bot_farm",),
        incident_overrides={"bot_farm": farm},
    )
    (inc,) = [i for i in evaluate(alerts, truth).incidents if i.kind == "bot_farm"]
    assert inc.detected and inc.severity == "page", inc
    assert inc.latency_s is not None and inc.latency_s <= 300, inc
