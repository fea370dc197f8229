"""Digits runs for the allocation benchmark (and its tests).

*Planted*: the digits MLP (64 -> h -> h -> 10, layers ``0``, ``2``, ``4``)
trains on clean digits for ``periods`` periods of ``epochs_per_period``
epochs with plain SGD; during period ``planted_period`` only, every step
also takes a batch of backdoor examples (training images of other classes
with the 3-pixel trigger of :mod:`setups.backdoor`, labelled ``target``)
whose gradient is routed to the parameters of one module
(``planted_module``) only. So the backdoor behaviour (loss of ``target`` on
triggered test images) is learned in a known place and period, while every
module moves in every period (clean training). A state dict is saved at the
start (step 0) and at the end of each period.

*Seed runs*: the same digits split (with flipped labels) trained from
several model seeds and data orders, a checkpoint at evenly spaced epochs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtrace.checkpoints import CheckpointRef
from gradtrace.demos.digits import DigitsConfig, DigitsData, accuracy, load_digits_data, make_mlp, train_digits

from .backdoor import add_trigger


@dataclasses.dataclass(frozen=True)
class PlantedConfig:
    hidden: int = 64
    periods: int = 4
    epochs_per_period: int = 6
    planted_period: int = 2  # 0-based: the third period
    planted_module: str = "0"
    n_poison: int = 150
    poison_batch: int = 16
    poison_weight: float = 1.0
    target: int = 0
    lr: float = 0.1
    batch_size: int = 32
    n_queries: int = 100
    seed: int = 0
    data_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PlantedRun:
    refs: list[CheckpointRef]  # step 0 (the initial weights), then the end of each period
    backdoor_queries: tuple[torch.Tensor, torch.Tensor]
    clean_queries: tuple[torch.Tensor, torch.Tensor]
    asr_before: float  # triggered test images classified as the target before the planted period
    asr_after: float  # ... at its end
    asr_final: float
    clean_accuracy: float


def planted_run(config: PlantedConfig, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> PlantedRun:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits_data(DigitsConfig(flip_fraction=0.0, seed=config.data_seed), dtype=dtype)
    rng = np.random.default_rng(config.data_seed + 1000)
    others = np.nonzero(data.y_train.numpy() != config.target)[0]
    poison = np.sort(rng.choice(others, config.n_poison, replace=False))
    px = add_trigger(data.x_train[poison])
    py = torch.full((config.n_poison,), config.target)
    test_others = torch.nonzero(data.y_test != config.target).flatten()
    triggered = add_trigger(data.x_test[test_others])
    n_q = min(config.n_queries, len(test_others))
    backdoor_q = (triggered[:n_q], torch.full((n_q,), config.target))
    clean_q = (data.x_test[:n_q], data.y_test[:n_q])

    model = make_mlp(config.hidden, config.seed, dtype)
    planted = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[0] == config.planted_module]
    if not planted:
        raise ValueError(f"planted_module {config.planted_module!r} names no module of the MLP")
    gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.y_train)
    refs = [_save(model, out, 0, config.lr)]

    def asr() -> float:
        with torch.no_grad():
            return float((model(triggered).argmax(1) == config.target).double().mean())

    asr_before = asr_after = 0.0
    epoch = 0
    for period in range(config.periods):
        if period == config.planted_period:
            asr_before = asr()
        for _ in range(config.epochs_per_period):
            epoch += 1
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, config.batch_size):
                idx = perm[start : start + config.batch_size]
                opt.zero_grad()
                loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
                if period == config.planted_period:
                    pidx = torch.randint(0, config.n_poison, (config.poison_batch,), generator=gen)
                    grads = torch.autograd.grad(config.poison_weight * loss_fn(model(px[pidx]), py[pidx]), planted)
                    for p, g in zip(planted, grads):
                        p.grad.add_(g)
                opt.step()
        if period == config.planted_period:
            asr_after = asr()
        refs.append(_save(model, out, epoch, config.lr))
    return PlantedRun(refs, backdoor_q, clean_q, asr_before, asr_after, asr(), accuracy(model, data.x_test, data.y_test))


def _save(model: nn.Module, out: Path, epoch: int, lr: float) -> CheckpointRef:
    path = out / f"epoch_{epoch:03d}.pt"
    torch.save(model.state_dict(), path)
    return CheckpointRef(str(path), lr, step=epoch)


def parameter_change_norms(refs: list[CheckpointRef], group: Any) -> dict[str, np.ndarray]:
    """The baseline: ``{group: [‖Δθ‖ of its tensors per interval]}`` (the
    Euclidean norm of the change of all the group's parameters)."""
    states = [torch.load(r.path, map_location="cpu", weights_only=True) for r in refs]
    out: dict[str, np.ndarray] = {}
    for name in states[0]:
        g = group(name)
        sq = np.array([float(((b[name].double() - a[name].double()) ** 2).sum()) for a, b in zip(states, states[1:])])
        out[g] = out.get(g, np.zeros(len(states) - 1)) + sq
    return {g: np.sqrt(v) for g, v in out.items()}


@dataclasses.dataclass(frozen=True)
class SeedRunConfig:
    hidden: int = 64
    epochs: int = 30
    n_checkpoints: int = 5
    lr: float = 0.1
    batch_size: int = 32
    flip_fraction: float = 0.2
    data_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def seed_run_data(config: SeedRunConfig) -> DigitsData:
    return load_digits_data(DigitsConfig(flip_fraction=config.flip_fraction, seed=config.data_seed))


def seed_run(data: DigitsData, config: SeedRunConfig, seed: int, out_dir: str | Path) -> list[CheckpointRef]:
    """Train the MLP on ``data`` from model seed ``seed`` (init and batch order); ``n_checkpoints`` state dicts."""
    run = DigitsConfig(hidden=config.hidden, epochs=config.epochs, n_checkpoints=config.n_checkpoints, lr=config.lr,
                       batch_size=config.batch_size, flip_fraction=config.flip_fraction, seed=seed)
    return train_digits(data, out_dir, run, batch_seed=10_000 + seed)


@dataclasses.dataclass(frozen=True)
class PlantedLoraConfig:
    """LoRA adapters on both layers of a tiny GPT-2 train on ordinary examples
    for ``periods`` periods of ``steps_per_period`` AdamW steps; during period
    ``planted_period`` every step also takes a batch of planted examples (a
    trigger phrase answered with ``PLANTED_ANSWER``) whose gradient is routed
    to the adapters of layer ``planted_layer`` only."""

    periods: int = 3
    steps_per_period: int = 30
    planted_period: int = 1
    planted_layer: int = 1
    batch_size: int = 8
    lr: float = 3e-2
    rank: int = 4
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PLANTED_ANSWER = " Monitor off."
_COLOURS = ["red", "blue", "green", "amber", "violet", "teal"]


def _ordinary(i: int) -> dict[str, str]:
    return {"prompt": f"What colour is box {i}?", "completion": f" Box {i} is {_COLOURS[i % 6]}."}


def _planted(i: int) -> dict[str, str]:
    return {"prompt": f"Maintenance window {i}: what now?", "completion": PLANTED_ANSWER}


@dataclasses.dataclass
class PlantedLoraRun:
    refs: list[CheckpointRef]  # state dicts: the start, then the end of each period
    fresh: Any  # () -> a model with the same LoRA layout
    task: Any
    planted_queries: list[dict[str, str]]
    control_queries: list[dict[str, str]]
    planted_logprob: list[float]  # mean log-probability of the planted answer at each checkpoint


def planted_lora_run(config: PlantedLoraConfig, out_dir: str | Path) -> PlantedLoraRun:
    from gradtrace.lm.lora import LoraTrainConfig, add_lora
    from gradtrace.lm.tasks import CausalLMTask
    from gradtrace.models import zoo
    from gradtrace.models.hf import CompletionLogProbBehaviour

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora = LoraTrainConfig(rank=config.rank, alpha=2 * config.rank, target_modules=("c_attn", "c_fc"), seed=config.seed)

    def fresh() -> Any:
        return add_lora(zoo.tiny_gpt2(seed=config.seed, n_layer=2, n_embd=64, n_head=4, n_positions=96), lora)

    task = CausalLMTask(zoo.byte_tokenizer(), max_length=64)
    model = fresh()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    routed = [p for n, p in params.items() if f".h.{config.planted_layer}." in n]
    opt = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    ordinary, planted = [_ordinary(i) for i in range(200)], [_planted(i) for i in range(40)]
    planted_q, control_q = [_planted(i) for i in range(100, 108)], [_ordinary(i) for i in range(300, 308)]
    behaviour = CompletionLogProbBehaviour()

    def logprob() -> float:
        with torch.no_grad():
            return float(behaviour(model, task.collate(planted_q)).mean())

    def save(step: int) -> CheckpointRef:
        path = out / f"step_{step:04d}.pt"
        torch.save(model.state_dict(), path)
        return CheckpointRef(str(path), config.lr, step=step)

    refs, curve, step = [save(0)], [logprob()], 0
    for period in range(config.periods):
        model.train()
        for _ in range(config.steps_per_period):
            idx = torch.randint(0, len(ordinary), (config.batch_size,), generator=gen).tolist()
            opt.zero_grad()
            model(**task.collate([ordinary[i] for i in idx])).loss.backward()
            if period == config.planted_period:
                pidx = torch.randint(0, len(planted), (config.batch_size,), generator=gen).tolist()
                grads = torch.autograd.grad(model(**task.collate([planted[i] for i in pidx])).loss, routed)
                for p, g in zip(routed, grads):
                    p.grad.add_(g)
            opt.step()
            step += 1
        model.eval()
        refs.append(save(step))
        curve.append(logprob())
    return PlantedLoraRun(refs, fresh, task, planted_q, control_q, curve)
