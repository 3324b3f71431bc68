"""`python -m bench.store` measures the store's scripts per event and per set, inside Redis.

What it reports, never how fast: the counts follow from the events, the times only exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.stack
def test_the_store_bench_reports_each_phase_per_event_and_per_set(
    tmp_path: Path, run_bench: Callable[..., Any]
) -> None:
    out = tmp_path / "store.json"
    proc = run_bench("bench.store", "--batches", "2", "--out", str(out), timeout=300)
    rows = [line.split()[0] for line in proc.stdout.splitlines()]
    assert rows == ["phase", "new", "again", "hot", "claims"]
    res = json.loads(out.read_text())
    for phase in ("new", "again", "hot", "claims"):
        p = res[phase]
        assert p["events"] == 2 * res["batch_events"]
        assert p["script_us_per_event"] > 0 and p["round_trip_us_per_event"] > 0
    # Every growth event writes its code's set and its account's; a few campaign sets on top.
    assert res["new"]["sets_per_event"] == res["again"]["sets_per_event"] >= 2
    # 2,000 draws from 1,000 codes: codes and accounts repeat within a batch.
    assert res["hot"]["sets_per_event"] < 1
    # A set seen again is found in the newest slice: no zset check, no look in older slices.
    assert res["again"]["calls_per_set"] < 3 < res["new"]["calls_per_set"]
    assert res["claims"]["sets_per_event"] == 1
