"""Replay source: a JSONL file (or stdin) read in order, one line per record."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from detector.errors import SourceError
from detector.sources.base import Record


class FileSource:
    def __init__(self, path: str, batch_size: int = 5000, skip: int = 0) -> None:
        self.name = "replay"
        self._path = path
        self._batch = batch_size
        self._skip = skip

    def _open(self) -> IO[bytes]:
        if self._path == "-":
            return sys.stdin.buffer
        try:
            return Path(self._path).open("rb")
        except OSError as e:
            raise SourceError(f"cannot read events file {self._path!r}: {e.strerror}") from None

    def batches(self) -> Iterator[list[Record]]:
        f = self._open()
        try:
            batch: list[Record] = []
            for i, line in enumerate(f):
                if i < self._skip:
                    continue
                value = line.rstrip(b"\r\n")
                if not value.strip():
                    continue  # blank lines are not events
                batch.append(Record(value, self._path, 0, i))
                if len(batch) >= self._batch:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            if f is not sys.stdin.buffer:
                f.close()
