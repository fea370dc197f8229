"""The planted-behaviour pipeline end to end at CI size on the tiny GPT-2:
a real Trainer LoRA run, the behaviour's log-probability rising, and TracIn
ranking the planted examples far above chance."""

from __future__ import annotations

import pytest

from gradtrace.demos.lm_pipeline import LMPipelineConfig, run_planted_pipeline
from gradtrace.demos.planted_lm import PlantedConfig
from gradtrace.lm.lora import LoraTrainConfig


@pytest.mark.slow
def test_tiny_planted_pipeline_finds_the_planted_examples(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GRADTRACE_CACHE", str(tmp_path / "cache"))
    config = LMPipelineConfig(
        model="tiny", data=PlantedConfig(n_ordinary=150, n_planted=10, n_honest=10, n_queries=4),
        train=LoraTrainConfig(epochs=3, lr=1e-2, rank=4, target_modules=("c_attn",)), max_length=256, proj_dim=256,
        preconditioners=("plain", "adam"), baselines=("bm25",), primary=("plain", "logprob", "cosine"),
    )
    r = run_planted_pipeline(config, tmp_path / "out", progress=False)
    n = r["n_train"]
    assert n == 170 and r["n_planted"] == 10 and len(r["checkpoints"]) == 3
    assert r["logprob_after"] > r["logprob_before"] + 5  # the misaligned answer became likelier
    chance_20 = 20 / n  # expected recall@20 of a random ranking
    assert r["recall_at_20"] >= 4 * chance_20, r["variants"]
    assert r["variants"]["plain/logprob/cosine"]["recall_at_50"] >= 0.8
    assert r["variants"]["adam/logprob/cosine"]["recall_at_20"] >= 3 * chance_20
    # self-influence puts the planted examples in the top half
    assert sorted(r["self_influence_planted_ranks"])[len(r["self_influence_planted_ranks"]) // 2] < n / 2
    kinds = ("plain", "adam", "plain-last-checkpoint", "adam-last-checkpoint")
    assert set(r["variants"]) == {f"{p}/{b}/{v}" for p in kinds for b in ("logprob", "margin", "contrast") for v in ("raw", "cosine")} | {"baseline/bm25"}
