"""Behavioural diff: what did a round of training change? Sample two models,
embed, cluster, test each cluster's share, label and judge the skewed ones."""

from .cluster import ClusterConfig
from ..lm.embed import CachedEmbedder, HashingEmbedder, MiniLMEmbedder
from .pipeline import ClusterRecord, DiffConfig, DiffResult, diff_texts

__all__ = ["CachedEmbedder", "ClusterConfig", "ClusterRecord", "DiffConfig", "DiffResult", "HashingEmbedder", "MiniLMEmbedder", "diff_texts"]
