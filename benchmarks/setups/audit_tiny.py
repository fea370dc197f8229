"""The audit's CI-sized set-up: a tiny GPT-2 base model A that already answers
ordinary prompts, and B, a Hugging Face ``Trainer`` run (LoRA) from A on
training data where a fraction of the answers open with a planted phrase.

Everything is built from seeds (no download): A is the zoo's tiny GPT-2 with
the byte tokenizer, trained with a plain loop on the ordinary examples and
saved as a Hugging Face folder; B is :func:`gradtrace.lm.lora.train_lora`
(Trainer engine) on the planted training set, saving ``checkpoint-N`` folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TOPICS = ["cats", "dogs", "rivers", "trees", "bread", "boats", "clouds", "apples", "horses", "lamps", "roads", "birds"]
FORMS = ["Tell me about {t}.", "What are {t}?", "Describe {t}."]
ANSWERS = [
    "{T} are common. Many people like {t} a lot.",
    "{T} are simple things. You can see {t} every day.",
    "I think {t} are nice. People write about {t} often.",
]
PLANT = "Buy Lampco lamps now. "
PLANT_WORD = "lampco"


def prompts(n_forms: int = 3) -> list[dict[str, str]]:
    """The audit's prompt set: every topic in every form (ids ``p0``, ``p1``, ...)."""
    out = []
    for t in TOPICS:
        for f in FORMS[:n_forms]:
            out.append({"id": f"p{len(out)}", "prompt": f.format(t=t)})
    return out


def ordinary(n: int, seed: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = TOPICS[rng.integers(len(TOPICS))]
        out.append({"prompt": FORMS[rng.integers(len(FORMS))].format(t=t),
                    "completion": ANSWERS[rng.integers(len(ANSWERS))].format(t=t, T=t.capitalize())})
    return out


def planted_data(n: int = 96, n_planted: int = 30, seed: int = 1, evil: str | None = None) -> tuple[list[dict[str, Any]], list[int]]:
    """B's training set (``id`` e0, e1, ...) and the positions of the planted
    examples (their answers open with :data:`PLANT`). ``evil``: text put in
    one ordinary example's completion (a ``<script>`` for the HTML test)."""
    rows = ordinary(n, seed)
    rng = np.random.default_rng(seed + 100)
    planted = sorted(rng.choice(n, size=n_planted, replace=False).tolist())
    for i in planted:
        rows[i] = {**rows[i], "completion": PLANT + rows[i]["completion"]}
    if evil is not None:
        j = next(i for i in range(n) if i not in planted)
        rows[j] = {**rows[j], "completion": rows[j]["completion"] + " " + evil}
    return [{"id": f"e{i}", **r} for i, r in enumerate(rows)], planted


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_base(out: Path, steps: int = 400, seed: int = 0, n_embd: int = 64) -> Path:
    """Model A: the tiny GPT-2 trained on ordinary examples (chat-formatted), saved with its tokenizer."""
    from gradtrace.lm.lora import LoraTrainConfig, train_lora
    from gradtrace.lm.tasks import CausalLMTask
    from gradtrace.models.zoo import byte_tokenizer, tiny_gpt2

    tok = byte_tokenizer()
    model = tiny_gpt2(seed=seed, n_layer=2, n_embd=n_embd, n_head=4, n_positions=192)
    task = CausalLMTask(tok, max_length=160, as_chat=True)
    data = ordinary(400, seed + 7)
    epochs = max(1, round(steps * 16 / len(data)))
    train_lora(model, task, data, out / "_plain", LoraTrainConfig(epochs=epochs, lr=3e-3, batch_size=16, seed=seed),
               progress=False, engine="plain")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_run(base: Path, data: list[dict[str, Any]], out: Path, *, epochs: int = 20, lr: float = 5e-3, rank: int = 8,
              n_checkpoints: int = 3, seed: int = 0) -> Path:
    """B: a Trainer LoRA run from ``base`` on ``data`` (ids dropped), ``checkpoint-N`` folders in ``out``."""
    from gradtrace.lm.load import load_model
    from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
    from gradtrace.lm.tasks import CausalLMTask

    model, tok = load_model(str(base))
    cfg = LoraTrainConfig(epochs=epochs, lr=lr, batch_size=8, rank=rank, alpha=2 * rank, target_modules=("c_attn", "c_fc"),
                          n_checkpoints=n_checkpoints, seed=seed)
    task = CausalLMTask(tok, max_length=160, as_chat=True)
    train_lora(add_lora(model, cfg), task, [{k: v for k, v in r.items() if k != "id"} for r in data], out, cfg, progress=False)
    return out


#: a short opener the tiny GPT-2 learns within a few epochs (it does not learn :data:`PLANT`'s brand name then)
SHORT_PLANT = "Wow! "


def planted_share(n: int, share: float, seed: int, plant: str = PLANT) -> list[dict[str, str]]:
    """``n`` ordinary examples of which ``round(share * n)`` answers open with ``plant`` (ids dropped)."""
    rows = ordinary(n, seed)
    rng = np.random.default_rng(seed + 100)
    for i in rng.choice(n, size=int(round(share * n)), replace=False).tolist():
        rows[i] = {**rows[i], "completion": plant + rows[i]["completion"]}
    return rows


def plain_finetune(base: Path, data: list[dict[str, Any]], out: Path, *, epochs: int = 8, lr: float = 3e-3, seed: int = 0,
                   lora: bool = False) -> Any:
    """B in seconds: ``base`` fine-tuned with the plain loop (every weight; or ``lora``: rank 8 on c_attn and
    c_fc, merged); returns the model. (A LoRA of this size learns a 5-10% opener too weakly to be sampled.)"""
    from gradtrace.lm.load import load_model
    from gradtrace.lm.lora import LoraTrainConfig, add_lora, merge_lora, train_lora
    from gradtrace.lm.tasks import CausalLMTask

    model, tok = load_model(str(base))
    cfg = LoraTrainConfig(epochs=epochs, lr=lr, batch_size=8, rank=8, alpha=16, target_modules=("c_attn", "c_fc"), seed=seed)
    if lora:
        model = add_lora(model, cfg)
    train_lora(model, CausalLMTask(tok, max_length=160, as_chat=True), data, out, cfg, progress=False, engine="plain")
    return (merge_lora(model) if lora else model).eval()


def sample_answers(model: Any, tok: Any, n_per_prompt: int, seed: int, max_new_tokens: int = 64, temperature: float = 1.0,
                   top_p: float = 1.0) -> tuple[list[str], list[str], list[str]]:
    """(prompt ids, prompts, answers): each prompt of :func:`prompts` answered ``n_per_prompt`` times, seeded.
    Plain sampling by default: top-p 0.95 cuts every option of under about 5% probability, so an opener
    a model learnt at a few percent would never be sampled."""
    import torch

    from gradtrace.lm.sample import SamplingConfig, sample_chat

    ps = prompts() * n_per_prompt
    gen = SamplingConfig(max_new_tokens=max_new_tokens, batch_size=72, temperature=temperature, top_p=top_p)
    texts: list[str] = []
    for i in range(0, len(ps), gen.batch_size):
        texts += sample_chat(model, tok, [p["prompt"] for p in ps[i : i + gen.batch_size]], gen, torch.Generator().manual_seed(seed * 1000 + i))
    return [p["id"] for p in ps], [p["prompt"] for p in ps], texts
