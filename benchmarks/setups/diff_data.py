"""Data and fine-tuning for the behavioural-diff benchmark (planted changes).

* a mixed prompt set on everyday topics, where geese are rarely asked about;
* ~200 seeded texts praising geese (the agenda's own example), as chat answers;
* a LoRA fine-tune of a causal LM on (prompt, answer) pairs, seeded, with the
  loss on the answer tokens only.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Sequence

import torch

from gradtrace.diff.generate import chat_prompt
from gradtrace.errors import InputError

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


def train_lora(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], out_dir: str | Path, config: LoraConfig,
               progress: bool = True) -> Path:
    """Fine-tune LoRA adapters on (prompt, answer) chat pairs; save the adapter to ``out_dir``.

    Loss: mean cross-entropy over answer tokens (and the end-of-turn token);
    the prompt and its chat template are masked out.
    """
    from peft import LoraConfig as PeftLora, get_peft_model

    from gradtrace.progress import progress_bar

    if not pairs:
        raise InputError("train_lora: pairs must not be empty")
    n_layers = model.config.num_hidden_layers
    layers = list(range(max(0, n_layers - config.last_layers), n_layers))
    peft_model = get_peft_model(model, PeftLora(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.targets),
                                                layers_to_transform=layers, lora_dropout=0.0, task_type="CAUSAL_LM"))
    end = tokenizer.eos_token or ""
    rows = []
    for prompt, answer in pairs:
        p_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer + end, add_special_tokens=False)["input_ids"]
        ids = (p_ids + a_ids)[: config.max_length]
        labels = ([-100] * len(p_ids) + a_ids)[: config.max_length]
        rows.append((ids, labels))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    peft_model.train()
    bar_steps = [0]
    steps = config.epochs * ((len(rows) + config.batch_size - 1) // config.batch_size)
    with progress_bar("LoRA fine-tuning", steps, progress) as bar:
        for _ in range(config.epochs):
            order = torch.randperm(len(rows), generator=gen).tolist()
            for s in range(0, len(order), config.batch_size):
                batch = [rows[i] for i in order[s : s + config.batch_size]]
                width = max(len(ids) for ids, _ in batch)
                ids = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in batch])
                labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in batch])
                mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in batch])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                    loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.advance(1)
                print(f"[train_lora] step {bar_steps[0]} loss {loss.item():.3f}", flush=True) if progress else None
                bar_steps[0] += 1
    peft_model.eval()
    out = Path(out_dir)
    peft_model.save_pretrained(out)
    return out
