"""The fast parse path gives exactly what the strict pydantic path gives, for every input.

``parse`` tries ``fast_fields`` (orjson and exact checks) and falls back to ``validate_strict``
for anything the fast path does not accept; so ``parse(x) == validate_strict(x)`` for every x
means the fast path never accepts what the model rejects, never changes a value, and leaves every
dead-letter reason and detail to the model.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_parse import GOOD as BASE  # a valid event (tests/events is on the path)

from detector.events.fast import fast_fields
from detector.events.parse import BadEvent, Event, parse, validate_strict

NOW = time.time()
SKEW = 300.0
MAX_BYTES = 2**31  # the size check comes before either path


def both(raw: bytes) -> tuple[str, str]:
    """Both paths' results, as reprs (so -0.0 and 0.0, 1 and 1.0 count as different)."""
    fast = parse(raw, now=NOW, max_bytes=MAX_BYTES, max_future_skew_s=SKEW)
    strict = validate_strict(raw.decode("utf-8"), NOW, SKEW)
    assert isinstance(fast, Event | BadEvent)
    return repr(fast), repr(strict)


def assert_same(raw: bytes) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return  # decided before either path runs
    fast, strict = both(raw)
    assert fast == strict, raw[:300]


# -- timestamps: every piece of RFC 3339 and its near misses ------------------------------------

digits = st.integers(0, 10**9)
timestamps = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, off: (
        f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}{s}{frac}{off}"
    ),
    st.sampled_from([0, 1, 4, 1969, 1970, 2000, 2024, 2026, 2100, 9999]),
    st.integers(0, 13),
    st.integers(0, 32),
    st.sampled_from(["T", "t", " ", "_", "TT"]),
    st.integers(0, 25),
    st.integers(0, 61),
    st.sampled_from(["", ":00", ":59", ":60", ":61", ":7", ":5a"]),
    st.one_of(
        st.just(""),
        st.just("."),
        st.integers(1, 12).flatmap(
            lambda n: st.text("0123456789", min_size=n, max_size=n).map(lambda x: "." + x)
        ),
        st.just(",5"),
        st.just(".١٢"),  # non-ASCII digits
    ),
    st.one_of(
        st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+24:00", "Zz", " Z", "+05", "+0530"]),
        st.builds(
            lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
            st.sampled_from("+-"),
            st.integers(0, 25),
            st.integers(0, 61),
        ),
    ),
)

# -- field values: right and wrong types, bounds, numbers JSON and orjson disagree about --------

texts = st.one_of(
    st.text(max_size=20),
    st.text(min_size=250, max_size=260),
    st.sampled_from(
        [
            "",
            "a",
            "x" * 16,
            "x" * 17,
            "x" * 128,
            "x" * 129,
            "x" * 256,
            "x" * 257,
            "é" * 256,
            "😀" * 129,
            "\x00",
            "\ufeff",
        ]
    ),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 0.0, 1e308, 5e-324, 2**53 + 1, 2**64, 10**30]),
)
values = st.one_of(
    texts,
    numbers,
    timestamps,
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def event_texts(draw: st.DrawFn) -> str:
    """An event-shaped JSON object, written by hand so it can hold what json.dumps won't."""
    obj: dict[str, object] = dict(BASE)
    obj["ts"] = draw(timestamps)
    for k in draw(st.lists(st.sampled_from(sorted(BASE)), max_size=4, unique=True)):
        if draw(st.booleans()):
            del obj[k]
        else:
            obj[k] = draw(values)
    if draw(st.booleans()):
        obj["account_created_at"] = draw(timestamps)
    if draw(st.booleans()):
        obj[draw(st.sampled_from(["extra", "ts2", "nested"]))] = draw(values)
    pairs = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in obj.items()]
    # Spellings json.dumps never makes: duplicate keys, NaN/Infinity, big exponents, -0,
    # lone surrogates, deep nesting in an ignored field.
    for raw in draw(
        st.lists(
            st.sampled_from(
                [
                    '"event_id":"dup"',
                    '"event_id":1',
                    '"ts":"2026-01-12T10:00:00Z"',
                    '"order_total":NaN',
                    '"discount":Infinity',
                    '"order_total":-Infinity',
                    '"order_total":1e400',
                    '"order_total":-0',
                    '"discount":1E2',
                    '"order_total":' + "9" * 40,
                    '"ip":"\\ud800"',
                    '"device_id":"\\udc00\\ud800"',
                    '"device_id":"\\ud83d\\ude00"',
                    '"extra":' + "[" * 150 + "]" * 150,
                    '"extra":' + "[" * 300 + "]" * 300,
                    '"extra":{"a":{"b":[1,2,{"c":null}]}}',
                ]
            ),
            max_size=3,
        )
    ):
        pairs.insert(draw(st.integers(0, len(pairs))), raw)
    return "{" + ",".join(pairs) + "}"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_texts())
@example('{"event_id":"e","ts":"2026-01-12T10:00:60Z","order_id":"o","account_id":"a"}')
@example('{"event_id":"e","ts":"0001-01-01T00:00:00+01:00","order_id":"o","account_id":"a"}')
@example('{"event_id":"e","ts":"9999-12-31T23:59:59.999999-23:59","order_id":"o","account_id":"a"}')
@example('{"event_id":"e","ts":"2024-02-29 23:59:59.123456789z","order_id":"o","account_id":"a"}')
@example('{"event_id":"e","ts":"2023-02-29T00:00:00Z","order_id":"o","account_id":"a"}')
@example('{"event_id":"e","ts":"2026-01-12T10:00:00Z","order_id":"o","account_id":"a","x":1}')
@example('{"event_id":"e","ts":"2099-01-12T10:00:00Z","order_id":"o","account_id":"a"}')
@example(
    '{"event_id":"e","event_id":"f","ts":"2026-01-12T10:00:00Z","order_id":"o","account_id":"a"}'
)
def test_fast_path_agrees_with_the_model_on_event_shaped_input(text: str) -> None:
    assert_same(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fast_path_agrees_with_the_model_on_arbitrary_bytes(raw: bytes) -> None:
    assert_same(raw)


@settings(max_examples=500, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | numbers | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=12,
    )
)
def test_fast_path_agrees_with_the_model_on_arbitrary_json(value: object) -> None:
    assert_same(json.dumps(value).encode())


def test_fast_path_agrees_with_the_model_on_the_hostile_corpus() -> None:
    # The fuzzed stream of tests/hostile (every kind of garbage a producer or attacker sends).
    path = Path(__file__).parents[1] / "hostile" / "test_fuzzed_stream.py"
    spec = importlib.util.spec_from_file_location("hostile_corpus", path)
    assert spec is not None and spec.loader is not None
    hostile = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hostile)
    for m in hostile.corpus(7, NOW, 20_000):
        if m.value is not None:
            assert_same(m.value)


@pytest.mark.parametrize(
    "ts",
    [
        "2026-01-12T10:00:00Z",
        "2026-01-12T10:00:00.5Z",
        "2026-01-12 10:00:00.123456+05:30",
        "2026-01-12T10:00:00.123456789-08:00",
        "1970-01-01T00:00:00Z",
    ],
)
def test_usual_events_take_the_fast_path_with_the_models_values(ts: str) -> None:
    # If the fast path declined these, replay would silently be as slow as before.
    raw = json.dumps({**BASE, "ts": ts}).encode()
    fields = fast_fields(raw.decode())
    assert fields is not None
    assert repr(Event._make(fields)) == repr(validate_strict(raw.decode(), NOW, SKEW))
