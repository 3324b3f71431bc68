"""Growth and memory: throughput, Redis memory and process RSS as distinct codes grow.

Used by ``bench.run`` (section ``growth``); also the replay worker every replay measurement runs
in, so that each one gets a fresh interpreter and its own RSS:

    python -m bench.memory worker --config C.yaml --backend redis --file F [--file F2] --out R.json

Growth runs on a private ``redis-server`` (the stack's ``deploy/redis/redis.conf``, its own port
and directory, no 512 MB cap): ``used_memory`` then counts only the detector's state, not other
test runs sharing the stack's Redis, and 1M codes cannot push the shared instance into OOM.

Streams (every event carries a code): slot ``i`` of a pool of ``P`` is one customer with a personal
code ``PC{i}`` of campaign ``camp-{i % 8}``, one account, device and IP, redeeming it. The *fill*
stream redeems every code once (state for ``P`` distinct codes, seen once); the *measure* stream
then redeems ``M`` codes drawn uniformly from the pool, at the same event-time rate
(``EVENT_RATE`` per second of event time, 1M events per hour). Throughput is measured on the
measure stream, with all ``P`` codes in the store.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

REPO = Path(__file__).resolve().parents[1]
PY = REPO / ".venv" / "bin" / "python"
EVENT_RATE = 1_000_000 / 3600.0  # events per second of event time in growth streams
CAMPAIGNS = 8
GROWTH_START = datetime(2026, 1, 12, 12, 0, tzinfo=UTC).timestamp()


# ------------------------------------------------------------------------------ processes --


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_kb(pid: int | str, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    """Current resident set size of a process (0 when it is gone)."""
    return _status_kb(pid, "VmRSS:")


def peak_rss_bytes(pid: int | str = "self") -> int:
    """Peak RSS since the process's exec (VmHWM; ru_maxrss would include the forking parent)."""
    return _status_kb(pid, "VmHWM:")


def wait_child(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise TimeoutError(f"{proc.args!r} did not finish within {timeout:.0f} s") from None


class PrivateRedis:
    """A redis-server of our own: the stack's config, a free port, a temporary directory."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        conf = REPO / "deploy" / "redis" / "redis.conf"
        log = (self.dir / "redis.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                str(conf),
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--maxmemory",
                "6gb",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.client = redis.Redis.from_url(self.url, socket_timeout=30)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(
                        f"private redis-server did not start: see {self.dir}"
                    ) from None
                time.sleep(0.1)
        self.version = str(self.client.info("server")["redis_version"])

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def dbsize(self) -> int:
        return int(self.client.dbsize())

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -------------------------------------------------------------------------------- streams --


def fmt_ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def uuid_like(tag: int, n: int) -> str:
    """A 36-character UUID-shaped id (the simulator's ids have this size; claims are per id)."""
    return (
        f"{tag & 0xFFFFFFFF:08x}-{(n >> 48) & 0xFFFF:04x}-4{(n >> 36) & 0xFFF:03x}-"
        f"8{(n >> 24) & 0xFFF:03x}-{n & 0xFFFFFF:012x}"
    )


def slot_code(i: int) -> str:
    return f"PC{i:08d}"


def slot_account(i: int) -> str:
    return f"acc_{i:09d}"


def slot_campaign(i: int) -> str:
    return f"camp-{i % CAMPAIGNS}"


def slot_event(i: int, n: int, ts: float, tag: int) -> bytes:
    total = 1000.0 + (i * 7919) % 9000
    return orjson.dumps(
        {
            "event_id": uuid_like(tag, n),
            "ts": fmt_ts(ts),
            "order_id": str(100_000_000 + n),
            "account_id": slot_account(i),
            "account_created_at": "2021-03-01T00:00:00Z",
            "promo_code": slot_code(i),
            "campaign_id": slot_campaign(i),
            "order_total": total,
            "discount": round(total * 0.1, 2),
            "currency": "RUB",
            "ip": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            "device_id": f"d-{i:016x}",
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def write_growth_streams(
    workdir: Path, pool: int, measure: int, seed: int, tag: int, hot: int = 0
) -> list[Path]:
    """The fill file (each code once), the measure file (``pool`` blank lines first, so its line
    offsets continue the fill's under the replay source's stored progress, then ``measure``
    uniform draws from the pool) and, when ``hot``, a second measure file drawing only from the
    first ``hot`` codes. Returns the paths."""
    fill = workdir / f"growth-{pool}-fill.jsonl"
    meas = workdir / f"growth-{pool}-measure.jsonl"
    dt = 1.0 / EVENT_RATE
    with fill.open("wb") as f:
        buf: list[bytes] = []
        for n in range(pool):
            buf.append(slot_event(n, n, GROWTH_START + n * dt, tag))
            if len(buf) >= 8192:
                f.write(b"".join(buf))
                buf.clear()
        f.write(b"".join(buf))
    rng = random.Random(seed)
    with meas.open("wb") as f:
        f.write(b"\n" * pool)
        buf = []
        for k in range(measure):
            n = pool + k
            buf.append(slot_event(rng.randrange(pool), n, GROWTH_START + n * dt, tag))
            if len(buf) >= 8192:
                f.write(b"".join(buf))
                buf.clear()
        f.write(b"".join(buf))
    files = [fill, meas]
    if hot:
        hot_path = workdir / f"growth-{pool}-hot.jsonl"
        with hot_path.open("wb") as f:
            f.write(b"\n" * (pool + measure))
            buf = []
            for k in range(measure):
                n = pool + measure + k
                buf.append(slot_event(rng.randrange(hot), n, GROWTH_START + n * dt, tag))
                if len(buf) >= 8192:
                    f.write(b"".join(buf))
                    buf.clear()
            f.write(b"".join(buf))
        files.append(hot_path)
    return files


def write_drain_stream(workdir: Path, pool: int, later_s: float, tag: int) -> tuple[Path, float]:
    """``pool`` codes once each, then a few events ``later_s`` seconds of event time later, which
    move the watermark past every window. Returns the path and the last event time."""
    path = workdir / f"drain-{pool}.jsonl"
    dt = 1.0 / EVENT_RATE
    last = GROWTH_START
    with path.open("wb") as f:
        buf: list[bytes] = []
        for n in range(pool):
            last = GROWTH_START + n * dt
            buf.append(slot_event(n, n, last, tag))
            if len(buf) >= 8192:
                f.write(b"".join(buf))
                buf.clear()
        for k in range(5):
            n = pool + k
            last = GROWTH_START + pool * dt + later_s + k
            buf.append(slot_event(k, n, last, tag))
        f.write(b"".join(buf))
    return path, last


# ------------------------------------------------------------------------- replay worker --


class _Observer:
    """Times the steady part of a replay: from the first batch's end to the last's."""

    sees_every_entity = False  # measure the pipeline as it runs without an observer

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def features(self, f: Any) -> None:
        return None

    def campaign_bucket(self, start: float, obs: Any, band: Any) -> None:
        return None

    def batch(self, stats: Any) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, stats.records)
        self.last = (now, stats.records)


def worker(argv: list[str]) -> int:
    """Replay files one after the other through ``detector.app.replay``; JSON results out."""
    ap = argparse.ArgumentParser(prog="bench.memory worker")
    ap.add_argument("--config", required=True)
    ap.add_argument("--backend", choices=("memory", "redis"), required=True)
    ap.add_argument("--file", action="append", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from detector.app import replay
    from detector.config import load_config
    from detector.logs import setup

    cfg = load_config(a.config)
    setup(cfg.logging.level, cfg.logging.format)
    client = redis.Redis.from_url(cfg.redis.url) if a.backend == "redis" else None
    res: dict[str, Any] = {"rss_start": rss_bytes(), "files": []}
    for path in a.file:
        obs = _Observer()
        t0 = time.perf_counter()
        stats = replay(cfg, path, alerts_out=None, backend=a.backend, observer=obs)
        t1 = time.perf_counter()
        item: dict[str, Any] = {
            "file": path,
            "records": stats.records,
            "ok": stats.ok,
            "late": stats.late,
            "duplicate": stats.duplicate,
            "dead_letters": sum(stats.dead_letters.values()),
            "alerts": sum(stats.alerts.values()),
            "seconds": t1 - t0,
            "events_per_s": stats.records / (t1 - t0) if t1 > t0 else 0.0,
            "rss_after": rss_bytes(),
        }
        if obs.first and obs.last and obs.last[1] > obs.first[1]:
            item["steady_events_per_s"] = (obs.last[1] - obs.first[1]) / (
                obs.last[0] - obs.first[0]
            )
        if client is not None:
            item["used_memory_after"] = int(client.info("memory")["used_memory"])
            item["dbsize_after"] = int(client.dbsize())
        res["files"].append(item)
    res["peak_rss"] = peak_rss_bytes()
    Path(a.out).write_text(json.dumps(res))
    return 0


def run_worker(
    config: Path,
    backend: str,
    files: list[Path],
    out: Path,
    timeout: float = 1800,
    wrap: list[str] | None = None,
) -> dict[str, Any]:
    """Run the replay worker in a fresh interpreter (optionally under ``wrap``, e.g. py-spy)."""
    cmd = [*(wrap or []), str(PY), "-m", "bench.memory", "worker", "--config", str(config)]
    cmd += ["--backend", backend, "--out", str(out)]
    for f in files:
        cmd += ["--file", str(f)]
    return run_json_worker(cmd, out, timeout, "replay worker")


def run_json_worker(cmd: list[str], out: Path, timeout: float, what: str) -> dict[str, Any]:
    """Run a bench worker process; its result is the JSON it writes to ``out``."""
    log = out.with_suffix(".log")
    with log.open("wb") as lf:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=lf, stderr=subprocess.STDOUT)
        wait_child(proc, timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {log.read_text()[-3000:]}")
    res: dict[str, Any] = json.loads(out.read_text())
    return res


# ---------------------------------------------------------------------------- growth run --


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def replay_config(
    redis_url: str,
    prefix: str,
    windows: dict[str, Any] | None = None,
    events: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "state": "redis",
        "redis": {"url": redis_url, "key_prefix": prefix},
        "alerts": {"kafka": False},
        "logging": {"level": "warning"},
    }
    if windows:
        cfg["windows"] = windows
    if events:
        cfg["events"] = events
    return cfg


def key_breakdown(r: redis.Redis, prefix: str, pool: int) -> dict[str, Any]:
    """Mean ``MEMORY USAGE`` of each per-code key family on a sample of the fill's slots, and of
    one dedupe claim (the claim hashes' total over their fields: claims share keys)."""
    step = max(1, pool // 200)
    slots = list(range(0, pool, step))
    fams: dict[str, list[str]] = {
        "u (code distinct)": [],
        "a (account codes)": [],
    }
    for i in slots:
        fams["u (code distinct)"].append(f"{prefix}u:{slot_code(i)}")
        fams["a (account codes)"].append(f"{prefix}a:{slot_account(i)}")
    out: dict[str, Any] = {}
    for name, keys in fams.items():
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.execute_command("MEMORY", "USAGE", k, "SAMPLES", "0")
        sizes = [int(s) for s in pipe.execute() if s is not None]
        out[name] = {
            "sampled": len(keys),
            "present": len(sizes),
            "mean_bytes": round(sum(sizes) / len(sizes), 1) if sizes else 0.0,
        }
    out["e (dedupe claims, per claim)"] = _per_field(r, f"{prefix}e:*")
    out["c (compact sets seen once, per set)"] = _per_field(r, f"{prefix}c:*")
    return out


def _per_field(r: redis.Redis, match: str) -> dict[str, Any]:
    """``MEMORY USAGE`` of every hash matching ``match`` over the fields they hold."""
    keys = list(r.scan_iter(match=match, count=1000))
    total = fields = 0
    encodings: dict[str, int] = {}
    for i in range(0, len(keys), 1000):
        pipe = r.pipeline(transaction=False)
        for k in keys[i : i + 1000]:
            pipe.execute_command("MEMORY", "USAGE", k, "SAMPLES", "0")
            pipe.hlen(k)
            pipe.object("encoding", k)
        res = pipe.execute()
        total += sum(int(x or 0) for x in res[0::3])
        fields += sum(int(x) for x in res[1::3])
        for e in res[2::3]:
            name = e.decode() if isinstance(e, bytes) else str(e)
            encodings[name] = encodings.get(name, 0) + 1
    return {
        "keys": len(keys),
        "fields": fields,
        "encodings": encodings,
        "mean_bytes": round(total / fields, 1) if fields else 0.0,
    }


@dataclass
class DrainMonitor:
    """Samples a private Redis's key count and memory until the state has expired."""

    redis: PrivateRedis
    baseline: int
    peak_keys: int
    peak_used: int
    timeout_s: float
    started: float = field(default_factory=time.monotonic)
    samples: list[dict[str, Any]] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="drain-monitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                keys, used = self.redis.dbsize(), self.redis.used_memory()
            except redis.RedisError:
                break
            t = time.monotonic() - self.started
            self.samples.append(
                {"t_s": round(t, 1), "keys": keys, "state_bytes": used - self.baseline}
            )
            if keys <= max(50, self.peak_keys // 1000) or t > self.timeout_s:
                break
            self._stop.wait(2.0)

    def result(self) -> dict[str, Any]:
        if self._thread is not None:
            self._thread.join(self.timeout_s + 10)
        last = self.samples[-1] if self.samples else {"keys": -1, "state_bytes": -1, "t_s": -1}
        drained = last["keys"] <= max(50, self.peak_keys // 1000)
        # keep the timeline short: about 20 points
        step = max(1, len(self.samples) // 20)
        return {
            "peak_keys": self.peak_keys,
            "peak_state_bytes": self.peak_used - self.baseline,
            "final_keys": last["keys"],
            "final_state_bytes": last["state_bytes"],
            "seconds_after_fill": last["t_s"],
            "drained": drained,
            "timeline": [*self.samples[::step], last]
            if self.samples[::step][-1:] != [last]
            else self.samples[::step],
        }


def growth(
    workdir: Path,
    pools: list[int],
    measure: int,
    drain_pool: int,
    seed: int,
    log: Any = print,
) -> tuple[dict[str, Any], PrivateRedis, DrainMonitor]:
    """Fill + measure per pool on a private Redis; then start the drain demonstration.

    Returns the results, the private Redis (stop it after ``monitor.result()``) and the monitor.
    """
    pr = PrivateRedis(workdir)
    out: dict[str, Any] = {
        "redis": f"private redis-server {pr.version} (deploy/redis/redis.conf, maxmemory 6gb)",
        "event_time_rate_per_s": round(EVENT_RATE, 1),
        "measure_events": measure,
        "pools": [],
    }
    tag = random.Random(seed).getrandbits(32)
    try:
        for pool in pools:
            pr.client.flushdb()
            time.sleep(0.5)
            base = pr.used_memory()
            prefix = f"bench:g{pool}:"
            hot = pools[0] if pool > pools[0] else 0
            files = write_growth_streams(workdir, pool, measure, seed + pool, tag, hot)
            cfg = write_config(workdir / f"growth-{pool}.yaml", replay_config(pr.url, prefix))
            log(
                f"  growth: {pool} codes: replaying {pool} fill + {measure} measure events"
                + (f" + {measure} on the first {hot} codes" if hot else "")
            )
            res = run_worker(cfg, "redis", files, workdir / f"growth-{pool}.json")
            f_res, m_res = res["files"][:2]
            fill_state = f_res["used_memory_after"] - base
            item = {
                "codes": pool,
                "fill_events": f_res["records"],
                "fill_events_per_s": round(f_res.get("steady_events_per_s", f_res["events_per_s"])),
                "measure_events": measure,
                "events_per_s": round(m_res.get("steady_events_per_s", m_res["events_per_s"])),
                "measure_whole_call_events_per_s": round(m_res["events_per_s"]),
                "redis_state_bytes_after_fill": fill_state,
                "redis_bytes_per_code_after_fill": round(fill_state / pool, 1),
                "redis_keys_after_fill": f_res["dbsize_after"],
                "redis_state_bytes_after_measure": m_res["used_memory_after"] - base,
                "redis_keys_after_measure": m_res["dbsize_after"],
                "rss_after_fill": f_res["rss_after"],
                "rss_after_measure": m_res["rss_after"],
                "peak_rss": res["peak_rss"],
                "alerts": f_res["alerts"] + m_res["alerts"],
                "key_sample_bytes": key_breakdown(pr.client, prefix, pool),
            }
            if hot:
                h_res = res["files"][2]
                item["hot_codes"] = hot
                item["hot_events_per_s"] = round(
                    h_res.get("steady_events_per_s", h_res["events_per_s"])
                )
            out["pools"].append(item)
            log(
                f"  growth: {pool} codes: {item['events_per_s']} ev/s, "
                f"{item['redis_bytes_per_code_after_fill']} B/code, "
                f"keys {item['redis_keys_after_fill']}"
            )
            for f in files:
                f.unlink(missing_ok=True)
        # Drain: small windows, so that TTLs (wall clock in Redis) pass within a minute.
        pr.client.flushdb()
        time.sleep(0.5)
        base = pr.used_memory()
        windows = {
            "bucket_s": 10,
            "recent_s": 10,
            "short_s": 20,
            "long_s": 30,
            "memory_s": 60,
            "campaign_memory_s": 60,
            "household_s": 60,
        }
        events = {"allowed_lateness_s": 10}
        later = 3 * 60.0
        path, _ = write_drain_stream(workdir, drain_pool, later, tag ^ 0x5A5A)
        cfg = write_config(
            workdir / "drain.yaml", replay_config(pr.url, "bench:drain:", windows, events)
        )
        log(f"  growth: drain: {drain_pool} codes with windows {windows}")
        res = run_worker(cfg, "redis", [path], workdir / "drain.json")
        f_res = res["files"][0]
        mon = DrainMonitor(pr, base, f_res["dbsize_after"], f_res["used_memory_after"], 150.0)
        mon.start()
        out["drain"] = {
            "codes": drain_pool,
            "windows": windows,
            "events": events,
            "later_events_after_s": later,
            "ttl_note": "Redis expires by wall clock: the longest TTL is windows.memory_s = "
            "windows.campaign_memory_s = windows.household_s = 60 s "
            "(retention = long_s + lateness + 2 buckets = 60 s; dedupe horizon 40 s)",
        }
        path.unlink(missing_ok=True)
    except BaseException:
        pr.stop()
        raise
    return out, pr, mon


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    print("usage: python -m bench.memory worker ... (growth runs from python -m bench.run)")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
