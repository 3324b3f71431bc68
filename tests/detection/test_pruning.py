"""Entities below every rule's least are not evaluated, and that never changes an alert.

Each stream is replayed twice: as is (codes and accounts whose sets are too small to fire are
pruned) and with an observer attached (an observer sees every entity, so nothing is pruned).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from detector.app import replay
from detector.config import Config, load_config
from detector.features.view import Features
from detector.pipeline import Stats
from detector.rules import RateObservation
from detector.simulate.scenario import ScenarioParams, generate, write_jsonl


class _Watcher:
    """Turns pruning off."""

    sees_every_entity = True

    def __init__(self) -> None:
        self.seen = 0

    def features(self, f: Features) -> None:
        self.seen += 1

    def campaign_bucket(
        self, start: float, obs: RateObservation, band: tuple[float, float]
    ) -> None:
        return None

    def batch(self, stats: Stats) -> None:
        return None


def _replay(cfg: Config, events: Path, out: Path, **kw: Any) -> tuple[list[bytes], Stats]:
    out.unlink(missing_ok=True)
    stats = replay(cfg, str(events), alerts_out=str(out), **kw)
    return out.read_bytes().splitlines(), stats


def _both(
    tmp_path: Path,
    seed: int,
    over: dict[str, Any],
    campaign_rules: dict[str, Any] | None = None,
    backend: str = "memory",
    hours: float = 12.0,
) -> None:
    """``campaign_rules``: overrides for the stream's first campaign."""
    sc = generate(ScenarioParams.from_seed(seed, hours=hours, warmup_h=6.0))
    events = tmp_path / f"events-{seed}.jsonl"
    write_jsonl(sc.events, events)
    camps: dict[str, Any] = {c: {"kind": k} for c, k in sc.campaigns.items()}
    if campaign_rules is not None:
        first = sorted(camps)[0]
        camps[first] = {**camps[first], "rules": campaign_rules}
    cfg = load_config(None, {"campaigns": camps, **over})
    pruned, stats = _replay(cfg, events, tmp_path / "pruned.jsonl", backend=backend)
    if backend == "redis":  # the second replay starts from an empty state too
        cfg = cfg.model_copy(
            update={
                "redis": cfg.redis.model_copy(update={"key_prefix": cfg.redis.key_prefix + "f:"})
            }
        )
    full, full_stats = _replay(
        cfg, events, tmp_path / "full.jsonl", backend=backend, observer=_Watcher()
    )
    assert stats.pruned > 0, "nothing was pruned: the comparison proves nothing"
    assert full_stats.pruned == 0
    assert pruned == full
    assert full, "the stream raised no alert: the comparison proves nothing"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 9))
def test_pruning_raises_the_same_alerts_as_evaluating_every_entity(
    tmp_path: Path, seed: int
) -> None:
    _both(tmp_path, seed, {})


LOW_LINES: dict[str, Any] = {
    "code_shared": {"min_accounts": 2, "second_household": False},
    "bot_farm": {"min_new_accounts": 2, "min_fresh_accounts": 2, "min_extra_accounts": 1},
    "account_stacking": {"min_codes": 2},
}
HIGH_LINES: dict[str, Any] = {
    "code_shared": {"min_accounts": 6, "second_household": False},
    "bot_farm": {"min_new_accounts": 9, "min_fresh_accounts": 7},
    "account_stacking": {"min_codes": 9},
}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_pruning_follows_the_configured_lines_and_campaign_overrides(
    tmp_path: Path, seed: int
) -> None:
    _both(tmp_path, seed, {"rules": LOW_LINES})
    _both(tmp_path, seed, {"rules": HIGH_LINES})
    # High lines, but one campaign's code rules lowered: its codes are evaluated from 2 accounts.
    low_code = {r: LOW_LINES[r] for r in ("code_shared", "bot_farm")}
    _both(tmp_path, seed, {"rules": HIGH_LINES}, campaign_rules=low_code)


@pytest.mark.stack
def test_pruning_in_redis_raises_the_same_alerts_as_evaluating_every_entity(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    _both(
        tmp_path,
        3,
        {"redis": {"url": redis_url, "key_prefix": redis_prefix}},
        backend="redis",
        hours=8.0,
    )


class _Timer(_Watcher):
    """Only times batches, as the bench does."""

    sees_every_entity = False


def test_an_observer_that_only_times_batches_sees_the_pipeline_as_it_runs_without_one(
    tmp_path: Path,
) -> None:
    sc = generate(ScenarioParams.from_seed(5, hours=8.0, warmup_h=6.0))
    events = tmp_path / "events.jsonl"
    write_jsonl(sc.events, events)
    cfg = load_config(None, {})
    _, bare = _replay(cfg, events, tmp_path / "bare.jsonl")
    timer, watcher = _Timer(), _Watcher()
    _, timed = _replay(cfg, events, tmp_path / "timed.jsonl", observer=timer)
    _, full = _replay(cfg, events, tmp_path / "full.jsonl", observer=watcher)
    assert timed.pruned == bare.pruned > 0
    assert full.pruned == 0
    # Pruned entities are not read at all: the timer sees fewer figures than the watcher.
    assert watcher.seen - timer.seen == bare.pruned
