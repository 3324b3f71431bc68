"""Where events come from: a JSONL file (replay) or a Kafka consumer group (run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol


class Record(NamedTuple):
    """One message as received; ``offset`` is the line index for files.

    A named tuple, not a frozen dataclass: one is made per message, and a tuple is built
    several times faster.
    """

    value: bytes | None
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp_ms: int | None = None


class Source(Protocol):
    name: str
    """Identifies the source's progress in the store (e.g. ``kafka:group:topic``)."""

    def batches(self) -> Iterator[list[Record]]:
        """Batches of records in offset order per partition; empty lists while idle."""
        ...

    def commit(self, offsets: dict[int, int]) -> None:
        """Tell the source that state covers records before these next offsets."""
        ...

    def close(self) -> None: ...
