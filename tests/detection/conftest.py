from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.alerts.record import Alert
from detector.app import replay
from detector.config import Config, load_config
from detector.simulate.scenario import ScenarioParams, generate, write_jsonl

Replayed = tuple[list[Alert], dict[str, Any], Config]


@pytest.fixture
def simulate_and_replay(tmp_path: Path) -> Callable[..., Replayed]:
    """Generate a labelled stream, replay it on the embedded store, return alerts and truth."""

    def go(
        seed: int, *, declared: bool = True, config: dict[str, Any] | None = None, **params: Any
    ) -> Replayed:
        sc = generate(ScenarioParams.from_seed(seed, declared=declared, **params))
        events = tmp_path / f"events-{seed}.jsonl"
        write_jsonl(sc.events, events)
        over: dict[str, Any] = dict(config or {})
        if declared:
            over["campaigns"] = {c: {"kind": k} for c, k in sc.campaigns.items()}
        cfg = load_config(None, over)
        out = tmp_path / f"alerts-{seed}.jsonl"
        out.unlink(missing_ok=True)
        replay(cfg, str(events), alerts_out=str(out))
        alerts = [Alert.from_json(line) for line in out.read_bytes().splitlines()]
        truth = orjson.loads(orjson.dumps(sc.truth_dict()))
        return alerts, truth, cfg

    return go


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.stack)])
def replay_lines(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[list[str], dict[str, Any]], list[Alert]]:
    """Replay hand-made event lines (in time order) on the embedded store and on Redis."""

    def go(lines: list[str], over: dict[str, Any]) -> list[Alert]:
        path = tmp_path / "events.jsonl"
        path.write_text("\n".join(sorted(lines, key=lambda s: orjson.loads(s)["ts"])) + "\n")
        over = dict(over)
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
            over["redis"] = {"url": url, "key_prefix": request.getfixturevalue("redis_prefix")}
        out = tmp_path / "alerts.jsonl"
        out.unlink(missing_ok=True)
        replay(load_config(None, over), str(path), alerts_out=str(out), backend=request.param)
        return [Alert.from_json(line) for line in out.read_bytes().splitlines()]

    return go
