"""Run a detector over the NAB corpus and score it with the project's NAB scorer.

    python -m bench.nab.run [--out DIR] [--name NAME] [--jobs N] [--detector rate|sad]

Each data file is streamed one row at a time, score before learn, no look-ahead:
``x = {"value": v, "t": unix seconds of the row's naive timestamp}``. Results are written in NAB's
layout (``<out>/<name>/<category>/<name>_<file>.csv``), read back, scored (three profiles at their
corpus-optimal thresholds, plus leave-one-category-out), and summarised in
``bench/results/nab.json``.
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.nab import scorer

NAB_DIR = Path(os.environ.get("NAB_DIR", "/work/shared/nab"))
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_OUT = HERE / "results"
SUMMARY = HERE.parent / "results" / "nab.json"


def data_keys(nab_dir: Path = NAB_DIR) -> list[str]:
    with (nab_dir / "combined_windows.json").open() as fh:
        return sorted(json.load(fh))


def read_data(nab_dir: Path, key: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in scorer.read_csv_rows(nab_dir / "data" / key)]


def unix_seconds(timestamp: str) -> float:
    """The row's naive timestamp read as wall-clock time (what ``"t"`` means to the models)."""
    return float(calendar.timegm(scorer.parse_timestamp(timestamp).timetuple()))


def _sad_factory() -> Callable[[float, float], float]:
    from river import anomaly

    sad = anomaly.StandardAbsoluteDeviation()

    def step(v: float, t: float) -> float:
        s = float(sad.score_one(None, v))  # type: ignore[no-untyped-call]
        sad.learn_one(None, v)  # type: ignore[no-untyped-call]
        if not math.isfinite(s):
            return 1.0
        return s / (1.0 + s)

    return step


class _RateStep:
    def __init__(self, params: dict[str, Any]) -> None:
        from detector.models.rate import RateModel

        self.model = RateModel(**params)

    def __call__(self, v: float, t: float) -> float:
        x = {"value": v, "t": t}
        s: float = self.model.score_one(x)
        self.model.learn_one(x)
        return s


def run_file(job: tuple[str, str, dict[str, Any], str]) -> tuple[str, list[float], float, int]:
    """Stream one file through a fresh detector.

    Returns its scores, the seconds spent in the detector and the size of the model's final
    snapshot (0 for River's SAD, which has none).
    """
    key, detector, params, nab_dir = job
    rows = read_data(Path(nab_dir), key)
    values = [float(v) for _, v in rows]
    times = [unix_seconds(ts) for ts, _ in rows]
    step: Callable[[float, float], float]
    step = _sad_factory() if detector == "sad" else _RateStep(params)
    t0 = time.perf_counter()
    scores = [step(v, t) for v, t in zip(values, times, strict=True)]
    seconds = time.perf_counter() - t0
    size = len(step.model.snapshot()) if isinstance(step, _RateStep) else 0
    return key, scores, seconds, size


@dataclass
class CorpusRun:
    results: dict[str, list[float]]
    seconds: float  # time spent inside the detector, summed over files
    rows: int
    snapshot_bytes: dict[str, int]


def run_corpus(
    detector: str = "rate",
    params: dict[str, Any] | None = None,
    jobs: int = 2,
    keys: list[str] | None = None,
    nab_dir: Path = NAB_DIR,
) -> CorpusRun:
    """Scores of every file (in memory), with timing and final snapshot sizes."""
    keys = keys or data_keys(nab_dir)
    # Longest files first, so that the workers finish together.
    sizes = {k: (nab_dir / "data" / k).stat().st_size for k in keys}
    ordered = sorted(keys, key=lambda k: -sizes[k])
    work = [(k, detector, params or {}, str(nab_dir)) for k in ordered]
    if jobs <= 1:
        outs = [run_file(w) for w in work]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            outs = pool.map(run_file, work, chunksize=1)
    results = {key: scores for key, scores, _, _ in outs}
    return CorpusRun(
        results={k: results[k] for k in sorted(results)},
        seconds=sum(secs for _, _, secs, _ in outs),
        rows=sum(len(scores) for _, scores, _, _ in outs),
        snapshot_bytes={key: size for key, _, _, size in outs},
    )


def summarise(corpus: scorer.Corpus, results: scorer.Results) -> dict[str, Any]:
    reports = scorer.evaluate(corpus, results)
    out: dict[str, Any] = {"profiles": {}, "leave_one_category_out": {}}
    for name, rep in reports.items():
        out["profiles"][name] = {
            "threshold": rep.threshold,
            "raw": round(rep.raw, 4),
            "normalised": round(rep.normalised, 2),
            "tp_rows": rep.counts.tp,
            "fp_rows": rep.counts.fp,
        }
    for name, profile in scorer.PROFILES.items():
        loco = scorer.leave_one_category_out(corpus, results, profile)
        out["leave_one_category_out"][name] = {
            "raw": round(loco.raw, 4),
            "normalised": round(loco.normalised, 2),
            "per_category": {
                c: {"threshold": t, "raw": round(r, 4)} for c, (t, r) in loco.per_category.items()
            },
        }
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:
        return None


def _commit() -> str | None:
    """HEAD's short hash, with ``+dirty`` when the model/scorer/bench files differ from it."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return None
    paths = ("detector/models", "detector/nab", "bench/nab")
    changed = _git("diff-index", "--quiet", "HEAD", "--", *paths)
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *paths)
    dirty = (changed is not None and changed.returncode != 0) or bool(
        untracked is not None and untracked.stdout.strip()
    )
    return head.stdout.strip() + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root (git-ignored)")
    ap.add_argument("--name", default=None, help="detector name in the results layout")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--detector", choices=("rate", "sad"), default="rate")
    ap.add_argument("--nab", type=Path, default=NAB_DIR, help="NAB corpus (read-only)")
    ap.add_argument("--summary", type=Path, default=SUMMARY, help="JSON summary path")
    args = ap.parse_args(argv)
    name = args.name or ("rateModel" if args.detector == "rate" else "riverSAD")

    wall0 = time.perf_counter()
    run = run_corpus(args.detector, jobs=args.jobs, nab_dir=args.nab)
    results, seconds, rows = run.results, run.seconds, run.rows
    for key, scores in results.items():
        scorer.write_results(args.out, name, key, read_data(args.nab, key), scores)
    written = scorer.load_results(args.out / name, name)
    corpus = scorer.Corpus.load(args.nab)
    summary = summarise(corpus, written)
    us = 1e6 * seconds / rows
    wall = time.perf_counter() - wall0

    print(f"NAB, detector {args.detector!r} as {name!r}: {rows} rows, {us:.1f} µs/sample")
    for p, rep in summary["profiles"].items():
        loco = summary["leave_one_category_out"][p]["normalised"]
        print(
            f"  {p:<20} {rep['normalised']:6.2f}  (raw {rep['raw']:8.3f} at threshold "
            f"{rep['threshold']:.6f}; leave-one-category-out {loco:6.2f})"
        )
    print(f"  wall time {wall:.0f} s")

    record: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "python": sys.version.split()[0],
        "commit": _commit(),
        "rows": rows,
        "us_per_sample": round(us, 2),
        "wall_seconds": round(wall, 1),
        **summary,
    }
    if args.detector == "rate":
        snaps = sorted(run.snapshot_bytes.values())
        record["snapshot_bytes"] = {
            "median": snaps[len(snaps) // 2],
            "max": snaps[-1],
            "note": "zlib-compressed JSON of RateModel's state at the end of each NAB file",
        }
        print(f"  snapshot size: median {snaps[len(snaps) // 2]} B, max {snaps[-1]} B")
    all_runs: dict[str, Any] = {}
    if args.summary.exists():
        try:
            all_runs = json.loads(args.summary.read_text())
        except json.JSONDecodeError:
            all_runs = {}
    all_runs[args.detector] = {"name": name, **record}
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(all_runs, indent=1, sort_keys=True) + "\n")
    print(f"  summary written to {args.summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
