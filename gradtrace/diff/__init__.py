"""Behavioural diff: what did a round of training change? Sample two models,
embed, cluster, test each cluster's share, label and judge the skewed ones."""

from .cluster import ClusterConfig
from ..lm.embed import CachedEmbedder, HashingEmbedder, MiniLMEmbedder
from .pipeline import ClusterMembers, ClusterRecord, DiffConfig, DiffResult, diff_texts
from .behaviours import Behaviour, group_behaviours
from .likelihood import LikelihoodConfig, LikelihoodResult, likelihood_view, run_likelihood, score_texts

__all__ = ["Behaviour", "CachedEmbedder", "ClusterConfig", "ClusterMembers", "ClusterRecord", "DiffConfig", "DiffResult", "HashingEmbedder",
           "LikelihoodConfig", "LikelihoodResult", "MiniLMEmbedder", "diff_texts", "group_behaviours", "likelihood_view", "run_likelihood",
           "score_texts"]
