"""End to end: sample two sources on one prompt set, diff, label, judge, write
``diff.json``, ``samples_a.jsonl``, ``samples_b.jsonl`` and ``report.html``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import atomic_write_bytes
from .behaviours import COSINE, JACCARD, Behaviour, group_behaviours
from ..lm.embed import CachedEmbedder, Embedder, MiniLMEmbedder
from .judge import Chat, label_and_judge
from .likelihood import LikelihoodConfig, LikelihoodResult, run_likelihood
from .pipeline import DiffConfig, DiffResult, diff_texts
from .report import write_report
from .stats import STRATIFIED_TESTS
from .sources import HFSource, Source, check_pairing, read_prompts

VIEWS = ("clusters", "likelihood")


@dataclasses.dataclass
class DiffRun:
    result: DiffResult | None  # None when the clusters view was not asked for
    json_path: Path
    report_path: Path
    behaviours: list[Behaviour] = dataclasses.field(default_factory=list)
    #: the likelihood view (``views`` with ``"likelihood"``), else None
    likelihood: LikelihoodResult | None = None


def run_diff(
    source_a: Source, source_b: Source, prompts_path: str | Path | None, out: str | Path, *, n_per_prompt: int = 4, seed: int = 0,
    config: DiffConfig | None = None, embedder: Embedder | None = None, intended: str | None = None, judge_chat: Chat | None = None,
    labeller: Chat | None = None, names: tuple[str, str] = ("A", "B"), progress: bool = True,
    group_jaccard: float = JACCARD, group_cosine: float = COSINE, views: tuple[str, ...] = ("clusters",),
    likelihood: LikelihoodConfig | None = None, max_length: int = 256,
) -> DiffRun:
    """Sample (model A with ``seed``, model B with ``seed + 1``), diff, group the flagged clusters into
    behaviours (:func:`~gradtrace.diff.behaviours.group_behaviours`) and write the outputs to ``out``.

    When every sample carries a prompt id, the prompt ids are the strata of ``test="cmh"``.
    ``views``: ``clusters`` (the embedding clusters of both models' texts) and/or ``likelihood`` (B's texts
    that B finds far likelier than A does, :mod:`gradtrace.diff.likelihood`; both sources must be local
    models, scored with the chat template up to ``max_length`` tokens; settings ``likelihood``)."""
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise InputError(f"views must be a non-empty subset of {VIEWS}; got {list(views)!r}")
    if "likelihood" in views:
        for name, src in (("A", source_a), ("B", source_b)):
            if not isinstance(src, HFSource):
                raise InputError(f"the likelihood view scores texts with both models: model {name} ({src.describe()['kind']}) "
                                 "must be a local model (smollm2[+lora:DIR] or hf:DIR[+lora:DIR])")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(prompts_path) if prompts_path is not None else []
    from .sources import JsonlSource

    for name, src in (("A", source_a), ("B", source_b)):
        if not prompts and not isinstance(src, JsonlSource):
            raise InputError(f"--prompts is required: model {name} ({src.describe()['kind']}) must be sampled on a prompt set")
    samples_a = source_a.sample(prompts, n_per_prompt, seed, progress)
    samples_b = source_b.sample(prompts, n_per_prompt, seed + 1, progress)
    for name, samples in (("A", samples_a), ("B", samples_b)):
        if not samples:
            raise InputError(f"source {name} gave no texts")
    check_pairing(samples_a, samples_b)
    for name, samples in (("a", samples_a), ("b", samples_b)):
        (out / f"samples_{name}.jsonl").write_text(
            "".join(json.dumps({"prompt_id": s.prompt_id, "prompt": s.prompt, "text": s.text}) + "\n" for s in samples), encoding="utf-8")
    if embedder is None:
        embedder = CachedEmbedder(MiniLMEmbedder(progress=progress), out / "embeddings")
    with_ids = all(s.prompt_id for s in samples_a) and all(s.prompt_id for s in samples_b)
    if config is not None and config.test in STRATIFIED_TESTS and not with_ids:
        raise InputError(f"test={config.test!r} tests within prompts: every sample needs a prompt id "
                         "(jsonl sources: a 'prompt_id' field on each line)")
    strata = ([s.prompt_id for s in samples_a], [s.prompt_id for s in samples_b]) if with_ids else (None, None)
    lik = None
    if "likelihood" in views:
        (model_a, tok_a), (model_b, tok_b) = source_a.load(), source_b.load()  # type: ignore[attr-defined]
        lcfg = likelihood or LikelihoodConfig(seed=seed if config is None else config.seed)
        lik = run_likelihood(model_a, model_b, tok_a, [s.prompt for s in samples_b], [s.text for s in samples_b], config=lcfg,
                             embedder=embedder, max_length=max_length, progress=progress, cache_dir=out / "likelihood_cache",
                             model_keys=(source_a.describe(), source_b.describe()), keys_b=strata[1], tokenizer_b=tok_b)
    result = None
    behaviours: list[Behaviour] = []
    if "clusters" in views:
        result = diff_texts([s.text for s in samples_a], [s.text for s in samples_b], config=config, embedder=embedder,
                            strata_a=strata[0], strata_b=strata[1])
        label_and_judge(result, judge_chat, intended, labeller)
        behaviours = group_behaviours(result, jaccard=group_jaccard, cosine=group_cosine)
    meta: dict[str, Any] = {"source_a": source_a.describe(), "source_b": source_b.describe(), "intended": intended,
                            "n_per_prompt": n_per_prompt, "seed": seed, "views": list(views)}
    json_path = out / "diff.json"
    grouping = {"rule": "same skew and (Jaccard of text sets >= jaccard or centred centroid cosine >= cosine), single linkage",
                "jaccard": group_jaccard, "cosine": group_cosine}
    data = {**meta, **(result.to_dict() if result is not None else {}), "grouping": grouping,
            "behaviours": [b.to_dict() for b in behaviours], **({"likelihood": lik.to_dict()} if lik is not None else {})}
    atomic_write_bytes(json_path, (json.dumps(data, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    report = write_report(result, out / "report.html", intended=intended, names=names, behaviours=behaviours, likelihood=lik)
    return DiffRun(result, json_path, report, behaviours, lik)
