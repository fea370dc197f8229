"""ERA vs unlearning baselines on a small transformer: forget a topic.

A seeded synthetic story corpus: short stories built from shared grammar and
topic-specific words; one topic (``dragons``: knights, castles, swords...) is
the forget topic. The model is the zoo's tiny GPT-2 on the byte tokenizer.
Forget labels are per token: the positions that predict a byte of a
dragon-topic word (shared grammar and names are not labelled), as in ERA.
Metrics are mean per-token negative log-likelihoods on held-out stories:
forget (dragon stories; higher is better forgotten, the attacker wants it
low) and retain (the other topics; lower is better). Every method's settings
are chosen by one rule (:data:`LM_RULE`) on separate validation stories:
the highest forget NLL whose retain NLL is at most 1.1 x the base model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..unlearn.compare import CompareConfig, UnlearnSpec
from ..unlearn.methods import UnlearnConfig
from ..unlearn.relearn import RelearnConfig
from ..unlearn.routing import RoutingConfig
from ..unlearn.select import SelectionGrid, SelectionRule
from ..unlearn.train import TrainConfig

TOPICS: dict[str, dict[str, list[str]]] = {
    "dragons": {"place": ["castle", "cave", "tower"], "thing": ["dragon", "sword", "knight", "shield"],
                "verb": ["fought", "tamed", "chased"], "adj": ["fiery", "scaly", "brave"]},
    "sea": {"place": ["beach", "harbor", "boat"], "thing": ["fish", "shell", "wave", "crab"],
            "verb": ["caught", "found", "watched"], "adj": ["salty", "blue", "wet"]},
    "garden": {"place": ["garden", "meadow", "field"], "thing": ["flower", "bee", "tree", "seed"],
               "verb": ["planted", "picked", "watered"], "adj": ["green", "sweet", "tall"]},
    "kitchen": {"place": ["kitchen", "bakery", "market"], "thing": ["bread", "cake", "apple", "soup"],
                "verb": ["baked", "cooked", "tasted"], "adj": ["warm", "tasty", "soft"]},
}
NAMES = ["Tom", "Mia", "Sam", "Lily", "Ben", "Zoe"]
TEMPLATES = [
    "{name} went to the {place}. {name} saw a {adj} {thing} and {verb} it.",
    "One day {name} {verb} a {thing} at the {place}. The {thing} was {adj}.",
    "At the {place}, {name} met a {adj} {thing}. {name} {verb} the {thing}.",
]
FORGET_TOPIC = "dragons"
#: retain NLL (validation) at most 1.1 x the base model's
LM_RULE = SelectionRule(retain_tolerance=0.1, relative=True, retain_higher_is_better=False)
#: lr x steps for every fine-tuning baseline; coherence steps for ERA. A first
#: grid starting at lr 3e-5 / 20 steps had only its smallest point admissible
#: for GradDiff and NPO (none for GA), so it was widened downwards to bracket
#: the admissible region -- in the baselines' favour.
LM_GRID = SelectionGrid(lrs=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3), steps=(5, 10, 20, 40, 80))
#: ERA's grid was widened upwards (it stopped at 160) for the same reason: at 160
#: steps ERA's retain NLL was still falling and above the limit for 2 of 3 seeds.
LM_ERA_GRID = SelectionGrid(steps=(20, 40, 80, 160, 320))


def make_stories(n: int, topic: str, seed: int, exclude: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """``n`` distinct stories of one topic, none in ``exclude``, drawn with a
    local seeded generator (distinct, so no example is both forget and retain
    and no held-out story was trained on)."""
    rng = np.random.default_rng(seed)
    words = TOPICS[topic]
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        fill = {k: words[k][rng.integers(len(words[k]))] for k in words}
        story = TEMPLATES[rng.integers(len(TEMPLATES))].format(name=NAMES[rng.integers(len(NAMES))], **fill)
        if story not in seen:
            seen.add(story)
            out.append(story)
    return out


class TokenLMTask:
    """Mean next-token NLL per sequence of ``[b, T]`` token ids (pad ignored)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def per_example_loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        logits = model(batch, attention_mask=(batch != self.pad_id).long()).logits[:, :-1]
        target = batch[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none").view(target.shape)
        mask = (target != self.pad_id).to(nll.dtype)
        return (nll * mask).sum(1) / mask.sum(1).clamp_min(1)


def topic_token_weights(stories: list[str], topic: str, length: int) -> Tensor:
    """``[n, length]``: 1 at positions predicting a byte of one of ``topic``'s
    words. With :func:`encode` (eos first, one token per ASCII byte), the
    byte at character ``i`` is token ``i + 1``, predicted at position ``i``."""
    words = sorted({w for ws in TOPICS[topic].values() for w in ws}, key=len, reverse=True)
    out = torch.zeros(len(stories), length, dtype=torch.float64)
    for n, story in enumerate(stories):
        for w in words:
            start = story.find(w)
            while start >= 0:
                out[n, start : min(start + len(w), length)] = 1.0
                start = story.find(w, start + 1)
    return out


def encode(stories: list[str], tokenizer: Any, length: int) -> Tensor:
    ids = torch.full((len(stories), length), tokenizer.pad_token_id, dtype=torch.long)
    for i, s in enumerate(stories):
        toks = ([tokenizer.eos_token_id] + tokenizer(s)["input_ids"] + [tokenizer.eos_token_id])[:length]
        ids[i, : len(toks)] = torch.tensor(toks)
    return ids


def lm_forget_spec(label_fraction: float = 1.0, seed: int = 0, n_per_topic: int = 200, steps: int = 500, length: int = 72) -> UnlearnSpec:
    from ..models.zoo import byte_tokenizer, tiny_gpt2

    tok = byte_tokenizer()
    train_text, labels = [], []
    for t, topic in enumerate(TOPICS):
        train_text += make_stories(n_per_topic, topic, seed=1000 + t)
        labels += [topic == FORGET_TOPIC] * n_per_topic
    ids = encode(train_text, tok, length)
    forget = torch.tensor(labels)
    rng = np.random.default_rng(seed)
    f_idx = np.nonzero(forget.numpy())[0]
    chosen = rng.choice(f_idx, int(round(label_fraction * len(f_idx))), replace=False)
    weights = torch.zeros(ids.shape, dtype=torch.float64)
    chosen_t = torch.as_tensor(chosen)
    weights[chosen_t] = topic_token_weights([train_text[i] for i in chosen], FORGET_TOPIC, length)
    task = TokenLMTask(tok.pad_token_id)
    trained = set(train_text)
    eval_text = make_stories(100, FORGET_TOPIC, seed=2000, exclude=trained)
    forget_eval = encode(eval_text, tok, length)
    retain_text = sum((make_stories(40, t, seed=2001 + i, exclude=trained) for i, t in enumerate(TOPICS) if t != FORGET_TOPIC), [])
    retain_eval = encode(retain_text, tok, length)
    pool_text = make_stories(64, FORGET_TOPIC, seed=3000, exclude=trained | set(eval_text))
    pool = encode(pool_text, tok, length)
    # validation stories (choosing settings): distinct from training, evaluation and attack data
    forget_val = encode(make_stories(60, FORGET_TOPIC, seed=4000, exclude=trained | set(eval_text) | set(pool_text)), tok, length)
    retain_val = encode(sum((make_stories(20, t, seed=4001 + i, exclude=trained | set(retain_text))
                             for i, t in enumerate(TOPICS) if t != FORGET_TOPIC), []), tok, length)

    def nll(data: Tensor) -> Any:
        def metric(model: nn.Module) -> float:
            with torch.no_grad():
                return float(task.per_example_loss(model, data).mean())
        return metric

    return UnlearnSpec(
        init=lambda s: tiny_gpt2(n_layer=2, n_embd=64, n_head=4, n_positions=length, seed=s),
        task=task, train_data=ids, forget_weights=weights, relearn_pool=pool,
        forget_metric=nll(forget_eval), retain_metric=nll(retain_eval),
        train_config=TrainConfig(steps=steps, lr=3e-3, batch_size=32, optimizer="adamw", seed=seed),
        attacker_maximises=False, name="tiny GPT-2 (forget the dragon topic)",
        select_forget_metric=nll(forget_val), select_retain_metric=nll(retain_val),
    )


def lm_compare_config(seed: int = 0) -> CompareConfig:
    mlps = ("transformer.h.0.mlp.*", "transformer.h.1.mlp.*")
    return CompareConfig(
        unlearn={
            "ga": UnlearnConfig("ga", lr=1e-3, steps=20, batch_size=16, seed=seed),
            "graddiff": UnlearnConfig("graddiff", lr=1e-3, steps=60, batch_size=16, seed=seed),
            "npo": UnlearnConfig("npo", lr=1e-3, steps=60, batch_size=16, seed=seed),
            "rmu": UnlearnConfig("rmu", lr=1e-3, steps=60, batch_size=16, seed=seed, rmu_layer="transformer.h.1",
                                 rmu_params=mlps, rmu_steering=20.0, rmu_alpha=10.0),
        },
        routing=RoutingConfig(
            layers=("transformer.h.0.mlp.c_fc:transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_fc:transformer.h.1.mlp.c_proj"),
            # chosen after benchmarks/era_lm_probe.py on development seeds 5-6 (not the reported seeds): the highest
            # validation forget NLL of the probed settings, retain admissible on seed 5 (0.003 over the limit on seed 6);
            # its relearning numbers there were seen too, see docs/unlearn.md. Retain tokens update the new units at 0.3
            # of the rate, and the L1 penalty (taken before the mask) keeps them quiet; the earlier setting
            # (forget_original=-1, retain_expanded=1, L1 1e-2) left ERA's retain NLL at 3.6 right after the ablation.
            expand=64, forget_original=0.0, retain_expanded=0.3, l1_coef=0.1, seed=seed,
        ),
        coherence=TrainConfig(steps=40, lr=1e-3, batch_size=16, optimizer="adamw", seed=seed),
        relearn=RelearnConfig(ks=(4, 16, 64), lrs=(1e-3, 3e-3), steps=30, eval_every=10, batch_size=16, seed=seed),
        seed=seed,
        select={**{m: LM_GRID for m in ("ga", "graddiff", "npo", "rmu")}, "era": LM_ERA_GRID},
        rule=LM_RULE,
    )
