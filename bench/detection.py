"""Detection quality over many simulated streams: latency per incident kind and false alerts.

    python -m bench.detection [--seeds 1-10] [--out bench/results/detection.json]

Each seed draws its own traffic and incidents (docs/simulator.md); each stream is replayed with
declared and with undeclared campaigns, and a clean 48 h stream (benign surprises only) per seed
measures false alerts. Latency is event time from the truth's anchor to the first alert.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from detector.alerts.record import Alert
from detector.app import replay
from detector.backtest.evaluate import evaluate
from detector.config import load_config
from detector.simulate.scenario import ScenarioParams, generate, write_jsonl


def one(seed: int, declared: bool, clean: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {"incidents": ()} if clean else {}
    sc = generate(
        ScenarioParams.from_seed(seed, hours=48.0 if clean else 36.0, declared=declared, **kw)
    )
    with tempfile.TemporaryDirectory() as d:
        events = Path(d) / "events.jsonl"
        write_jsonl(sc.events, events)
        over: dict[str, Any] = {}
        if declared:
            over["campaigns"] = {c: {"kind": k} for c, k in sc.campaigns.items()}
        out = Path(d) / "alerts.jsonl"
        replay(load_config(None, over), str(events), alerts_out=str(out))
        alerts = [Alert.from_json(line) for line in out.read_bytes().splitlines()]
    ev = evaluate(alerts, orjson.loads(orjson.dumps(sc.truth_dict())))
    return {
        "seed": seed,
        "declared": declared,
        "clean": clean,
        "days": ev.days,
        "incidents": [
            {
                "kind": i.kind,
                "detected": i.detected,
                "latency_s": i.latency_s,
                "rule": i.rule,
                "severity": i.severity,
            }
            for i in ev.incidents
            if not i.benign
        ],
        "false_pages": sum(1 for a in ev.false_alerts if a.severity == "page"),
        "false_tickets": sum(1 for a in ev.false_alerts if a.severity == "ticket"),
    }


def _run(args: tuple[int, bool, bool]) -> dict[str, Any]:
    return one(*args)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="1-10", help="e.g. 1-10 or 1,4,9")
    p.add_argument("--out", default="bench/results/detection.json")
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args()
    if "-" in a.seeds:
        lo, hi = (int(x) for x in a.seeds.split("-"))
        seeds = list(range(lo, hi + 1))
    else:
        seeds = [int(x) for x in a.seeds.split(",")]
    jobs = [(s, d, False) for s in seeds for d in (True, False)]
    jobs += [(100 + s, d, True) for s in seeds for d in (True, False)]
    with ProcessPoolExecutor(a.jobs) as ex:
        runs = list(ex.map(_run, jobs))
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        for i in r["incidents"]:
            by_kind[i["kind"]].append(i)
    print(
        f"{'incident':20} {'n':>3} {'detected':>8} {'paged':>5} {'median s':>9} {'max s':>7}  rules"
    )
    table = {}
    for kind, items in sorted(by_kind.items()):
        lat = [i["latency_s"] for i in items if i["latency_s"] is not None]
        rules = sorted({i["rule"] for i in items if i["rule"]})
        row = {
            "n": len(items),
            "detected": sum(i["detected"] for i in items),
            "paged": sum(i["severity"] == "page" for i in items),
            "median_latency_s": round(statistics.median(lat), 1) if lat else None,
            "max_latency_s": round(max(lat), 1) if lat else None,
            "rules": rules,
        }
        table[kind] = row
        print(
            f"{kind:20} {row['n']:>3} {row['detected']:>8} {row['paged']:>5} "
            f"{row['median_latency_s']!s:>9} {row['max_latency_s']!s:>7}  {', '.join(rules)}"
        )
    clean = [r for r in runs if r["clean"]]
    days = sum(r["days"] for r in clean)
    pages = sum(r["false_pages"] for r in clean)
    tickets = sum(r["false_tickets"] for r in clean)
    print(
        f"clean streams: {days:.0f} days, {pages} false pages, {tickets} false tickets "
        f"({tickets / days:.2f}/day)"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(
        json.dumps(
            {
                "seeds": seeds,
                "incidents": table,
                "clean_days": days,
                "false_pages": pages,
                "false_tickets": tickets,
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
