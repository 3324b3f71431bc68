"""RateModel: the per-campaign streaming model of a redemption rate (one value per closed bucket).

How it scores one interval (score before learn, no look-ahead)
--------------------------------------------------------------
1. **Variance stabilisation.** While every value seen is a non-negative integer (a count, e.g.
   redemptions per bucket) the model works on ``2 * sqrt(v + 3/8)`` (Anscombe's transform: Poisson
   noise has unit variance there, so one scale floor fits small and large counts). A stream that
   shows a fractional or negative value is modelled on its raw scale from then on.
2. **Four predictors, each with its own robust residual scale** (exponentially weighted mean
   absolute residual; level updates are Huber-clipped so one garbage value cannot drag them):

   - ``f`` a fast exponentially weighted level (memory ~5 intervals): spikes and abrupt changes;
   - ``s`` a slow exponentially weighted level (memory ~100 intervals): sustained shifts;
   - ``d`` a seasonal additive model, only where ``x["t"]`` is given: a level with a one-day time
     constant + a time-of-day profile (48 linearly interpolated knots, ~7 days of memory, each knot
     with its own residual scale, since busy hours are noisier) + a time-of-week correction
     (168 hourly knots, shrunk towards zero). Learning rates are expressed in elapsed time, so
     the same model works for 1-minute buckets and for NAB's 5-minute or hourly rows. Its
     residual is scored after subtracting its own recent mean (~20 intervals), so that a lasting
     shift of the whole series, which the slow level terms only absorb over a day, is not
     re-discovered as a surprise each time the clock reaches a knot not yet visited since;
   - ``m`` a first-order Markov chain over 16 bins of the observed range: how unexpected this
     value is after the previous one (a small, statistical cousin of HTM's sequence memory, which
     catches pattern changes that stay inside the usual range).

   Each residual becomes a raw surprise in [0, 1]: ``clip((z - 3) / 4)`` with ``z`` the residual in
   units of its scale; the Markov surprise is ``1 - p(bin | previous bin) / max_bin p``.
3. **Anomaly likelihood** (Ahmad et al. 2017, "Unsupervised real-time anomaly detection for
   streaming data", Numenta): for each surprise stream, the moving average over the last 10
   intervals (and over 50 for the seasonal one, for slow drifts) is compared with the
   distribution of its own past moving averages (exponentially weighted mean and variance, with
   Numenta's floors); its Gaussian tail probability ``q`` says how unusual the recent surprise
   is for this campaign. The five tail probabilities are combined by Bonferroni's rule
   (``q = 5 * min q_i``).
4. **Output.** ``score = -log10(q) / 10`` (Numenta's log-likelihood scale: 0.5 means a one in
   100,000 event, 1.0 one in 10^10). As in Numenta's detector, a red tail (``q <= 1e-5``) right
   after another red one is reported at the yellow level (1e-3, score 0.3): an incident is reported
   at its onset rather than on every interval it lasts. A value beyond the campaign's observed
   range, widened by 5% of the range and by at least one noise sigma, scores 1.0 (Numenta's
   "spatial anomaly"; the range slowly forgets, half-life ~7,000 intervals, so one garbage value
   cannot blind it for ever). ``sustained_score_one`` gives the same score without the
   red-to-yellow demotion, for deciding whether an open incident still holds.

Scale for alerting: 0.5 is Numenta's "red" (q = 1e-5) and the first red interval of an episode
typically scores just above it, because the moving average crosses the red level gradually; NAB's
optimal threshold for this model is ~0.52. A threshold near 1.0 only keeps spatial anomalies and
abrupt, extreme jumps. On stationary Poisson streams, about 2e-4 of intervals score >= 0.5 and
6e-5 >= 0.9 (mostly new records of the range).

Frozen hyperparameters and how they were chosen
-----------------------------------------------
Most are principled or inherited: Numenta's likelihood settings (averaging window 10, floors,
red/yellow levels, 5% range tolerance, 8640-interval memory), textbook robust statistics (Huber
clipping at 5 mean absolute deviations, Anscombe's transform, one-sigma margins), memory lengths in
natural units (one day, one week, ~20 intervals for a local bias). Structural choices (which
predictors, one likelihood per predictor, the Markov chain, 24 vs 48 daily knots, the surprise
threshold of 3 vs 2 scales) were made one change at a time on the NAB corpus, judged on the whole
corpus, on both halves of a fixed split of its files and on the leave-one-category-out score;
changes within the noise of that measure (about +-1.5 points) were kept or dropped on principle
(robustness in production), not on score. See ``bench/nab/README.md`` for the log.

Warm-up: ``WARMUP`` = 300 intervals. The likelihood needs the distribution of 10-interval moving
averages (about 30 independent ones after 300 intervals) before its tail can be trusted; before
that ``q`` is 0.5 (score 0.03) and ``warmed_up`` is false. The seasonal profile keeps improving for
days after that; the per-knot scales keep it from over-reacting meanwhile.

State is a few hundred floats; ``snapshot()`` is zlib-compressed JSON (no pickle), and
``restore(snapshot())`` continues with bit-identical scores.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, Self

from river.base import AnomalyDetector

# --- predictors ---------------------------------------------------------------------------------
FAST_ALPHA = 0.2  # fast level: memory ~5 intervals
SLOW_ALPHA = 0.01  # slow level: memory ~100 intervals
SCALE_ALPHA = 0.01  # residual scales (mean absolute residual): memory ~100 intervals
HUBER_K = 5.0  # level/scale updates clip residuals at 5 scales (~4 sigma)
DAY = 86400.0
WEEK_HOURS = 168
DAY_KNOTS = 48  # time-of-day profile: a knot every 30 minutes, linearly interpolated
LEVEL_DAYS = 1.0  # seasonal model's level: one-day time constant
BIAS_ALPHA = 0.05  # the seasonal residual is centred on its last ~20 values (see docstring)
DAY_MEMORY = 7.0  # the time-of-day profile remembers ~7 days
WEEK_MEMORY = 4.0  # the time-of-week correction remembers ~4 weeks, starts at zero
MAX_GAP = 3600.0  # a gap longer than an hour counts as one hour of evidence
MARKOV_BINS = 16  # bins of the observed range for the transition model
MARKOV_ALPHA = 0.1  # additive smoothing of transition probabilities
MARKOV_CAP = 100.0  # a row's counts are rescaled to keep ~100 transitions of memory
RANGE_DECAY = 1e-4  # the observed range forgets (half-life ~6,900 intervals)
RANGE_TOLERANCE = 0.05  # Numenta: beyond the range widened by 5% of it is a spatial anomaly...
SPATIAL_SIGMAS = 1.0  # ...and by at least one noise sigma (a Poisson record is not an anomaly)
SIGMA_PER_MAD = 1.25  # sigma / mean absolute deviation for a normal law
COUNT_SCALE_FLOOR = 0.5  # counts: scales >= 0.5 in Anscombe units (Poisson noise is ~1 there)
REL_SCALE_FLOOR = 1e-9  # otherwise a scale floor relative to the level (flat streams)
VALUE_LIMIT = 1e15  # values are clipped to +-1e15 so that every statistic stays finite

# --- surprise and likelihood (Numenta's anomaly likelihood) -------------------------------------
Z0 = 3.0  # no surprise up to 3 scales
Z_SPAN = 4.0  # full surprise at 7 scales
WARMUP = 300  # intervals before the likelihood is trusted (see module docstring)
LIK_MEMORY = 8640  # Numenta's historic window
LIK_MIN_MEAN = 0.03  # Numenta's floors on the moving average's distribution
LIK_MIN_VAR = 0.0003
RED = 1e-5  # Numenta's red and yellow tail levels
YELLOW = 1e-3
# (predictor, averaging window) of each likelihood; the buffer of a predictor is the longest.
LIKELIHOODS: tuple[tuple[int, int], ...] = ((0, 10), (1, 10), (2, 10), (2, 50), (3, 10))
BUFFER = (10, 10, 50, 10)
N_LIK = len(LIKELIHOODS)

SNAPSHOT_VERSION = 1
_SQRT2 = math.sqrt(2.0)


def _tail(x: float, mean: float, var: float) -> float:
    """Numenta's tail probability (values below the mean are reflected above it)."""
    if x < mean:
        x = 2.0 * mean - x
    return 0.5 * math.erfc((x - mean) / math.sqrt(var) / _SQRT2)


def _anscombe(v: float) -> float:
    return 2.0 * math.sqrt(v + 0.375)


def _inv_anscombe(y: float) -> float:
    return max(0.0, (y / 2.0) ** 2 - 0.375)


def _is_count(v: float) -> bool:
    return v >= 0.0 and v == math.floor(v)


class RateModel(AnomalyDetector):
    """Streaming rate-anomaly model; see the module docstring. No randomness: fully deterministic.

    >>> m = RateModel()
    >>> for i in range(400):
    ...     x = {"value": float(10 + i % 3), "t": 60.0 * i}
    ...     s = m.score_one(x)
    ...     m.learn_one(x)
    >>> m.warmed_up, m.score_one({"value": 11.0, "t": 24000.0}) < 0.5
    (True, True)
    >>> m.score_one({"value": 60.0, "t": 24000.0})
    1.0
    """

    def __init__(self) -> None:
        self._reset_levels()
        self.n = 0  # intervals learned
        self.counts = True  # every value so far was a non-negative integer
        self.t_prev: float | None = None
        self.v_min = math.inf
        self.v_max = -math.inf
        self.r_mid = 0.0
        self.markov = [0.0] * (MARKOV_BINS * MARKOV_BINS)
        self.m_prev = -1
        self.bufs: list[list[float]] = [[] for _ in BUFFER]
        self.lik_mean = [0.0] * N_LIK
        self.lik_var = [0.0] * N_LIK
        self.q_prev = 1.0
        self._ver = 0
        self._cache: tuple[float, float | None, int, _Eval] | None = None

    def _reset_levels(self) -> None:
        self.nl = 0  # intervals in the level statistics (reset when a stream stops being counts)
        self.lf = self.sf = 0.0
        self.ls = self.ss = 0.0
        self.lvl = self.se = 0.0
        self.bias = 0.0
        self.days = 0.0  # days of seasonal evidence (capped at DAY_MEMORY)
        self.prof = [0.0] * DAY_KNOTS
        self.prof_scale = [0.0] * DAY_KNOTS
        self.week = [0.0] * WEEK_HOURS

    # --- input ----------------------------------------------------------------------------------

    @staticmethod
    def _num(x: dict[Any, Any], key: str) -> float | None:
        """A finite float (clipped to +-VALUE_LIMIT), or None for missing/NaN/inf/non-numbers."""
        v = x.get(key)
        if v is None or isinstance(v, bool):
            return None
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            return None
        if not math.isfinite(f):
            return None
        return min(max(f, -VALUE_LIMIT), VALUE_LIMIT) if key == "value" else f

    # --- scoring --------------------------------------------------------------------------------

    def _evaluate(self, v: float, t: float | None) -> _Eval:
        ev = _Eval()
        counts = self.counts and _is_count(v)
        ev.counts = counts
        y = _anscombe(v) if counts else v
        ev.y = y
        raws = ev.raws
        if self.nl > 0 and counts == self.counts:
            floor = COUNT_SCALE_FLOOR if counts else REL_SCALE_FLOOR * max(1.0, abs(self.ls))
            raws[0] = _surprise(abs(y - self.lf) / max(self.sf, floor))
            raws[1] = _surprise(abs(y - self.ls) / max(self.ss, floor))
            if t is not None:
                ph = (t % DAY) / DAY * DAY_KNOTS
                k0 = int(ph) % DAY_KNOTS
                wk = ph - math.floor(ph)
                pw = (t / 3600.0 + 96.0) % WEEK_HOURS  # the epoch was a Thursday: 0 = Monday 0h
                h0 = int(pw) % WEEK_HOURS
                wh = pw - math.floor(pw)
                k1 = (k0 + 1) % DAY_KNOTS
                h1 = (h0 + 1) % WEEK_HOURS
                pred = (
                    self.lvl
                    + (1.0 - wk) * self.prof[k0]
                    + wk * self.prof[k1]
                    + (1.0 - wh) * self.week[h0]
                    + wh * self.week[h1]
                )
                scale = self.se
                if self.days >= 1.0:
                    scale = (1.0 - wk) * self.prof_scale[k0] + wk * self.prof_scale[k1]
                raws[2] = _surprise(abs(y - pred - self.bias) / max(scale, floor))
                ev.knots = (k0, k1, wk, h0, h1, wh)
                ev.pred = pred
        if self.v_max > self.v_min:
            span = self.v_max - self.v_min
            b = min(MARKOV_BINS - 1, max(0, int((v - self.v_min) / span * MARKOV_BINS)))
            ev.bin = b
            if self.m_prev >= 0:
                row = self.markov[self.m_prev * MARKOV_BINS : (self.m_prev + 1) * MARKOV_BINS]
                total = sum(row)
                if total >= 1.0:
                    raws[3] = 1.0 - (row[b] + MARKOV_ALPHA) / (max(row) + MARKOV_ALPHA)
            tol = span * RANGE_TOLERANCE
            if SPATIAL_SIGMAS > 0.0 and self.nl > 0:
                sigma = SIGMA_PER_MAD * self.ss
                if self.counts:
                    up = sigma * math.sqrt(self.v_max + 0.375)
                    down = sigma * math.sqrt(max(self.v_min, 0.0) + 0.375)
                else:
                    up = down = sigma
                ev.spatial = (v > self.v_max + max(tol, SPATIAL_SIGMAS * up)) or (
                    v < self.v_min - max(tol, SPATIAL_SIGMAS * down)
                )
            else:
                ev.spatial = v > self.v_max + tol or v < self.v_min - tol

        # Likelihood of each surprise's recent moving average.
        q = 1.0
        avgs = ev.avgs
        for j, (p, w) in enumerate(LIKELIHOODS):
            buf = self.bufs[p]
            hist = buf[len(buf) - (w - 1) :] if len(buf) >= w else buf
            avg = (sum(hist) + raws[p]) / (len(hist) + 1)
            avgs[j] = avg
            if self.n >= WARMUP:
                qj = _tail(
                    avg, max(self.lik_mean[j], LIK_MIN_MEAN), max(self.lik_var[j], LIK_MIN_VAR)
                )
                q = min(q, qj)
        if self.n < WARMUP:
            q = 0.5
        q = min(1.0, q * N_LIK)
        ev.q = q
        shown = YELLOW if (q <= RED and self.q_prev <= RED) else q
        ev.score = 1.0 if ev.spatial else _log_score(shown)
        ev.sustained = 1.0 if ev.spatial else _log_score(q)
        return ev

    def _cached(self, v: float, t: float | None) -> _Eval:
        c = self._cache
        if c is not None and c[0] == v and c[1] == t and c[2] == self._ver:
            return c[3]
        ev = self._evaluate(v, t)
        self._cache = (v, t, self._ver, ev)
        return ev

    def score_one(self, x: dict[Any, Any]) -> float:
        """Anomaly score in [0, 1] of this interval (0 when the value is missing or not finite)."""
        v = self._num(x, "value")
        if v is None:
            return 0.0
        return self._cached(v, self._num(x, "t")).score

    def sustained_score_one(self, x: dict[Any, Any]) -> float:
        """The same score without the onset-only reporting (no red-to-yellow demotion).

        ``score_one`` reports an incident at its onset (later intervals of the same red run show
        0.3); this one stays high for as long as the recent surprise remains improbable, which is
        what an alert lifecycle needs to decide whether a condition still holds. Like
        ``score_one``, call it before ``learn_one`` for the interval.
        """
        v = self._num(x, "value")
        if v is None:
            return 0.0
        return self._cached(v, self._num(x, "t")).sustained

    # --- learning -------------------------------------------------------------------------------

    def learn_one(self, x: dict[Any, Any]) -> None:
        """Learn one interval; a missing or non-finite value is ignored."""
        v = self._num(x, "value")
        if v is None:
            return
        t = self._num(x, "t")
        ev = self._cached(v, t)
        self._ver += 1
        self._cache = None

        # Likelihood statistics.
        self.q_prev = ev.q
        for p, size in enumerate(BUFFER):
            buf = self.bufs[p]
            buf.append(ev.raws[p])
            if len(buf) > size:
                del buf[0]
        a = max(1.0 / (self.n + 1), 1.0 / LIK_MEMORY)
        for j in range(N_LIK):
            d = ev.avgs[j] - self.lik_mean[j]
            self.lik_mean[j] += a * d
            self.lik_var[j] = (1.0 - a) * (self.lik_var[j] + a * d * d)

        # Levels, scales and the seasonal model (in the variance-stabilised scale).
        if self.counts and not ev.counts:
            self.counts = False
            self._reset_levels()
            ev.knots = None
            ev.y = v
        y = ev.y
        if self.nl == 0:
            self.lf = self.ls = self.lvl = y
        else:
            clip_f = HUBER_K * self.sf if self.nl > 10 else math.inf
            clip_s = HUBER_K * self.ss if self.nl > 10 else math.inf
            df = min(max(y - self.lf, -clip_f), clip_f)
            ds = min(max(y - self.ls, -clip_s), clip_s)
            a_sc = max(1.0 / (self.nl + 1), SCALE_ALPHA)
            self.sf += a_sc * (abs(df) - self.sf)
            self.ss += a_sc * (abs(ds) - self.ss)
            self.lf += FAST_ALPHA * df
            self.ls += max(1.0 / (self.nl + 1), SLOW_ALPHA) * ds
            if ev.knots is not None and t is not None and self.t_prev is not None:
                dt = min(max(t - self.t_prev, 0.0), MAX_GAP)
                self.bias += BIAS_ALPHA * (y - ev.pred - self.bias)
                self._learn_season(y - ev.pred, a_sc, dt, ev.knots)
        self.nl += 1
        if t is not None:
            self.t_prev = t

        # Transitions, observed range.
        if ev.bin >= 0:
            if self.m_prev >= 0:
                base = self.m_prev * MARKOV_BINS
                self.markov[base + ev.bin] += 1.0
                row_total = sum(self.markov[base : base + MARKOV_BINS])
                if row_total > MARKOV_CAP:
                    f = MARKOV_CAP / row_total
                    for i in range(base, base + MARKOV_BINS):
                        self.markov[i] *= f
            self.m_prev = ev.bin
        if self.v_max > self.v_min:
            self.v_max -= RANGE_DECAY * (self.v_max - self.r_mid)
            self.v_min -= RANGE_DECAY * (self.v_min - self.r_mid)
        self.v_min = min(self.v_min, v)
        self.v_max = max(self.v_max, v)
        self.r_mid += max(1.0 / (self.n + 1), SLOW_ALPHA) * (v - self.r_mid)
        self.n += 1

    def _learn_season(
        self, e: float, a_sc: float, dt: float, knots: tuple[int, int, float, int, int, float]
    ) -> None:
        clip = HUBER_K * self.se if self.nl > 10 else math.inf
        self.se += a_sc * (min(abs(e), clip) - self.se)
        if dt <= 0.0:
            return
        self.lvl += min(1.0, dt / (DAY * LEVEL_DAYS)) * e
        self.days = min(self.days + dt / DAY, DAY_MEMORY)
        k0, k1, wk, h0, h1, wh = knots
        # Each knot gets dt / (knot span) of a "visit"; a day brings one visit per knot.
        visit = dt / (DAY / DAY_KNOTS)
        per_day = 1.0 / max(1.0, self.days)
        for i, w in ((k0, 1.0 - wk), (k1, wk)):
            r = min(1.0, w * visit * per_day)
            self.prof[i] += r * e
            self.prof_scale[i] += r * (abs(e) - self.prof_scale[i])
        visit_w = dt / 3600.0
        for i, w in ((h0, 1.0 - wh), (h1, wh)):
            self.week[i] += min(1.0, w * visit_w / WEEK_MEMORY) * e

    # --- protocol extras --------------------------------------------------------------------------

    @property
    def warmed_up(self) -> bool:
        return self.n >= WARMUP

    def _back(self, y: float) -> float:
        return _inv_anscombe(y) if self.counts else y

    def _centre_scale(self) -> tuple[float, float]:
        if self.nl == 0:
            return 0.0, 0.0
        centre, scale = self.ls, self.ss
        if self.t_prev is not None and self.days >= 1.0:
            t = self.t_prev
            ph = (t % DAY) / DAY * DAY_KNOTS
            k0 = int(ph) % DAY_KNOTS
            wk = ph - math.floor(ph)
            k1 = (k0 + 1) % DAY_KNOTS
            pw = (t / 3600.0 + 96.0) % WEEK_HOURS
            h0 = int(pw) % WEEK_HOURS
            wh = pw - math.floor(pw)
            centre = (
                self.lvl
                + (1.0 - wk) * self.prof[k0]
                + wk * self.prof[k1]
                + (1.0 - wh) * self.week[h0]
                + wh * self.week[(h0 + 1) % WEEK_HOURS]
            )
            scale = (1.0 - wk) * self.prof_scale[k0] + wk * self.prof_scale[k1]
        return centre, scale

    def expected(self) -> float:
        """Normal value at the latest interval's time (seasonal where known, else slow level)."""
        centre, _ = self._centre_scale()
        return self._back(centre)

    def band(self) -> tuple[float, float]:
        """``expected()`` +- the 3-scale band where surprise starts (Z0), in the value's units."""
        centre, scale = self._centre_scale()
        return self._back(centre - Z0 * scale), self._back(centre + Z0 * scale)

    # --- persistence ----------------------------------------------------------------------------

    _FIELDS = (
        "n", "nl", "counts", "t_prev", "v_min", "v_max", "r_mid", "m_prev", "q_prev",
        "lf", "sf", "ls", "ss", "lvl", "se", "bias", "days",
        "prof", "prof_scale", "week", "markov", "bufs", "lik_mean", "lik_var",
    )  # fmt: skip

    def snapshot(self) -> bytes:
        """zlib-compressed JSON of the learned state (floats round-trip exactly)."""
        state: dict[str, Any] = {"version": SNAPSHOT_VERSION}
        for name in self._FIELDS:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                value = None  # only the empty range's +-inf; restored below
            state[name] = value
        return zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 9)

    @classmethod
    def restore(cls, data: bytes) -> Self:
        state = json.loads(zlib.decompress(data))
        if state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported RateModel snapshot version {state.get('version')!r}")
        model = cls()
        for name in cls._FIELDS:
            setattr(model, name, state[name])
        if model.v_min is None:
            model.v_min = math.inf
        if model.v_max is None:
            model.v_max = -math.inf
        return model


def _log_score(q: float) -> float:
    """Numenta's log-likelihood scale: -log10(q) / 10 in [0, 1] (0.5 <=> q = 1e-5)."""
    return min(1.0, max(0.0, -math.log10(q + 1e-10) / 10.0))


def _surprise(z: float) -> float:
    if z <= Z0:
        return 0.0
    return min(1.0, (z - Z0) / Z_SPAN)


class _Eval:
    """Intermediate results of scoring one interval, reused by ``learn_one``."""

    __slots__ = (
        "avgs", "bin", "counts", "knots", "pred", "q", "raws", "score", "spatial", "sustained",
        "y",
    )  # fmt: skip

    def __init__(self) -> None:
        self.raws = [0.0, 0.0, 0.0, 0.0]
        self.avgs = [0.0] * N_LIK
        self.counts = True
        self.y = 0.0
        self.knots: tuple[int, int, float, int, int, float] | None = None
        self.pred = 0.0
        self.bin = -1
        self.spatial = False
        self.q = 1.0
        self.score = 0.0
        self.sustained = 0.0
