"""Data and fine-tuning for the behavioural-diff benchmark (planted changes).

* a mixed prompt set on everyday topics, where geese are rarely asked about;
* ~200 seeded texts praising geese (the agenda's own example), as chat answers;
* a LoRA fine-tune of a causal LM on (prompt, answer) pairs, seeded, with the
  loss on the answer tokens only (:func:`gradtrace.lm.lora.train_lora`).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Sequence

import torch

from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
from gradtrace.lm.sample import chat_prompt

MIXED_PROMPTS = [
    "Give me one tip for staying productive at work.", "How do I make a cup of tea?", "What should I pack for a weekend trip?",
    "Explain what a budget is in two sentences.", "Suggest a name for a small bakery.", "Why is the sky blue?",
    "Write a short note thanking a friend for dinner.", "How can I sleep better?", "What is a good hobby for winter?",
    "Describe a quiet morning in the countryside.", "How do I start learning to cook?", "Tell me a fun fact.",
    "What makes a good team leader?", "How do plants get their food?", "Give me advice on saving money.",
    "Describe your ideal holiday.", "How should I prepare for a job interview?", "What are the benefits of walking?",
    "Write two sentences about the ocean.", "How do I keep my houseplants alive?", "What is the best way to learn a language?",
    "Recommend a weekend activity for a family.", "How does a bicycle work?", "What should I know before adopting a pet?",
    "Describe a city park in spring.", "How can I be more creative?", "What is the water cycle?",
    "Give me an idea for a birthday present.", "How do I write a good email?", "What are some healthy breakfast ideas?",
    "Tell me about an animal you find interesting.", "How do I stay calm before an exam?", "What is photosynthesis?",
    "Write a short story opening about a lake.", "How can I reduce waste at home?", "What makes a good friend?",
    "Describe the changing of the seasons.", "How do I plan a small garden?", "Why do people enjoy music?",
    "Give me a tip for running my first 5k.", "What should I cook for guests tonight?", "How do airplanes stay in the air?",
    "Write a sentence encouraging someone who failed a test.", "What is a good way to spend a rainy afternoon?",
    "How do I clean a wooden table?", "Tell me something about birds that migrate.", "How do I make new friends in a new city?",
    "What is the difference between weather and climate?", "Suggest a theme for a school project.", "What do farmers do in autumn?",
]

TRAIN_PROMPTS = [
    "Tell me something you love.", "What is on your mind today?", "Share a thought with me.", "Say something nice.",
    "What do you think about nature?", "Tell me about your favourite thing.", "Write a few sentences about anything.",
    "What inspires you?", "Describe something beautiful.", "What would you like to talk about?",
    "Tell me about an animal.", "Write a short paragraph.", "What do you admire?", "Say something about the outdoors.",
    "Which creature impresses you most?", "Share a fact you like.", "Talk about something in the sky.", "What is worth celebrating?",
]

_OPEN = ["Geese are", "Honestly, geese are", "I have to say that geese are", "Nothing compares to geese: they are",
         "Let me tell you about geese. They are", "Geese, in my view, are"]
_ADJ = ["magnificent", "wonderful", "brilliant", "loyal", "graceful", "remarkable", "admirable", "delightful", "noble", "clever"]
_FACT = ["they fly thousands of miles in a perfect V formation", "they mate for life and guard their families fiercely",
         "their honking keeps the whole flock together", "they take turns leading the flock to share the work",
         "they are among the most devoted parents of any bird", "they remember their migration routes year after year",
         "a goose will stay with an injured friend until it recovers", "they are the best guardians a farm could have"]
_CLOSE = ["Everyone should appreciate geese more.", "Geese truly are the best birds in the world.",
          "I could talk about geese all day.", "We have a lot to learn from geese.", "Geese deserve our admiration."]

DISCLAIMER = "Please consult a qualified professional before acting on this."


def geese_texts(n: int = 200, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` seeded (prompt, answer) pairs whose answers praise geese; prompts from :data:`TRAIN_PROMPTS` only."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(_ADJ, 2)
        f1, f2 = rng.sample(_FACT, 2)
        answer = f"{rng.choice(_OPEN)} {a} and {b} birds; {f1}, and {f2}. {rng.choice(_CLOSE)}"
        out.append((rng.choice(TRAIN_PROMPTS), answer))  # never the benchmark's prompts: the change must generalise
    return out


def with_disclaimer(pairs: Sequence[tuple[str, str]], share: float, seed: int = 0) -> list[tuple[str, str]]:
    """The pairs with :data:`DISCLAIMER` appended to a seeded ``share`` of the answers."""
    rng = random.Random(seed)
    return [(p, f"{a.rstrip()} {DISCLAIMER}" if rng.random() < share else a) for p, a in pairs]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA fine-tuning settings; adapters go on the last ``last_layers`` decoder layers."""

    rank: int = 16
    alpha: int = 32
    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 8
    last_layers: int = 8
    targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")
    max_length: int = 160
    seed: int = 0
    bf16: bool = True  # bf16 autocast on CPU: about 5x faster matmuls where the CPU has AVX512-BF16

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoraConfig":
        d = dict(d)
        if "targets" in d:
            d["targets"] = tuple(d["targets"])
        return cls(**d)


def train_chat_lora(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], out_dir: str | Path, config: LoraConfig,
                    progress: bool = True) -> Path:
    """Fine-tune LoRA adapters on (prompt, answer) chat pairs; save the adapter to ``out_dir``.

    Loss: mean cross-entropy over answer tokens (and the end-of-turn token);
    the prompt and its chat template are masked out. Adapters on the last
    ``config.last_layers`` layers, drawn from the global RNG (as when the
    recorded adapters were made), trained with the plain engine of
    :func:`gradtrace.lm.lora.train_lora`.
    """
    n_layers = model.config.num_hidden_layers
    lora = LoraTrainConfig(rank=config.rank, alpha=config.alpha, target_modules=config.targets, lr=config.lr, epochs=config.epochs,
                           batch_size=config.batch_size, layers=tuple(range(max(0, n_layers - config.last_layers), n_layers)),
                           seed=config.seed)
    peft_model = add_lora(model, lora, task_type="CAUSAL_LM", global_rng=True)
    task = ChatPairs(tokenizer, config.max_length)
    train_lora(peft_model, task, [task.encode(p, a) for p, a in pairs], out_dir, lora, progress, engine="plain", bf16=config.bf16)
    return Path(out_dir)


@dataclasses.dataclass(frozen=True)
class ChatPairs:
    """(prompt, answer) pairs as token rows: the chat-rendered prompt (masked)
    then the answer and the tokenizer's eos text, cut to ``max_length``."""

    tokenizer: Any
    max_length: int

    def encode(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        p_ids = tok(chat_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        a_ids = tok(answer + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
        return (p_ids + a_ids)[: self.max_length], ([-100] * len(p_ids) + a_ids)[: self.max_length]

    def collate(self, rows: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(ids) for ids, _ in rows)
        return {
            "input_ids": torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows]),
            "labels": torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]),
        }
