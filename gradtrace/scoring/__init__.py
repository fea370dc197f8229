"""Scoring a gradient store against queries."""

from .attributor import Attributor, QueryFeatures, self_influence, self_influence_by_checkpoint
from .direct import self_influence_from_checkpoints
from .factors import fit_factors
from .methods import ScoreMethod, available_methods, get_method, register_method
from .results import SCORE_MEANING, VARIANTS, TopK

__all__ = [
    "Attributor", "QueryFeatures", "SCORE_MEANING", "ScoreMethod", "TopK", "VARIANTS", "available_methods", "fit_factors", "get_method",
    "register_method", "self_influence", "self_influence_by_checkpoint", "self_influence_from_checkpoints",
]
