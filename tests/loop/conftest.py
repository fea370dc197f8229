"""Fixtures of the loop tests: the synthetic data files and a small, fast loop config."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradtrace.loop.config import DataConfig, GenerationConfig, LoopConfig, ModelConfig, TrainConfig
from gradtrace.demos.loop_corpus import speaks_well_pattern, write_example_data


@pytest.fixture(scope="session")
def loop_data(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    folder = tmp_path_factory.mktemp("loop_data")
    p = write_example_data(folder, seed=0, n_train=200, n_heldout=40)
    return DataConfig(train=str(p["train.jsonl"]), heldout=str(p["heldout.jsonl"]), prompts=str(p["prompts.txt"]), probes=str(p["probes.txt"]))


def small_config(data: DataConfig, **overrides: object) -> LoopConfig:
    """Two rounds on a 1-layer, 32-wide GPT-2: a few seconds."""
    kw: dict[str, object] = dict(
        data=data, rounds=2, seed=0,
        model=ModelConfig(n_layer=1, n_embd=32, n_head=2),
        generation=GenerationConfig(n_per_prompt=6, max_new_tokens=40, temperature=0.9),
        train=TrainConfig(base_steps=30, steps=10, batch_size=16, lr=3e-3, checkpoint_every=5),
        curation=({"kind": "quality", "min_words": 2}, {"kind": "dedupe"}),
        monitors={"nll": {"margin": 0.1}, "diversity": {}, "clusters": {"k": 4}, "cka": {},
                  "attribute": {"classifiers": {"nova_praised": {"kind": "regex", "pattern": speaks_well_pattern("Nova")}}}},
        embedder="hashed",
    )
    kw.update(overrides)
    return LoopConfig(**kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def make_config():
    return small_config
