"""The Numenta Anomaly Benchmark's scoring method, reimplemented without pandas.

It follows NAB's own code (numenta/NAB ``nab/sweeper.py``, ``nab/scorer.py``, ``nab/runner.py``,
commit ea702d7) rule for rule, so that it reproduces the published figures:

- probation: the first ``min(floor(0.15 * rows), 0.15 * 5000)`` rows of a file are not scored at
  all (neither detections nor misses there count);
- a window ``[start, end]`` (timestamps) covers the rows from the row whose timestamp equals
  ``start`` to the row whose timestamp equals ``end``; width ``w = end_row - start_row + 1``;
- inside a window, row ``i`` is worth ``tpWeight * S(-(end_row - i + 1) / w) / S(-1)`` and only the
  window's best (= earliest) detection counts; a window without a detection costs ``fnWeight``;
- outside windows, a detection costs ``fpWeight * S(|i - prev_end_row| / (prev_w - 1))`` (negative;
  ``S`` is -1 beyond 3) where a window came before, and ``-fpWeight`` where none did;
- ``S(p) = 2 * sigmoid(-5 p) - 1``;
- a row is a detection when its score is >= the threshold; the threshold is optimised over the whole
  corpus by sweeping every distinct score (NAB's ``Sweeper.calcScoreByThreshold``); ties in the
  best total go to the highest threshold;
- normalised score = ``100 * (raw - null) / (perfect - null)`` with ``null`` the raw score of a
  detector that never fires (``-fnWeight`` per window) and ``perfect = tpWeight * windows``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

PROBATION_PERCENT = 0.15
#: NAB caps probation at ``probationPercent * 5000`` rows (= 750).
PROBATION_CAP_ROWS = 5000
#: Start of NAB's threshold sweep: above every score, nothing detected.
SWEEP_START = 1.1


@dataclass(frozen=True)
class Profile:
    """A NAB application profile (its cost matrix)."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}


def sigmoid(x: float) -> float:
    """The standard logistic function."""
    return 1.0 / (1.0 + math.exp(-x))


def scaled_sigmoid(position: float) -> float:
    """NAB's ``scaledSigmoid``: ``2 * sigmoid(-5 p) - 1``, and -1 beyond ``p > 3``."""
    if position > 3.0:
        return -1.0
    return 2.0 * sigmoid(-5.0 * position) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def probation_length(rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Number of leading rows of a file that are never scored."""
    return int(min(math.floor(percent * rows), percent * PROBATION_CAP_ROWS))


def parse_timestamp(text: str) -> datetime:
    """Parse NAB's timestamps (``2014-04-10 07:15:00`` or with ``.000000``)."""
    return datetime.fromisoformat(text.strip())


@dataclass
class LabelledFile:
    """One data file's geometry: row count, window rows and NAB's per-row weights.

    ``window_of[i]`` is the window index of row ``i`` (-1 outside every window) and ``weight[i]``
    the unweighted NAB value of a detection there: ``S(p) / S(-1)`` inside a window (multiply by
    ``tpWeight``), ``S(p)`` or -1 outside (multiply by ``fpWeight``).
    """

    key: str
    rows: int
    windows: list[tuple[int, int]]
    probation: int
    window_of: list[int] = field(repr=False)
    weight: list[float] = field(repr=False)

    @property
    def category(self) -> str:
        return self.key.split("/", 1)[0]

    @classmethod
    def build(
        cls,
        key: str,
        timestamps: Sequence[datetime],
        limits: Iterable[tuple[datetime, datetime]],
        probation_percent: float = PROBATION_PERCENT,
    ) -> LabelledFile:
        rows = len(timestamps)
        index = {ts: i for i, ts in reversed(list(enumerate(timestamps)))}
        windows: list[tuple[int, int]] = []
        for start, end in limits:
            if start not in index or end not in index:
                raise ValueError(f"{key}: window {start}..{end} does not start/end on a row")
            windows.append((index[start], index[end]))
        windows.sort()
        window_of = [-1] * rows
        weight = [0.0] * rows
        prev_end: int | None = None
        prev_width = 0.0
        w_idx = 0
        i = 0
        while i < rows:
            if w_idx < len(windows) and i == windows[w_idx][0]:
                a, b = windows[w_idx]
                width = float(b - a + 1)
                for j in range(a, b + 1):
                    window_of[j] = w_idx
                    weight[j] = scaled_sigmoid(-(b - j + 1) / width) / MAX_TP
                prev_end, prev_width = b, width
                w_idx += 1
                i = b + 1
                continue
            if prev_end is None:
                weight[i] = -1.0
            else:
                # NAB divides by (prev_width - 1): a one-row window would divide by zero there.
                denom = prev_width - 1.0
                weight[i] = scaled_sigmoid(abs(prev_end - i) / denom) if denom > 0 else -1.0
            i += 1
        return cls(
            key=key,
            rows=rows,
            windows=windows,
            probation=probation_length(rows, probation_percent),
            window_of=window_of,
            weight=weight,
        )

    def scored_windows(self) -> list[int]:
        """Windows that have at least one row after probation (NAB counts only those)."""
        return [k for k, (_, b) in enumerate(self.windows) if b >= self.probation]


@dataclass
class Counts:
    """Raw score and row counts (NAB's tp/fp/fn/tn are counts of rows)."""

    raw: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.raw += other.raw
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self


def score_file(
    lf: LabelledFile, scores: Sequence[float], threshold: float, profile: Profile
) -> Counts:
    """NAB raw score of one file at one threshold (a detection is ``score >= threshold``)."""
    if len(scores) != lf.rows:
        raise ValueError(f"{lf.key}: {len(scores)} scores for {lf.rows} rows")
    out = Counts()
    best: dict[int, float] = {}
    for i in range(lf.probation, lf.rows):
        w = lf.window_of[i]
        hit = scores[i] >= threshold
        if w >= 0:
            if hit:
                out.tp += 1
                if w not in best:  # rows are visited in order: the first detection is the best
                    best[w] = lf.weight[i] * profile.tp_weight
            else:
                out.fn += 1
        elif hit:
            out.fp += 1
            out.raw += lf.weight[i] * profile.fp_weight
        else:
            out.tn += 1
    for w in lf.scored_windows():
        out.raw += best.get(w, -profile.fn_weight)
    return out


@dataclass
class Corpus:
    """The labelled NAB corpus: every data file's geometry, by ``<category>/<file>.csv``."""

    files: dict[str, LabelledFile]

    @classmethod
    def load(cls, nab_dir: Path | str, keys: Iterable[str] | None = None) -> Corpus:
        nab = Path(nab_dir)
        with (nab / "combined_windows.json").open() as fh:
            raw_windows: dict[str, list[list[str]]] = json.load(fh)
        files: dict[str, LabelledFile] = {}
        for key in sorted(raw_windows if keys is None else keys):
            timestamps = [parse_timestamp(r[0]) for r in read_csv_rows(nab / "data" / key)]
            limits = [(parse_timestamp(a), parse_timestamp(b)) for a, b in raw_windows[key]]
            files[key] = LabelledFile.build(key, timestamps, limits)
        return cls(files)

    def subset(self, keys: Iterable[str]) -> Corpus:
        return Corpus({k: self.files[k] for k in keys})

    @property
    def categories(self) -> list[str]:
        return sorted({lf.category for lf in self.files.values()})

    def window_count(self) -> int:
        return sum(len(lf.windows) for lf in self.files.values())

    def null_score(self, profile: Profile) -> float:
        return -profile.fn_weight * sum(len(lf.scored_windows()) for lf in self.files.values())

    def perfect_score(self, profile: Profile) -> float:
        return profile.tp_weight * self.window_count()

    def normalise(self, raw: float, profile: Profile) -> float:
        null = self.null_score(profile)
        perfect = self.perfect_score(profile)
        if perfect == null:
            return 0.0
        return 100.0 * (raw - null) / (perfect - null)


Results = Mapping[str, Sequence[float]]
"""A detector's anomaly scores, one sequence per data file key."""


def _check_keys(corpus: Corpus, results: Results) -> None:
    missing = sorted(set(corpus.files) - set(results))
    if missing:
        raise ValueError(f"results missing for {len(missing)} file(s), e.g. {missing[0]}")


def score_corpus(
    corpus: Corpus, results: Results, threshold: float, profile: Profile
) -> tuple[Counts, dict[str, Counts]]:
    """Total and per-file NAB raw scores at ``threshold``."""
    _check_keys(corpus, results)
    total = Counts()
    per_file: dict[str, Counts] = {}
    for key, lf in corpus.files.items():
        c = score_file(lf, results[key], threshold, profile)
        per_file[key] = c
        total += c
    return total, per_file


def sweep_thresholds(
    corpus: Corpus, results: Results, profile: Profile
) -> list[tuple[float, float]]:
    """NAB's sweep: ``(threshold, raw score)`` for every distinct score, highest first.

    The first entry is ``(1.1, null score)``; entry ``(t, s)`` is the raw score when every row with
    a score ``>= t`` is a detection.
    """
    _check_keys(corpus, results)
    # (score, file number, window or -1, weight) of every scorable row.
    points: list[tuple[float, int, int, float]] = []
    n_windows: list[int] = []
    for f_no, (key, lf) in enumerate(corpus.files.items()):
        scores = results[key]
        if len(scores) != lf.rows:
            raise ValueError(f"{key}: {len(scores)} scores for {lf.rows} rows")
        n_windows.append(len(lf.windows))
        for i in range(lf.probation, lf.rows):
            points.append((float(scores[i]), f_no, lf.window_of[i], lf.weight[i]))
    points.sort(key=lambda p: p[0], reverse=True)

    base = corpus.null_score(profile)
    tp_sum = 0.0  # sum over detected windows of (tp value + fnWeight)
    fp_sum = 0.0
    best: dict[tuple[int, int], float] = {}
    out: list[tuple[float, float]] = []
    cur = SWEEP_START
    for score, f_no, w, weight in points:
        if score != cur:
            out.append((cur, base + tp_sum + fp_sum))
            cur = score
        if w < 0:
            fp_sum += weight * profile.fp_weight
        else:
            value = weight * profile.tp_weight
            k = (f_no, w)
            old = best.get(k)
            if old is None:
                best[k] = value
                tp_sum += value + profile.fn_weight
            elif value > old:
                best[k] = value
                tp_sum += value - old
    out.append((cur, base + tp_sum + fp_sum))
    return out


def optimise_threshold(corpus: Corpus, results: Results, profile: Profile) -> tuple[float, float]:
    """``(threshold, raw score)`` maximising the corpus total (ties: the highest threshold)."""
    best_t, best_s = SWEEP_START, -math.inf
    for t, s in sweep_thresholds(corpus, results, profile):
        if s > best_s:
            best_t, best_s = t, s
    return best_t, best_s


@dataclass
class ProfileReport:
    profile: str
    threshold: float
    raw: float
    normalised: float
    counts: Counts


def evaluate(
    corpus: Corpus,
    results: Results,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, ProfileReport]:
    """Score every profile, at the given thresholds or at the corpus-optimal ones."""
    out: dict[str, ProfileReport] = {}
    for name, profile in PROFILES.items():
        if thresholds is not None and name in thresholds:
            t = thresholds[name]
        else:
            t, _ = optimise_threshold(corpus, results, profile)
        total, _ = score_corpus(corpus, results, t, profile)
        out[name] = ProfileReport(name, t, total.raw, corpus.normalise(total.raw, profile), total)
    return out


@dataclass
class LocoReport:
    """Leave-one-category-out: threshold fitted on six categories, applied to the seventh."""

    profile: str
    raw: float
    normalised: float
    per_category: dict[str, tuple[float, float]]  # category -> (threshold, held-out raw score)


def leave_one_category_out(corpus: Corpus, results: Results, profile: Profile) -> LocoReport:
    """Sum of held-out raw scores over categories, normalised like the whole corpus."""
    per_category: dict[str, tuple[float, float]] = {}
    total = 0.0
    for cat in corpus.categories:
        train = corpus.subset(k for k, lf in corpus.files.items() if lf.category != cat)
        test = corpus.subset(k for k, lf in corpus.files.items() if lf.category == cat)
        t, _ = optimise_threshold(train, results, profile)
        held, _ = score_corpus(test, results, t, profile)
        per_category[cat] = (t, held.raw)
        total += held.raw
    return LocoReport(profile.name, total, corpus.normalise(total, profile), per_category)


# --- results files in NAB's layout -------------------------------------------------------------


def read_csv_rows(path: Path) -> list[list[str]]:
    """Rows of a CSV file after its header."""
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        return [row for row in reader if row]


def load_results(detector_dir: Path | str, name: str | None = None) -> dict[str, list[float]]:
    """Read ``<detector_dir>/<category>/<name>_<file>.csv`` into ``{"<category>/<file>": scores}``.

    ``name`` defaults to the directory's name. The ``anomaly_score`` column is found by header,
    so both ``timestamp,value,anomaly_score`` and NAB's shipped ``timestamp,anomaly_score`` work.
    """
    root = Path(detector_dir)
    prefix = (name or root.name) + "_"
    out: dict[str, list[float]] = {}
    for path in sorted(root.glob("*/*.csv")):
        if not path.name.startswith(prefix):
            continue
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            col = header.index("anomaly_score")
            out[f"{path.parent.name}/{path.name[len(prefix) :]}"] = [
                float(row[col]) for row in reader if row
            ]
    return out


def write_results(
    out_dir: Path | str,
    name: str,
    key: str,
    rows: Sequence[tuple[str, str]],
    scores: Sequence[float],
) -> Path:
    """Write one file's results in NAB's layout; ``rows`` are the data file's (timestamp, value)."""
    if "_" in name:
        raise ValueError("NAB detector names must not contain '_'")
    category, file_name = key.split("/", 1)
    path = Path(out_dir) / name / category / f"{name}_{file_name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value", "anomaly_score"])
        for (ts, value), s in zip(rows, scores, strict=True):
            w.writerow([ts, value, repr(float(s))])
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detector.nab.scorer RESULTS_DIR [--nab DIR] [--threshold T]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Score a detector's results in NAB's layout.")
    ap.add_argument("results", type=Path, help="results/<name> directory")
    ap.add_argument("--nab", type=Path, default=Path("/work/shared/nab"), help="NAB corpus")
    ap.add_argument("--threshold", type=float, help="fixed threshold (default: optimised)")
    args = ap.parse_args(argv)
    corpus = Corpus.load(args.nab)
    results = load_results(args.results)
    fixed = None if args.threshold is None else dict.fromkeys(PROFILES, args.threshold)
    for name, rep in evaluate(corpus, results, fixed).items():
        loco = leave_one_category_out(corpus, results, PROFILES[name])
        print(
            f"{name:<20} {rep.normalised:6.2f} (raw {rep.raw:8.3f} at {rep.threshold:.6f}); "
            f"leave-one-category-out {loco.normalised:6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
