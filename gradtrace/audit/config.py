"""Settings of an audit (every one is part of the cache key of the stages it affects)."""

from __future__ import annotations

import dataclasses

from ..configbase import ConfigBase, boolean, int_at_least, integer, non_negative_int, one_of, positive_int, subset_of
from ..errors import InputError
from ..diff.likelihood import LikelihoodConfig
from ..diff.pipeline import DiffConfig
from ..lm.sample import SamplingConfig

PROJECTIONS = ("auto", "kronecker", "dense", "none")
VIEWS = ("clusters", "likelihood")
#: the attribution target of a behaviour skewed to B (docs/audit.md, "How the target is built")
TARGETS = ("logprob", "contrast")


@dataclasses.dataclass(frozen=True)
class AuditConfig(ConfigBase):
    """What an audit does.

    ``n_per_prompt``: answers sampled per prompt from each model (A with
    ``seed``, B and every retrained B with ``seed + 1``). ``diff``: the diff's
    settings (both levels, held-out halves, FDR ``diff.alpha``).
    ``max_queries``: B texts of a behaviour used as its attribution target;
    ``target``: ``logprob`` (log p(B's text, cut after the sentence that
    shows the behaviour | its prompt); the default, chosen on development
    data) or ``contrast`` (the same minus half the log-probability of A's
    answer to the prompt).
    ``top_k``: proponents listed per behaviour. ``verify_k``: examples removed
    by the verification (0: no verification); ``verify_top``: how many
    behaviours skewed to B are verified (highest ranked first);
    ``verify_seed``: seed of the random removal. ``max_length`` and
    ``as_chat``: how training examples are tokenized (as in the run).
    ``projection``/``dim``/``proj_seed``: the gradient store's projection
    (``auto``: ``kronecker`` for a LoRA run, whose adapters are linear layers;
    ``dense`` for a full run, which suits small models only);
    ``featurize_batch``: examples per featurize batch. ``views``: ``clusters``
    (the diff of both models' texts; always) and optionally ``likelihood`` (B's texts that B finds
    far likelier than A does, :mod:`gradtrace.diff.likelihood`, settings
    ``likelihood``; its flagged clusters become behaviours too).
    ``likelihood_batch``: texts scored together.
    """

    n_per_prompt: int = 4
    seed: int = 0
    generation: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    diff: DiffConfig = dataclasses.field(default_factory=DiffConfig)
    max_queries: int = 16
    target: str = "logprob"
    top_k: int = 10
    verify_k: int = 0
    verify_top: int = 2
    verify_seed: int = 0
    max_length: int = 256
    as_chat: bool = True
    projection: str = "auto"
    dim: int = 1024
    proj_seed: int = 0
    featurize_batch: int = 8
    views: tuple[str, ...] = ("clusters", "likelihood")
    likelihood: LikelihoodConfig = dataclasses.field(default_factory=LikelihoodConfig)
    likelihood_batch: int = 8

    _checks = {
        "n_per_prompt": positive_int, "seed": integer, "max_queries": positive_int, "target": one_of(TARGETS), "top_k": positive_int,
        "verify_k": non_negative_int, "verify_top": positive_int, "verify_seed": integer, "max_length": int_at_least(2),
        "as_chat": boolean, "projection": one_of(PROJECTIONS), "dim": positive_int, "proj_seed": integer,
        "featurize_batch": positive_int, "views": subset_of(VIEWS), "likelihood_batch": positive_int,
    }

    def _check(self) -> None:
        if "clusters" not in self.views:
            raise InputError(f"views must include 'clusters' (the audit's diff and its re-diffs); got {list(self.views)!r}")


__all__ = ["AuditConfig", "PROJECTIONS", "TARGETS"]
