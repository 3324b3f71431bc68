"""Online models: per-campaign baselines fed one aggregated bucket at a time."""

from detector.models.rate import RateModel
from detector.models.ratio import RatioBaseline

ALL_MODELS = (RateModel, RatioBaseline)

__all__ = ["ALL_MODELS", "RateModel", "RatioBaseline"]
