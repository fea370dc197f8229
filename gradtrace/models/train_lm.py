"""A seeded LoRA fine-tune with the Hugging Face ``Trainer``, saving checkpoints.

Used by the planted-behaviour benchmark, the LM demo and the tests: it makes
a real Trainer run (``checkpoint-N`` folders with adapter weights,
``trainer_state.json`` and ``optimizer.pt``), which gradtrace then reads like
any user's run. The global random state is restored afterwards (``Trainer``
seeds it itself).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..checkpoints import CheckpointRef
from ..errors import InputError
from .hf import CausalLMTask
from .hf_checkpoints import trainer_checkpoints

SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class LoraTrainConfig:
    """Settings of :func:`train_lora`. ``n_checkpoints`` checkpoints are saved
    at evenly spaced steps (``round(steps * i / n)``), the last at the end of
    training (fewer when the run has fewer steps)."""

    epochs: int = 1
    lr: float = 3e-3
    batch_size: int = 8
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    layers: tuple[int, ...] | None = None
    n_checkpoints: int = 3
    schedule: str = "constant"
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.layers is not None and (not self.layers or not all(isinstance(i, int) and i >= 0 for i in self.layers)):
            raise InputError(f"layers must be None or non-negative layer indices; got {self.layers!r}")
        for name in ("epochs", "batch_size", "rank", "alpha", "n_checkpoints"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} must be a positive integer; got {v!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise InputError(f"lr must be a positive number; got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {SCHEDULES}; got {self.schedule!r}")
        if not self.target_modules:
            raise InputError("target_modules must name at least one module")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LoraTrainConfig":
        d = dict(d)
        d["target_modules"] = tuple(d.get("target_modules", ()))
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        return cls(**d)


def add_lora(model: nn.Module, config: LoraTrainConfig) -> nn.Module:
    """Wrap ``model`` in a PEFT LoRA model (adapter initialised from ``config.seed``)."""
    from peft import LoraConfig, get_peft_model

    with _kept_random_state(config.seed):
        peft_model = get_peft_model(
            model,
            LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.target_modules), lora_dropout=0.0, bias="none",
                       layers_to_transform=None if config.layers is None else list(config.layers)),
        )
    peft_model.eval()
    return peft_model


def train_lora(
    model: nn.Module, task: CausalLMTask, examples: Sequence[Mapping[str, Any]], out: str | Path,
    config: LoraTrainConfig = LoraTrainConfig(), progress: bool = True,
) -> list[CheckpointRef]:
    """Fine-tune ``model`` (a PEFT model, see :func:`add_lora`) on ``examples``
    with the Trainer (AdamW), saving ``config.n_checkpoints`` checkpoints in
    ``out``. Returns them with the learning rates the Trainer logged. A run
    already complete in ``out`` (``done.json`` matching the settings) is reused."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    out = Path(out)
    settings = {"config": config.to_dict(), "data": _fingerprint(examples), "task": repr(task)}
    done = out / "done.json"
    if done.is_file() and json.loads(done.read_text()) == settings:
        return trainer_checkpoints(out)
    if len(examples) < config.batch_size:
        raise InputError(f"examples: need at least batch_size={config.batch_size} examples; got {len(examples)}")
    for i, e in enumerate(examples):  # fail before training on a bad example
        task.encode(e, i)
    steps = config.epochs * -(-len(examples) // config.batch_size)
    save_at = sorted({max(1, round(steps * i / config.n_checkpoints)) for i in range(1, config.n_checkpoints + 1)})
    args = TrainingArguments(
        output_dir=str(out), num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr, lr_scheduler_type=config.schedule, weight_decay=config.weight_decay,
        warmup_steps=0, logging_steps=1, save_strategy="no", save_total_limit=None,
        report_to=[], seed=config.seed, data_seed=config.seed, use_cpu=True, remove_unused_columns=False,
        disable_tqdm=not progress, dataloader_num_workers=0, save_only_model=False,
    )
    with _kept_random_state(config.seed):
        model.train()
        trainer = Trainer(
            model=model, args=args, train_dataset=_ListDataset(list(examples)), data_collator=task.collate,
            callbacks=[_SaveAt(save_at)],
        )
        if not progress:
            trainer.remove_callback(PrinterCallback)
        trainer.train()
        model.eval()
    done.write_text(json.dumps(settings))
    return trainer_checkpoints(out)


def _save_at_callback() -> type:
    from transformers import TrainerCallback

    class SaveAt(TrainerCallback):
        """Save a checkpoint exactly at the given global steps."""

        def __init__(self, steps: list[int]):
            self.steps = set(steps)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step in self.steps:
                control.should_save = True
            return control

    return SaveAt


def _SaveAt(steps: list[int]) -> Any:  # noqa: N802 - a factory standing in for the class
    return _save_at_callback()(steps)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[Any]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _fingerprint(examples: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(examples), sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def _kept_random_state(seed: int) -> Iterator[None]:
    """Seed torch/numpy/random inside the block (as Trainer does) and give
    the caller's global random states back afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
