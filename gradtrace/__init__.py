"""gradtrace: trace model behaviour back to training data, and act on it."""

from .checkpoints import CheckpointRef, checkpoints_from_dir, checkpoints_from_list, load_checkpoint
from .config import FeaturizeConfig
from .errors import CheckpointError, ConfigMismatchError, GradtraceError, InputError, StoreError
from .featurize import featurize
from .grads.projection import ProjectionConfig
from .scoring import Attributor, QueryFeatures, TopK, fit_factors, self_influence, self_influence_from_checkpoints
from .store import GradientStore
from .task import Behaviour, ClassificationTask, LogitMarginBehaviour, LossBehaviour, Task

__version__ = "0.1.0"

__all__ = [
    "Attributor", "Behaviour", "CheckpointError", "CheckpointRef", "ClassificationTask", "ConfigMismatchError",
    "FeaturizeConfig", "GradientStore", "GradtraceError", "InputError", "LogitMarginBehaviour", "LossBehaviour",
    "ProjectionConfig", "QueryFeatures", "StoreError", "Task", "TopK", "checkpoints_from_dir",
    "checkpoints_from_list", "featurize", "fit_factors", "load_checkpoint", "self_influence", "self_influence_from_checkpoints",
]
