"""The protocol every online model of the detector follows.

It is River's ``AnomalyDetector`` API (``learn_one`` / ``score_one`` on a dict of features) plus
what a long-running service needs: a byte snapshot to persist learned state in the store, and a
warm-up flag so that a model with too little history never pages.
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable


@runtime_checkable
class OnlineModel(Protocol):
    """A per-campaign streaming model fed one aggregated interval at a time.

    ``x`` always carries ``"value"`` (the interval's figure, e.g. redemptions per bucket or a
    discount ratio) and may carry ``"t"`` (the interval's start as local-time seconds since the
    epoch, for time-of-day context). ``score_one`` must be called before ``learn_one`` for the same
    interval (no look-ahead) and returns a score in [0, 1]; it never mutates ``x``.
    """

    def learn_one(self, x: dict[str, float]) -> None: ...

    def score_one(self, x: dict[str, float]) -> float: ...

    @property
    def warmed_up(self) -> bool:
        """True once the model has seen enough intervals for its score to be trusted."""
        ...

    def expected(self) -> float:
        """The model's current estimate of a normal value (for summaries and plots)."""
        ...

    def band(self) -> tuple[float, float]:
        """A (low, high) range of normal values around ``expected()`` (for plots)."""
        ...

    def snapshot(self) -> bytes:
        """Serialise the learned state; ``restore(snapshot())`` scores identically."""
        ...

    @classmethod
    def restore(cls, data: bytes) -> Self: ...
