"""RateModel's behaviour on synthetic redemption streams (one value per 1-minute bucket)."""

from __future__ import annotations

import math
import random

import pytest

from detector.models.rate import WARMUP, RateModel

MIDNIGHT = 1_699_920_000.0  # a midnight (local-time seconds since the epoch)
MINUTE = 60.0


def poisson(rng: random.Random, lam: float) -> float:
    if lam < 30:
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                return float(k)
            k += 1
    return float(max(0, round(rng.gauss(lam, math.sqrt(lam)))))


def run(model: RateModel, values: list[float], t0: float = MIDNIGHT) -> list[float]:
    scores = []
    for i, v in enumerate(values):
        x = {"value": v, "t": t0 + MINUTE * i}
        scores.append(model.score_one(x))
        model.learn_one(x)
    return scores


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


@pytest.mark.parametrize("lam", [3.0, 20.0, 200.0])
@pytest.mark.parametrize("seed", range(4))
def test_sustained_5x_jump_scores_above_0_9_within_a_few_intervals_and_stationary_stays_low(
    lam: float, seed: int
) -> None:
    rng = random.Random(seed)
    onset = 2500
    values = [poisson(rng, lam if i < onset else 5 * lam) for i in range(onset + 200)]
    scores = run(RateModel(), values)
    stationary = scores[WARMUP:onset]
    assert quantile(stationary, 0.99) < 0.35
    assert sum(s >= 0.5 for s in stationary) <= 0.005 * len(stationary)
    assert max(scores[onset : onset + 5]) > 0.9


@pytest.mark.parametrize("seed", range(3))
def test_daily_seasonal_peaks_do_not_score_high_once_a_few_days_are_learned(seed: int) -> None:
    # Quiet nights (~10/min), a lunch bump (+30) and an evening peak (+90, 10x the night).
    def bump(h: float, centre: float, width: float) -> float:
        return math.exp(-0.5 * ((h - centre) / width) ** 2)

    def lam(minute: int) -> float:
        h = (minute % 1440) / 60
        return 10 + 90 * bump(h, 19, 1.5) + 30 * bump(h, 12, 1.0)

    rng = random.Random(seed)
    days = 6
    values = [poisson(rng, lam(i)) for i in range(days * 1440)]
    model = RateModel()
    scores = run(model, values)
    for day in range(3, days):
        today = scores[day * 1440 : (day + 1) * 1440]
        peaks = [s for i, s in enumerate(today) if 660 <= i <= 780 or 1020 <= i <= 1260]
        assert max(peaks) < 0.4, day
        assert max(today) < 0.5, day
    # The learned profile follows the peak, and a 5x surge at night (inside the range of values
    # seen at the peaks, so no "spatial" 1.0) is still flagged red (q <= 1e-5: score >= 0.5).
    assert model.expected() == pytest.approx(lam(days * 1440 - 1), rel=0.35)
    night = days * 1440 + 3 * 60
    surge = run(model, [poisson(rng, 5 * lam(night + i)) for i in range(5)], MIDNIGHT + night * 60)
    assert max(surge) >= 0.5


@pytest.mark.parametrize("factor", [2.0, 5.0, 0.3])
@pytest.mark.parametrize("seed", range(4))
def test_legitimate_level_shift_stops_alarming_within_a_bounded_number_of_intervals(
    factor: float, seed: int
) -> None:
    # River's StandardAbsoluteDeviation keeps a cumulative mean/variance, so after a shift its
    # score stays high for thousands of intervals; here the score must settle within 50 and
    # then look like the stationary stream again.
    rng = random.Random(seed)
    shift = 2000
    values = [poisson(rng, 20 if i < shift else 20 * factor) for i in range(shift + 3000)]
    scores = run(RateModel(), values)
    after = scores[shift + 50 :]
    assert quantile(after, 0.5) < 0.2
    assert quantile(after, 0.99) < 0.4
    assert sum(s >= 0.5 for s in after) <= 0.005 * len(after)


@pytest.mark.parametrize("value", [0.0, 7.0, 3.25, -4.0, 1e9])
def test_flat_input_never_scores_one(value: float) -> None:
    scores = run(RateModel(), [value] * 3000)
    assert max(scores) < 0.5
    assert all(s < 1.0 for s in scores)


def test_works_without_timestamps() -> None:
    rng = random.Random(1)
    model = RateModel()
    scores = []
    for i in range(2200):
        x = {"value": poisson(rng, 20 if i < 2000 else 100)}
        scores.append(model.score_one(x))
        model.learn_one(x)
    assert quantile(scores[WARMUP:2000], 0.99) < 0.35
    assert max(scores[2000:2005]) > 0.9


def test_expected_and_band_bracket_the_typical_count() -> None:
    rng = random.Random(2)
    model = RateModel()
    run(model, [poisson(rng, 40) for _ in range(1000)])
    lo, hi = model.band()
    assert lo < model.expected() < hi
    assert model.expected() == pytest.approx(40, rel=0.15)
    assert lo < 40 < hi and hi - lo < 60


@pytest.mark.parametrize("seed", range(3))
def test_onset_is_reported_once_but_sustained_score_holds_while_the_jump_is_new(seed: int) -> None:
    # score_one reports an incident at its onset (Numenta's red-to-yellow demotion: later red
    # intervals show 0.3); sustained_score_one stays high while the jump is still improbable,
    # then settles once the new level is learned.
    rng = random.Random(seed)
    model = RateModel()
    onset = 2500
    scores, sustained = [], []
    for i in range(onset + 300):
        x = {"value": poisson(rng, 20 if i < onset else 100), "t": MIDNIGHT + MINUTE * i}
        scores.append(model.score_one(x))
        sustained.append(model.sustained_score_one(x))
        model.learn_one(x)
    assert max(scores[onset : onset + 3]) > 0.9
    assert all(s <= 0.3 + 1e-9 for s in scores[onset + 3 : onset + 30])
    assert min(sustained[onset : onset + 30]) >= 0.5  # red throughout
    assert max(sustained[onset + 150 :]) < 0.5
