"""The contract every online model follows (run over each class in ``ALL_MODELS``)."""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river.base import AnomalyDetector

from detector.models import ALL_MODELS
from detector.models.base import OnlineModel

T0 = 1_700_000_000.0  # seconds; buckets of one minute

models = pytest.mark.parametrize("cls", ALL_MODELS, ids=lambda c: c.__name__)


def make(cls: type[Any], seed: int = 0) -> Any:
    """A fresh model; ``seed`` is passed where the class takes one (none is random today)."""
    return cls(seed=seed) if "seed" in inspect.signature(cls).parameters else cls()


def stream(n: int, kind: str, seed: int = 0, start: int = 0) -> Iterator[dict[str, float]]:
    """Counts (with an occasional burst) or ratios in [0, 1], one per minute."""
    rng = random.Random(seed)
    for i in range(start, start + n):
        if kind == "count":
            v = float(rng.randint(5, 15) + (40 if i % 97 == 0 else 0))
            yield {"value": v, "t": T0 + 60.0 * i}
        else:
            v = 0.2 + 0.05 * rng.random() + (0.4 if i % 89 == 0 else 0.0)
            # Ratios come with their orders' discount amounts (DiscountBaseline learns both).
            a = 1000.0 * v
            yield {"value": v, "amount": a, "amount_m2": a * a, "t": T0 + 60.0 * i}


def feed(model: Any, xs: Iterator[dict[str, float]]) -> list[float]:
    out = []
    for x in xs:
        out.append(model.score_one(x))
        model.learn_one(x)
    return out


def in_unit(s: float) -> bool:
    return isinstance(s, float) and math.isfinite(s) and 0.0 <= s <= 1.0


@models
def test_is_a_river_anomaly_detector_following_the_protocol(cls: type[Any]) -> None:
    m = make(cls)
    assert isinstance(m, AnomalyDetector)
    assert isinstance(m, OnlineModel)


@models
def test_input_dict_is_not_mutated(cls: type[Any]) -> None:
    m = make(cls)
    for x in [
        {"value": 3.0, "t": T0, "extra": "kept"},
        {"value": float("nan"), "t": T0 + 60},
        {"t": T0 + 120},
        {"value": 1e12},
    ]:
        before = repr(x)
        m.score_one(x)
        m.learn_one(x)
        m.score_one(x)
        assert repr(x) == before


@models
@pytest.mark.parametrize("kind", ["count", "ratio"])
def test_snapshot_round_trip_gives_identical_scores_on_a_continuing_stream(
    cls: type[Any], kind: str
) -> None:
    a = make(cls)
    feed(a, stream(700, kind))
    data = a.snapshot()
    assert isinstance(data, bytes)
    b = cls.restore(data)
    rest_a = feed(a, stream(500, kind, seed=1, start=700))
    rest_b = feed(b, stream(500, kind, seed=1, start=700))
    assert rest_a == rest_b
    assert a.snapshot() == b.snapshot()
    assert (a.expected(), a.band(), a.warmed_up) == (b.expected(), b.band(), b.warmed_up)


@models
def test_snapshot_is_small_and_not_a_pickle(cls: type[Any]) -> None:
    m = make(cls)
    feed(m, stream(3000, "count"))
    data = m.snapshot()
    assert len(data) < 8192
    assert not data.startswith(b"\x80")  # pickle protocol 2+ header


@models
def test_same_seed_gives_same_scores(cls: type[Any]) -> None:
    xs = list(stream(800, "count", seed=3))
    assert feed(make(cls, seed=7), iter(xs)) == feed(make(cls, seed=7), iter(xs))


@models
def test_two_instances_fed_the_same_stream_agree_and_a_restored_copy_equals_its_source(
    cls: type[Any],
) -> None:
    xs = list(stream(600, "ratio", seed=5))
    a, b = make(cls), make(cls)
    feed(a, iter(xs))
    feed(b, iter(xs))
    c = cls.restore(a.snapshot())
    for probe in ({"value": 0.1, "t": T0 + 1e5}, {"value": 0.9, "t": T0 + 1e5}, {"value": 12.0}):
        assert a.score_one(probe) == b.score_one(probe) == c.score_one(probe)


DEGENERATE: dict[str, list[dict[str, Any]]] = {
    "flat": [{"value": 5.0, "t": T0 + 60.0 * i} for i in range(600)],
    "flat_zero": [{"value": 0.0, "t": T0 + 60.0 * i} for i in range(600)],
    "missing": [{}, {"value": None}, {"value": "n/a"}, {"t": T0}, {"value": True}] * 20,
    "nan_inf": [{"value": v, "t": T0} for v in (math.nan, math.inf, -math.inf)] * 20
    + [{"value": 1.0, "t": math.nan}, {"value": 1.0, "t": math.inf}],
    "extreme": [
        {"value": v, "t": T0 + 60.0 * i}
        for i, v in enumerate([1e12, 0.0, -5.0, 1.7e308, -1.7e308, 5e-324, 1e12, 0.0] * 40)
    ]
    + [{"value": 3.0, "t": 1e300}, {"value": 3.0, "t": -1e300}],
    "spike_after_flat": [{"value": 1.0, "t": T0 + 60.0 * i} for i in range(400)]
    + [{"value": 1e12, "t": T0 + 60.0 * 400}, {"value": 1.0, "t": T0 + 60.0 * 401}],
}


@models
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_never_raises_and_scores_stay_in_unit_interval_on_degenerate_input(
    cls: type[Any], case: str
) -> None:
    m = make(cls)
    for x in DEGENERATE[case]:
        assert in_unit(m.score_one(x))
        m.learn_one(x)
    lo, hi = m.band()
    assert math.isfinite(m.expected()) and math.isfinite(lo) and math.isfinite(hi)
    assert in_unit(make(cls).score_one({"value": 1.0}))  # an untrained model scores too
    cls.restore(m.snapshot())


@models
def test_flat_input_does_not_score_one(cls: type[Any]) -> None:
    m = make(cls)
    scores = feed(m, iter(DEGENERATE["flat"]))
    assert max(scores) < 1.0


@models
def test_missing_values_are_ignored_by_learning(cls: type[Any]) -> None:
    m = make(cls)
    feed(m, stream(300, "count"))
    before = m.snapshot()
    for x in DEGENERATE["missing"] + DEGENERATE["nan_inf"][:3]:
        m.learn_one(x)
    assert m.snapshot() == before


@models
def test_not_warmed_up_before_enough_history(cls: type[Any]) -> None:
    m = make(cls)
    assert not m.warmed_up
    feed(m, stream(10, "count"))
    assert not m.warmed_up
    feed(m, stream(1000, "count", start=10))
    assert m.warmed_up
    assert cls.restore(m.snapshot()).warmed_up


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=0, max_value=10**6).map(float),
    st.none(),
)


@models
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(values, st.booleans()), min_size=1, max_size=400))
def test_any_sequence_of_values_gives_scores_in_unit_interval(
    cls: type[Any], xs: list[tuple[float | None, bool]]
) -> None:
    m = make(cls)
    for i, (v, with_t) in enumerate(xs):
        x: dict[str, Any] = {"value": v}
        if with_t:
            x["t"] = T0 + 60.0 * i
        assert in_unit(m.score_one(x))
        m.learn_one(x)
    r = cls.restore(m.snapshot())
    probe = {"value": 10.0, "t": T0 + 60.0 * len(xs)}
    assert r.score_one(probe) == m.score_one(probe)
