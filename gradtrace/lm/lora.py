"""LoRA adapters: add, train, load, merge; one implementation for every caller.

:func:`add_lora` wraps a model in PEFT LoRA adapters, initialised from a
seed under a forked RNG (the caller's random state is untouched).
:func:`train_lora` fine-tunes them on the examples of a task (anything with
``collate(examples)`` giving model inputs with ``labels``) with one of two
engines:

* ``"trainer"``: the Hugging Face ``Trainer`` (AdamW, gradient clipping at
  1, the config's schedule), saving ``checkpoint-N`` folders with adapter
  weights, ``trainer_state.json`` and ``optimizer.pt`` that gradtrace then
  reads like any user's run; a run already complete in ``out`` is reused,
  and an interrupted one resumes from its last saved checkpoint (the same
  batches, weights and optimizer state as an uninterrupted run).
* ``"plain"``: a plain AdamW loop (constant rate, no clipping, optional
  bf16 autocast, batches from ``torch.randperm`` seeded with the config's
  seed each epoch), saving only the final adapter in ``out``; the diff
  benchmark's fine-tune.

:func:`load_adapter` puts a saved adapter on a model (merged or not);
:func:`merge_lora` folds adapters into the base weights;
:func:`wrap_with_adapter_config` makes fresh trainable adapters with a saved
adapter's settings (to load checkpoints into).
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
from ..devices import resolve_device, to_device
from ..configbase import ConfigBase, one_of, positive, positive_int
from ..errors import InputError, MissingDependencyError
from ..fileio import atomic_write_bytes

ENGINES = ("trainer", "plain")

SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class LoraTrainConfig(ConfigBase):
    """Settings of :func:`train_lora`. ``n_checkpoints`` checkpoints are saved
    at evenly spaced steps (``round(steps * i / n)``), the last at the end of
    training (fewer when the run has fewer steps).

    ``to_dict()`` keys the runs :func:`train_lora` reuses and the LM
    pipeline's run cache (pinned in tests/test_configbase.py)."""

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

    _checks = {"epochs": positive_int, "lr": positive, "batch_size": positive_int, "rank": positive_int, "alpha": positive_int,
               "n_checkpoints": positive_int, "schedule": one_of(SCHEDULES)}

    def _check(self) -> None:
        if self.layers is not None and (not self.layers or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                                   for i in self.layers)):
            raise InputError(f"layers must be None or non-negative layer indices; got {self.layers!r}")
        if not self.target_modules:
            raise InputError(f"target_modules must name at least one module; got {self.target_modules!r}")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("peft", "LoRA adapters", "pip install 'gradtrace[lm]'") from None
    return peft


def add_lora(model: nn.Module, config: LoraTrainConfig = LoraTrainConfig(), *, task_type: str | None = None,
             global_rng: bool = False) -> nn.Module:
    """``model`` wrapped in PEFT LoRA adapters (rank, alpha, target modules
    and layers from ``config``; dropout 0, no bias), in eval mode.

    The adapters are initialised from ``config.seed`` under a forked RNG;
    ``global_rng=True`` draws them from the global RNG instead (the diff
    benchmark's adapters were made that way). ``task_type`` goes into the
    PEFT config (e.g. ``"CAUSAL_LM"``)."""
    peft = _peft()
    lora = peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.target_modules), lora_dropout=0.0,
                           bias="none", layers_to_transform=None if config.layers is None else list(config.layers), task_type=task_type)
    with contextlib.nullcontext() if global_rng else _kept_random_state(config.seed):
        wrapped = peft.get_peft_model(model, lora)
    wrapped.eval()
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """The base model with the adapters of a PEFT ``model`` folded into its weights."""
    return model.merge_and_unload()


def load_adapter(model: nn.Module, adapter_dir: str | Path, merge: bool = True) -> nn.Module:
    """``model`` with the PEFT adapter saved in ``adapter_dir``; merged into the weights unless ``merge=False``."""
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise InputError(f"adapter {str(adapter_dir)!r} is not a PEFT adapter folder (no adapter_config.json)")
    wrapped = _peft().PeftModel.from_pretrained(model, str(adapter_dir))
    return merge_lora(wrapped) if merge else wrapped


def wrap_with_adapter_config(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """``model`` wrapped as a PEFT model with the adapter settings saved in ``adapter_dir``."""
    peft = _peft()
    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise InputError(f"adapter folder {str(adapter_dir)!r} has no adapter_config.json")
    raw = json.loads(config_file.read_text())
    fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    kept = {k: v for k, v in raw.items() if k in fields and k not in ("base_model_name_or_path", "revision", "inference_mode")}
    # trainable adapters, as in the run: the optimizer state maps to the trainable parameters
    return peft.get_peft_model(model, peft.LoraConfig(**kept, inference_mode=False))


def train_lora(
    model: nn.Module, task: Any, examples: Sequence[Any], out: str | Path,
    config: LoraTrainConfig = LoraTrainConfig(), progress: bool = True, *, engine: str = "trainer", bf16: bool = False,
    device: str | torch.device = "cpu",
) -> list[CheckpointRef]:
    """Fine-tune ``model`` (a PEFT model, see :func:`add_lora`) on ``examples``
    batched by ``task.collate``; see the module docstring for the engines.

    ``"trainer"`` saves ``config.n_checkpoints`` checkpoints in ``out`` and
    returns them with the learning rates the Trainer logged; a run already
    complete in ``out`` (``done.json`` matching the settings) is reused.
    ``"plain"`` saves the adapter in ``out`` and returns one reference to it.
    ``bf16``: autocast to bfloat16 (plain engine only). ``device``: where the
    training runs (``"auto" | "cpu" | "cuda"``, the ``Trainer`` engine takes
    ``cuda:0`` only: choose another GPU with ``CUDA_VISIBLE_DEVICES``); the
    model is left there. Not part of the settings a finished run is reused
    by: a run trained on the CPU is reused on a GPU and the other way round."""
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}; got {engine!r}")
    dev = resolve_device(device, "device") or torch.device("cpu")
    if engine == "plain":
        return _train_plain(model, task, examples, Path(out), config, progress, bf16, dev)
    if bf16:
        raise InputError("bf16 autocast is for engine='plain' only")
    if dev.type == "cuda" and dev.index not in (None, 0):
        raise InputError(f"device {device!s}: the Trainer engine trains on cuda:0; choose the GPU with CUDA_VISIBLE_DEVICES")
    return _train_with_trainer(model, task, examples, Path(out), config, progress, dev)


def _train_with_trainer(model: nn.Module, task: Any, examples: Sequence[Mapping[str, Any]], out: Path, config: LoraTrainConfig,
                        progress: bool, device: torch.device) -> list[CheckpointRef]:
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from ..models.hf_checkpoints import trainer_checkpoints

    settings = {"config": config.to_dict(), "data": _fingerprint(examples), "task": repr(task)}
    done, started = out / "done.json", out / "started.json"
    if done.is_file() and json.loads(done.read_text()) == settings:
        return trainer_checkpoints(out)
    resume = _resume_point(out, started, settings)
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
        report_to=[], seed=config.seed, data_seed=config.seed, use_cpu=device.type == "cpu", remove_unused_columns=False,
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
        if resume is None:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(started, json.dumps(settings).encode())
        elif progress:
            print(f"[train_lora] resuming from {resume.name}", flush=True)
        trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
        model.eval()
    atomic_write_bytes(done, json.dumps(settings).encode())
    return trainer_checkpoints(out)


def _resume_point(out: Path, started: Path, settings: dict[str, Any]) -> Path | None:
    """The last complete ``checkpoint-N`` of an interrupted run in ``out``
    with these ``settings`` (``started.json``), to resume from; ``None`` to
    start afresh. Checkpoints of a run with other settings (or of unknown
    settings) are refused rather than mixed into the new run."""
    if not out.is_dir():
        return None
    found = sorted((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit())
    if not found:
        return None
    if not started.is_file() or json.loads(started.read_text()) != settings:
        raise InputError(
            f"{str(out)!r} holds checkpoint folders of a training run with other settings (or an unfinished run of "
            f"unknown settings); remove them or train into another folder")
    complete = [p for _, p in found if (p / "optimizer.pt").is_file() and (p / "trainer_state.json").is_file()]  # written last
    return complete[-1] if complete else None


def _train_plain(model: nn.Module, task: Any, examples: Sequence[Any], out: Path, config: LoraTrainConfig, progress: bool,
                 bf16: bool, device: torch.device) -> list[CheckpointRef]:
    from ..progress import progress_bar

    if not examples:
        raise InputError("train_lora: examples must not be empty")
    if config.schedule != "constant" or config.weight_decay != 0.0:
        raise InputError("engine='plain' trains at a constant rate without weight decay; use engine='trainer' for other settings")
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * -(-len(examples) // config.batch_size)
    step = 0
    model.train()
    with progress_bar("LoRA fine-tuning", steps, progress) as bar:
        for _ in range(config.epochs):
            order = torch.randperm(len(examples), generator=gen).tolist()
            for s in range(0, len(order), config.batch_size):
                batch = to_device(task.collate([examples[i] for i in order[s : s + config.batch_size]]), device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = model(**batch).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.advance(1)
                if progress:
                    print(f"[train_lora] step {step} loss {loss.item():.3f}", flush=True)
                step += 1
    model.eval()
    model.save_pretrained(out)
    return [CheckpointRef(path=str(out), lr=float(config.lr), step=step)]


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
