"""The language-model case of benchmarks/peers.py (``lm_lds``): seeded
generated text, a GPT of 0.93M parameters trained from scratch, and
its retraining on subsets.

**Text.** A small world of made-up people, each with a city, a food and a
pet (drawn from the seed, the values Zipf-distributed so some are common);
each fact is said in four templates, as a prompt and a completion::

    {"prompt": "kabo lives in", "completion": "oslo ."}
    {"prompt": "the pet of kabo is a", "completion": "cat ."}

Every (person, relation, template) is one example; they are shuffled with
the seed and split into training examples, held-out queries (the LDS
measures each query's completion loss) and task examples (TrackStar's
whitening). A query's fact is usually said in the training set in other
templates, so which training examples a subset keeps changes its loss.

**Model.** :func:`peer_runners._lm.make_gpt` (transformers' GPT-2 built from
a config, ``Conv1D`` as ``nn.Linear``, untied output layer), trained with
Adam by :func:`gradtrace.unlearn.train.train` on the summed completion NLL
(:class:`gradtrace.lm.tasks.CausalLMTask`, the loss every tool attributes).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from gradtrace.checkpoints import CheckpointRef
from gradtrace.lm.tasks import IGNORE, CausalLMTask
from gradtrace.unlearn.train import TrainConfig, train
from peer_runners._lm import EOS, PAD, make_gpt, word_tokenizer

RELATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # relation: (values, templates; "{e}" is the person)
    "city": (("oslo", "rome", "lima", "kyiv", "pune", "doha", "bern", "riga"),
             ("{e} lives in", "the home of {e} is", "{e} moved to", "you can find {e} in")),
    "food": (("rice", "figs", "soup", "eggs", "corn", "plum", "tuna", "kale"),
             ("{e} likes", "the favourite food of {e} is", "{e} often eats", "ask {e} and you get")),
    "pet": (("cat", "dog", "owl", "rat", "yak", "emu", "eel", "bee"),
            ("{e} owns a", "the pet of {e} is a", "{e} walks a", "at home {e} keeps a")),
}
SYLLABLES = ("ka", "bo", "mi", "tu", "re", "sa", "lo", "ne", "di", "fu", "ga", "pe")


@dataclasses.dataclass(frozen=True)
class LMCaseConfig:
    """The text, the model and its training (see the module docstring)."""

    n_people: int = 32
    n_query: int = 48
    n_task: int = 32
    zipf: float = 1.0  # value v of a relation has weight 1 / (v + 1) ** zipf
    data_seed: int = 0
    n_embd: int = 192
    n_layer: int = 2
    n_head: int = 4
    n_positions: int = 16
    train: TrainConfig = TrainConfig(steps=150, lr=3e-3, batch_size=32, optimizer="adam", n_checkpoints=0)
    n_checkpoints: int = 3  # of the model every tool attributes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d


@dataclasses.dataclass(frozen=True)
class LMData:
    words: list[str]
    train: list[dict[str, str]]
    query: list[dict[str, str]]
    task: list[dict[str, str]]
    facts: dict[str, dict[str, str]]  # person -> relation -> value


def make_lm_data(config: LMCaseConfig = LMCaseConfig()) -> LMData:
    """The examples of the case (module docstring), the same for a seed on every machine."""
    rng = np.random.default_rng(config.data_seed)
    people: list[str] = []
    while len(people) < config.n_people:
        name = "".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), size=2))
        if name not in people:
            people.append(name)
    facts: dict[str, dict[str, str]] = {}
    examples = []
    for person in people:
        facts[person] = {}
        for rel, (values, templates) in RELATIONS.items():
            w = 1.0 / (np.arange(len(values)) + 1.0) ** config.zipf
            value = values[int(rng.choice(len(values), p=w / w.sum()))]
            facts[person][rel] = value
            for t in templates:
                examples.append({"prompt": t.format(e=person), "completion": f"{value} ."})
    order = rng.permutation(len(examples))
    n_q, n_t = config.n_query, config.n_task
    if n_q + n_t >= len(examples):
        raise ValueError(f"n_query + n_task = {n_q + n_t} leaves no training example of {len(examples)}")
    shuffled = [examples[i] for i in order]
    words: list[str] = []
    for e in examples:
        for w in (e["prompt"] + " " + e["completion"]).split():
            if w not in words:
                words.append(w)
    return LMData(words, shuffled[n_q + n_t:], shuffled[:n_q], shuffled[n_q: n_q + n_t], facts)


def model_spec(config: LMCaseConfig, data: LMData) -> dict[str, Any]:
    """What :func:`make_gpt` needs (saved in ``case.json``)."""
    tok = word_tokenizer(data.words)
    return {"vocab_size": len(tok), "n_positions": config.n_positions, "n_embd": config.n_embd, "n_layer": config.n_layer,
            "n_head": config.n_head, "pad_id": tok.convert_tokens_to_ids(PAD), "eos_id": tok.convert_tokens_to_ids(EOS)}


def make_task(words: Sequence[str], config: LMCaseConfig = LMCaseConfig()) -> CausalLMTask:
    """The loss: the summed NLL of the completion (its end-of-sequence token included)."""
    return CausalLMTask(word_tokenizer(words), max_length=config.n_positions)


def padded(task: CausalLMTask, examples: list[dict[str, str]], width: int) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask``, ``labels`` of ``examples`` right-padded to ``width`` (what the peers read)."""
    batch = task.collate(examples)
    n, w = batch["input_ids"].shape
    if w > width:
        raise ValueError(f"an example is {w} tokens, longer than width {width}")
    out = {"input_ids": np.full((n, width), task.tokenizer.pad_token_id, dtype=np.int64),
           "attention_mask": np.zeros((n, width), dtype=np.int64), "labels": np.full((n, width), IGNORE, dtype=np.int64)}
    for k in out:
        out[k][:, :w] = batch[k].numpy()
    return out


class LMTrainer:
    """``train_fn(indices, seed)``: a fresh GPT initialised from ``seed``,
    trained with ``config.train`` (batch order from ``seed`` too) on those
    training examples; the checkpoints and optimizer states of the latest
    call are kept in ``last_checkpoints`` / ``last_optimizer_states``."""

    def __init__(self, config: LMCaseConfig, data: LMData, workdir: str | Path, n_checkpoints: int = 0):
        self.config, self.data, self.workdir = config, data, Path(workdir)
        self.task = make_task(data.words, config)
        self.spec = model_spec(config, data)
        self.n_checkpoints = n_checkpoints
        self.calls = 0
        self.last_checkpoints: list[CheckpointRef] = []
        self.last_optimizer_states: list[str] = []
        self.last_losses: list[float] = []

    def __call__(self, indices: np.ndarray, seed: int) -> nn.Module:
        model = make_gpt(self.spec, seed=int(seed))
        self.calls += 1
        cfg = dataclasses.replace(self.config.train, seed=int(seed), n_checkpoints=self.n_checkpoints)
        out = self.workdir / f"run_{self.calls:04d}" if self.n_checkpoints else None
        rec = train(model, self.task, [self.data.train[int(i)] for i in indices], cfg, checkpoint_dir=out)
        self.last_checkpoints, self.last_optimizer_states, self.last_losses = rec.checkpoints, rec.optimizer_states, rec.losses
        return model

    def query_loss(self, model: nn.Module, examples: list[dict[str, str]] | None = None) -> torch.Tensor:
        """The summed completion NLL of each query (or of ``examples``)."""
        with torch.no_grad():
            return self.task.per_example_loss(model, self.task.collate(self.data.query if examples is None else examples))
