"""Real-time detector of abnormal promo-code redemptions."""

__version__ = "0.1.0"
