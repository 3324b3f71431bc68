"""`python -m bench.run --smoke` completes on the stack and writes every section.

Only that it runs and measures something: never how fast (the machine is shared).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.stack
@pytest.mark.slow
def test_bench_smoke_writes_every_section(tmp_path: Path, run_bench: Callable[..., Any]) -> None:
    out = tmp_path / "perf-smoke.json"
    run_bench("bench.run", "--smoke", "--out", str(out), timeout=480)
    res = json.loads(out.read_text())

    assert res["kind"] == "smoke"
    for key in ("cpu_model", "cores", "git_commit"):
        assert res["machine"][key]
    s = res["sections"]
    for name in ("ceiling", "run", "run_scaled", "replay", "quix", "latency", "growth"):
        assert name in s, f"section {name} missing"
        assert "error" not in s[name], s[name]
    n = res["params"]["events"]
    for name in ("ceiling", "run", "run_scaled", "replay", "quix"):
        assert s[name]["events"] >= n
        assert s[name]["events_per_s"] > 0
    assert s["quix"]["late_dropped"] == 0

    lat = s["latency"]
    assert lat["produced_in_window"] > 0
    assert lat["consumed_rate_in_window"] > 0
    assert lat["histogram"]["count"] > 0
    assert lat["histogram"]["p99_s"] is not None
    assert lat["offset_poll"]["count"] > 0

    g = s["growth"]
    assert [p["codes"] for p in g["pools"]] == list(res["params"]["growth_pools"])
    for pool in g["pools"]:
        assert pool["events_per_s"] > 0
        assert pool["fill_events_per_s"] > 0
        assert pool["redis_state_bytes_after_fill"] > 0
        assert pool["peak_rss"] > 0
    assert g["drain"]["peak_keys"] > 0
    assert g["drain"]["drained"], g["drain"]

    for ratio in (
        "run_over_ceiling",
        "replay_over_ceiling",
        "run_over_quix",
        "run_scaled_over_ceiling",
    ):
        assert res["ratios"][ratio] is not None and res["ratios"][ratio] > 0
    assert res["targets"]
