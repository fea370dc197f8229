"""Act on attributions: counterfactual removal and LDS, unlearning baselines,
gradient routing (ERA) and the relearning attack. See docs/unlearn.md."""

from .compare import ALL_METHODS, CompareConfig, Comparison, UnlearnSpec, compare_methods
from .lds import LDSConfig, lds, retrain_subsets
from .methods import UnlearnConfig, Unlearner
from .relearn import RelearnConfig, relearn
from .retrain import RemovalConfig, RemovalExperiment, TrainFn
from .routing import Router, RoutingConfig, ablate, expand
from .select import SelectionGrid, SelectionRule
from .train import TrainConfig, train
from .variants import VariantConfig, score_variants

__all__ = [
    "ALL_METHODS", "CompareConfig", "Comparison", "LDSConfig", "RelearnConfig", "RemovalConfig", "RemovalExperiment",
    "Router", "RoutingConfig", "SelectionGrid", "SelectionRule", "TrainConfig", "TrainFn", "UnlearnConfig", "UnlearnSpec", "Unlearner", "VariantConfig",
    "ablate", "compare_methods", "expand", "lds", "relearn", "retrain_subsets", "score_variants", "train",
]
