"""Scoring a gradient store against queries."""

from .attributor import Attributor, QueryFeatures, self_influence
from .results import SCORE_MEANING, VARIANTS, TopK

__all__ = ["Attributor", "QueryFeatures", "SCORE_MEANING", "TopK", "VARIANTS", "self_influence"]
