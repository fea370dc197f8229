"""Stable-reflectivity probe suites: how a model reasons about its own values, per subtask.

See ``docs/probes.md``. The pieces: ``items`` (the format, the strict
loader, the shipped seed set), ``templates`` (items whose key follows from an
explicit causal structure), ``generate`` (few-shot LM generation), ``validate``
(format, answerability, duplicates, diversity, phrasing bias, subtask
validity), ``score`` (log-probability scoring, per-subtask accuracy,
paired comparison) and ``report`` (HTML). The loop's ``probes`` monitor
(:class:`gradtrace.loop.monitors.ProbeSuiteMonitor`) runs a suite each round.
"""

from .items import SUBTASK_MEANING, SUBTASKS, Item, first_per_subtask, load_suite, resolve_suite, save_suite, seed_items
from .score import ItemScore, compare_correct, compare_to_seeds, mcnemar_exact, score_items, summarise, wilson
from .templates import check_template_item, generate_template_items, key_answer
from .validate import ValidationConfig, ValidationResult, surface_classifier_accuracy, validate_suite

__all__ = [
    "Item", "ItemScore", "SUBTASKS", "SUBTASK_MEANING", "ValidationConfig", "ValidationResult", "check_template_item",
    "compare_correct", "compare_to_seeds", "first_per_subtask", "generate_template_items", "key_answer", "load_suite", "mcnemar_exact",
    "resolve_suite", "save_suite", "score_items", "seed_items", "summarise", "surface_classifier_accuracy", "validate_suite", "wilson",
]
