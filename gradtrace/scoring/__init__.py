"""Scoring a gradient store against queries."""

from .attributor import Attributor, QueryFeatures, self_influence
from .direct import self_influence_from_checkpoints
from .results import SCORE_MEANING, VARIANTS, TopK

__all__ = ["Attributor", "QueryFeatures", "SCORE_MEANING", "TopK", "VARIANTS", "self_influence", "self_influence_from_checkpoints"]
