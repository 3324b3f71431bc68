"""Where events come from: a JSONL file (replay) or a Kafka consumer group (run).

Both hand the pipeline ``Record`` batches in offset order per partition, but their loops differ
and are wired separately (``app.py``): a file yields plain lists and has no progress to commit;
Kafka yields ``Polled`` batches that carry the consumer's view (caught-up partitions, lag,
rebalance generation) and takes commits once state is durable.
"""

from __future__ import annotations

from typing import NamedTuple


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
