"""The audit's inputs, checked before any work: B's Trainer run folder, the
training JSONL against the run's recorded step count, the prompts, and that
A and B share one tokenizer. Every error names the input it is about.

The run's training settings are read from ``trainer_state.json`` (epochs,
batch size, steps, the logged learning rates, from which the schedule is
recognised) and, for a LoRA run, ``adapter_config.json``. ``training_args.bin``
is a pickle and is never loaded; settings those files do not record (the
seed, weight decay) come from ``train_config`` (``--train-config``) or keep
their defaults, and the audit says which came from where.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

from ..checkpoints import CheckpointRef
from ..errors import InputError
from ..lm.lora import LoraTrainConfig
from ..models.hf_checkpoints import ADAPTER_FILES, MODEL_FILES, trainer_checkpoints

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A Trainer run folder as the audit reads it. ``kind``: ``"lora"`` or ``"full"``."""

    run_dir: Path
    refs: list[CheckpointRef]
    kind: str
    state: dict[str, Any]
    adapter_config: dict[str, Any] | None

    @property
    def last(self) -> Path:
        return Path(self.refs[-1].path)


def read_run(run_dir: str | Path, option: str = "--run") -> RunInfo:
    """The run's ``checkpoint-N`` folders (with their logged learning rates),
    its kind and its last ``trainer_state.json``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"{option} {str(run)!r} is not a folder; give the Hugging Face Trainer run folder of model B")
    if not any(p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit() for p in run.iterdir()):
        raise InputError(
            f"{option} {str(run)!r} holds no checkpoint-N folders; the audit traces over the run's saved checkpoints "
            "(train with save_strategy='steps' or 'epoch')"
        )
    refs = trainer_checkpoints(run)
    last = Path(refs[-1].path)
    if any((last / f).is_file() for f in ADAPTER_FILES):
        kind = "lora"
    elif any((last / f).is_file() for f in MODEL_FILES):
        kind = "full"
    else:
        raise InputError(f"{option}: {str(last)!r} holds neither adapter weights {ADAPTER_FILES} nor model weights {MODEL_FILES}")
    state: dict[str, Any] = {}
    state_file = last / "trainer_state.json"
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{option}: {str(state_file)!r} is not valid JSON: {exc}") from None
    adapter = None
    if kind == "lora":
        cfg = last / "adapter_config.json"
        if not cfg.is_file():
            raise InputError(f"{option}: the LoRA checkpoint {str(last)!r} has no adapter_config.json")
        adapter = json.loads(cfg.read_text())
    return RunInfo(run, refs, kind, state, adapter)


def check_data_count(run: RunInfo, n: int, data_path: str | Path, option: str = "--data") -> None:
    """The training JSONL must fit the run's recorded steps: ``max_steps =
    epochs * ceil(n / batch_size)`` (one device, no gradient accumulation).
    Skipped when the run does not record all three."""
    st = run.state
    steps, epochs, bs = st.get("max_steps"), st.get("num_train_epochs"), st.get("train_batch_size")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (steps, epochs, bs)):
        return
    if steps % epochs:
        return  # max_steps set directly, not from the data
    per_epoch = steps // epochs
    lo, hi = (per_epoch - 1) * bs + 1, per_epoch * bs
    if not lo <= n <= hi:
        raise InputError(
            f"{option} {str(data_path)!r} holds {n} examples, but the run {str(run.run_dir)!r} recorded {steps} steps over "
            f"{epochs} epochs at batch size {bs} ({per_epoch} steps per epoch: {lo} to {hi} examples); "
            "is this the run's training data?"
        )


def check_tokenizers(tokenizer_a: Any, a_name: str, run: RunInfo, option_a: str = "--a", option_b: str = "--run") -> None:
    """A and B must tokenize alike: when B's run (or its last checkpoint)
    holds tokenizer files, their fingerprint must equal A's."""
    from ..lm.tasks import tokenizer_fingerprint

    for folder in (run.last, run.run_dir):
        if any((folder / f).is_file() for f in TOKENIZER_FILES):
            from transformers import AutoTokenizer

            try:
                tok_b = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise InputError(f"{option_b}: the tokenizer in {str(folder)!r} could not be read: {exc}") from None
            fa, fb = tokenizer_fingerprint(tokenizer_a), tokenizer_fingerprint(tok_b)
            if fa != fb:
                raise InputError(
                    f"model A ({option_a} {a_name!r}) and model B ({option_b} tokenizer in {str(folder)!r}) have different "
                    f"tokenizers (fingerprints {fa} and {fb}; vocabularies of {len(tokenizer_a)} and {len(tok_b)}); "
                    "B must be a fine-tune of A"
                )
            return


def infer_lr_schedule(run: RunInfo) -> tuple[float, str] | None:
    """``(lr, schedule)`` that reproduce every logged learning rate (constant,
    linear or cosine decay to 0 without warm-up), or None."""
    steps = run.state.get("max_steps")
    logged = sorted((int(e["step"]), float(e["learning_rate"])) for e in run.state.get("log_history", [])
                    if "learning_rate" in e and "step" in e)
    if not logged or not isinstance(steps, int) or steps < 1:
        return None
    shapes = {
        "constant": lambda s: 1.0,
        "linear": lambda s: 1.0 - s / steps,
        "cosine": lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)),
    }
    for name, f in shapes.items():
        for shift in (0, -1):
            pts = [(f(s + shift), lr) for s, lr in logged if f(s + shift) > 1e-6]
            if not pts:
                continue
            lr0 = pts[0][1] / pts[0][0]
            if lr0 > 0 and all(abs(lr - lr0 * v) <= 1e-4 * lr0 for v, lr in pts):
                return lr0, name
    return None


def train_settings(run: RunInfo, overrides: Mapping[str, Any] | None = None,
                   option: str = "--train-config") -> tuple[LoraTrainConfig, dict[str, str]]:
    """The run's recorded training settings as a :class:`LoraTrainConfig`,
    and where each came from (``trainer_state.json``, ``adapter_config.json``,
    ``--train-config`` or ``default``). ``overrides`` win over the recorded values."""
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(LoraTrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"{option}: unknown keys {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    st = run.state
    if isinstance(st.get("num_train_epochs"), int):
        values["epochs"], source["epochs"] = st["num_train_epochs"], "trainer_state.json"
    if isinstance(st.get("train_batch_size"), int):
        values["batch_size"], source["batch_size"] = st["train_batch_size"], "trainer_state.json"
    sched = infer_lr_schedule(run)
    if sched is not None:
        values["lr"], values["schedule"] = sched
        source["lr"] = source["schedule"] = "trainer_state.json (logged learning rates)"
    elif not {"lr", "schedule"} <= set(overrides):
        raise InputError(
            f"the learning rates logged in {str(run.last / 'trainer_state.json')!r} fit no constant, linear or cosine schedule "
            f"(warm-up?); give \"lr\" and \"schedule\" in {option}"
        )
    values["n_checkpoints"], source["n_checkpoints"] = len(run.refs), "checkpoint-N folders"
    if run.adapter_config is not None:
        ac = run.adapter_config
        values["rank"], values["alpha"] = int(ac.get("r", 8)), int(ac.get("lora_alpha", 16))
        tm = ac.get("target_modules")
        if isinstance(tm, list):
            values["target_modules"] = tuple(sorted(tm))
        if ac.get("layers_to_transform") is not None:
            ltt = ac["layers_to_transform"]
            values["layers"] = tuple(ltt) if isinstance(ltt, list) else (int(ltt),)
        for k in ("rank", "alpha", "target_modules", "layers"):
            if k in values:
                source[k] = "adapter_config.json"
    for k, v in overrides.items():
        values[k] = tuple(v) if isinstance(v, list) else v
        source[k] = option
    for k in sorted(known - set(source)):
        source[k] = "default"
    return LoraTrainConfig.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, where=option), source


def read_train_config(path: str | Path | None, option: str = "--train-config") -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{option} {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{option} {str(p)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{option} {str(p)!r} must hold one JSON object of LoRA training settings")
    return data
