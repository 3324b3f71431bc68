"""Online models: per-campaign baselines fed one aggregated bucket at a time.

Both follow :class:`detector.models.base.OnlineModel` (River's ``AnomalyDetector`` API plus
warm-up, ``expected``/``band`` and byte snapshots).
"""

from detector.models.discount import DiscountBaseline
from detector.models.rate import RateModel

#: Every model class, for the contract tests.
ALL_MODELS = (RateModel, DiscountBaseline)

__all__ = ["ALL_MODELS", "DiscountBaseline", "RateModel"]
