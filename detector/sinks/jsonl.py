"""Alerts and dead letters as JSON lines in files."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import orjson
import structlog

from detector.alerts.record import Alert
from detector.sources.base import Record

log = structlog.get_logger(__name__)


class JsonlAlertSink:
    """Appends alert records; one already in the file (after a crash) is not written again."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._seen: set[tuple[str, str]] = set()
        if self._path.exists():
            _cut_torn_tail(self._path)
            with self._path.open("rb") as f:
                for line in f:
                    try:
                        obj = orjson.loads(line)
                        self._seen.add((obj["alert_id"], obj["status"]))
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue  # not ours (edited by hand): left as it is
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[bytes] = self._path.open("ab")

    def write(self, alerts: Sequence[Alert]) -> None:
        wrote = False
        for a in alerts:
            k = (a.alert_id, a.status)
            if k in self._seen:
                continue
            self._seen.add(k)
            self._f.write(a.to_json() + b"\n")
            wrote = True
        if wrote:
            self._f.flush()

    def close(self) -> None:
        self._f.close()


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline: a write cut short by a crash.

    Its record is still in the outbox (acknowledged only after every sink wrote it), so it is
    written again, whole, on its own line.
    """
    with path.open("r+b") as f:
        size = f.seek(0, 2)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            nl = f.read(end - start).rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                break
            end = start
        else:
            f.truncate(0)
        log.warning("alerts file: cut a torn last line (a crash mid-write)", path=str(path))


class StdoutAlertSink:
    """One human line per alert, for `detector replay`/`demo` without --alerts-out."""

    def __init__(self, stream: IO[str]) -> None:
        self._s = stream

    def write(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            self._s.write(
                f"{a.detected_at} {a.status.upper():8} {a.severity:6} {a.rule:17} "
                f"{a.scope}={a.key}  {a.summary if a.status == 'firing' else ''}\n"
            )
        self._s.flush()

    def close(self) -> None:
        return None


class JsonlDeadLetterSink:
    """CONTRACT.md §3 replay form: ``{"line", "reason", "detail", "raw"}`` per bad line.

    ``raw`` is the line as text; a line that is not UTF-8 also gets ``raw_base64`` with its exact
    bytes (an added, optional field).
    """

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[bytes] = Path(path).open("ab")  # noqa: SIM115 - held open until close()

    def send(self, record: Record, reason: str, detail: str) -> None:
        raw = record.value or b""
        obj: dict[str, object] = {
            "line": record.offset + 1,
            "reason": reason,
            "detail": detail,
            "raw": raw.decode("utf-8", errors="replace"),
        }
        if reason == "not_utf8":
            obj["raw_base64"] = base64.b64encode(raw).decode()
        self._f.write(orjson.dumps(obj) + b"\n")

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class NullDeadLetterSink:
    """Counts only (the summary and metrics still report every bad line)."""

    def send(self, record: Record, reason: str, detail: str) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None
