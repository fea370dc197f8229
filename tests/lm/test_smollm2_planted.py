"""The planted-behaviour pipeline on the real SmolLM2 at CI size (150
ordinary, 10 planted and 15 honest examples on the same topic, 2 epochs of
LoRA on CPU, about 2 minutes): the misaligned answer becomes likelier, and
TracIn with the ``contrast`` behaviour finds more of the planted examples in
its top 10 (as many as there are planted examples) than BM25 or MiniLM on the
same queries. Top 10 rather than 20: 25 examples share the topic, so a top
20 would credit any method that finds the topic."""

from __future__ import annotations

import pytest

from gradtrace.demos.lm_pipeline import LMPipelineConfig, run_planted_pipeline
from gradtrace.demos.planted_lm import PlantedConfig
from gradtrace.lm.lora import LoraTrainConfig
from gradtrace.models.zoo import smollm2_dir


def recall_at_planted(ranks: list[int]) -> float:
    """Share of the planted examples ranked within the first len(ranks)."""
    return sum(r <= len(ranks) for r in ranks) / len(ranks)


@pytest.mark.slow
def test_smollm2_planted_examples_are_found_above_the_baselines(tmp_path, monkeypatch) -> None:
    model_dir = smollm2_dir()  # the shared rebuilt model; only the fine-tuning run is cached under tmp_path
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / model_dir.name).symlink_to(model_dir, target_is_directory=True)
    monkeypatch.setenv("GRADTRACE_CACHE", str(tmp_path / "cache"))
    config = LMPipelineConfig(
        model="smollm2", data=PlantedConfig(n_ordinary=150, n_planted=10, n_honest=15, n_queries=10),
        train=LoraTrainConfig(epochs=2, lr=3e-3, layers=tuple(range(26, 30))), proj_dim=512,
        preconditioners=("plain",), baselines=("bm25", "minilm"), primary=("plain", "contrast", "raw"),
    )
    r = run_planted_pipeline(config, tmp_path / "out", progress=False)
    assert r["n_train"] == 175 and r["n_planted"] == 10 and len(r["checkpoints"]) == 3
    assert r["logprob_after"] > r["logprob_before"] + 5
    v = r["variants"]
    ours = recall_at_planted(v["plain/contrast/raw"]["planted_ranks"])
    bm25 = recall_at_planted(v["baseline/bm25"]["planted_ranks"])
    minilm = recall_at_planted(v["baseline/minilm"]["planted_ranks"])
    assert ours >= 0.7 and ours > bm25 and ours > minilm, {k: x["planted_ranks"] for k, x in v.items()}
