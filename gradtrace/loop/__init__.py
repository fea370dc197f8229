"""Supervise iterated self-training: run the loop, watch drift monitors, stop on a breach.

See ``docs/loop.md``. The pieces: :class:`SelfTrainingLoop` (the loop),
``monitors`` (what is measured each round), ``stop`` (when to halt),
``curation`` (what becomes the next round's data), ``callback`` (the same
monitors in a Hugging Face Trainer or a plain training loop),
``dashboard`` (the HTML page) and ``trace`` (TracIn through the rounds; the
stop trace: which rounds' data drove the monitor that fired).
"""

from .config import (
    DataConfig, GenerationConfig, LoopConfig, LoopGenerationConfig, LoopTrainConfig, ModelConfig, StopTraceConfig, TrainConfig, read_toml,
)
from .curation import Compose, Dedupe, JudgeFilter, LikelihoodJudge, PreferenceFilter, QualityFilter
from .monitors import (
    AttributeRates, ClusterShift, Diversity, EmbeddingProbe, HeldoutNLL, LLMClassifier, Monitor, Observation,
    RegexClassifier, RepresentationDrift,
)
from .runner import LoopResult, SelfTrainingLoop
from .stop import StopEvent, StopRule, first_stop

__all__ = [
    "AttributeRates", "ClusterShift", "Compose", "DataConfig", "Dedupe", "Diversity", "EmbeddingProbe", "GenerationConfig",
    "HeldoutNLL", "JudgeFilter", "LLMClassifier", "LikelihoodJudge", "LoopConfig", "LoopGenerationConfig", "LoopResult", "LoopTrainConfig", "ModelConfig", "Monitor",
    "Observation", "PreferenceFilter", "QualityFilter", "RegexClassifier", "RepresentationDrift", "SelfTrainingLoop",
    "StopEvent", "StopRule", "StopTraceConfig", "TrainConfig", "first_stop", "read_toml",
]
