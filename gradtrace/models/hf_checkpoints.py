"""Checkpoints of real Hugging Face runs.

* A Trainer run directory holds ``checkpoint-N`` folders; each has the weights
  (``adapter_model.safetensors`` for a PEFT model, ``model.safetensors``
  otherwise), ``trainer_state.json`` (whose ``log_history`` gives the learning
  rate in force at each logged step) and ``optimizer.pt`` (Adam's moments).
* A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
  is one checkpoint on its own; its learning rate is given by the user.

:func:`trainer_checkpoints` lists a run's checkpoints with their learning
rates, :func:`load_hf_checkpoint` loads one into a model strictly (a
checkpoint of another model or an adapter that does not match is a
:class:`~gradtrace.errors.CheckpointError` naming the keys), and
:func:`adam_transform` reads the optimizer state for Adam-preconditioned
training gradients.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..checkpoints import CheckpointRef, check_state_matches, holds_weights_of, note_weights_source
from ..errors import CheckpointError, InputError, short_list
from ..grads.adam import AdamPreconditioner

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def trainer_checkpoints(run_dir: str | Path, lr: float | None = None) -> list[CheckpointRef]:
    """The ``checkpoint-N`` folders of a Trainer run, by step, each with the
    learning rate logged at the last step <= N in ``trainer_state.json``
    (or ``lr`` for all when given). A single adapter or checkpoint folder
    counts as a run of one checkpoint."""
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"--checkpoints: {str(run)!r} is not a directory")
    found = sorted((int(m.group(1)), p) for p in run.iterdir() if p.is_dir() and (m := _CKPT.match(p.name)))
    if not found:
        if _weights_file(run) is None:
            raise InputError(
                f"--checkpoints: {str(run)!r} has no checkpoint-N folders and no weights "
                f"({', '.join(ADAPTER_FILES + MODEL_FILES)})"
            )
        m = _CKPT.match(run.name)
        found = [(int(m.group(1)) if m else 0, run)]
    refs = []
    latest = found[-1][1]
    for step, path in found:
        rate = lr if lr is not None else _logged_lr(path, [path, latest, run], step)
        refs.append(CheckpointRef(path=str(path), lr=float(rate), step=step))
    return refs


def traced_checkpoints(refs: list[CheckpointRef], which: str) -> list[CheckpointRef]:
    """The checkpoints to trace: all of ``refs`` (``which="all"``) or only the last (``"last"``)."""
    if which not in ("all", "last"):
        raise InputError(f"which checkpoints to trace must be 'all' or 'last'; got {which!r}")
    return list(refs) if which == "all" else list(refs[-1:])


def _logged_lr(ckpt: Path, folders: list[Path], step: int) -> float:
    """The learning rate logged at the last step <= ``step``, from the first
    ``trainer_state.json`` found in ``folders`` (the checkpoint's own, the
    run's latest checkpoint's, the run folder's)."""
    for state_file in (f / "trainer_state.json" for f in folders):
        if state_file.is_file():
            break
    else:
        raise InputError(
            f"checkpoint {str(ckpt)!r}: no trainer_state.json to read its learning rate from; pass the learning rate (--lr)"
        )
    try:
        history = json.loads(state_file.read_text()).get("log_history", [])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(state_file)!r} is not valid JSON: {exc}") from exc
    logged = [(int(e["step"]), float(e["learning_rate"])) for e in history if "learning_rate" in e and "step" in e]
    before = [rate for s, rate in sorted(logged) if s <= step]
    if before:
        return before[-1]
    if logged:  # logged only after this step: the first value is the closest
        return sorted(logged)[0][1]
    raise InputError(
        f"{str(state_file)!r} logs no learning_rate (log_history has {len(history)} entries); "
        "train with logging_steps <= save_steps, or pass the learning rate (--lr)"
    )


def _weights_file(folder: Path) -> Path | None:
    for name in ADAPTER_FILES + MODEL_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        return dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # safetensors and torch raise several types for bad files
        raise CheckpointError(f"checkpoint file {str(path)!r} could not be read: {exc}") from exc


def load_hf_checkpoint(model: nn.Module, ref: CheckpointRef | str | Path) -> nn.Module:
    """Load a Trainer checkpoint or adapter folder into ``model`` in place.

    An adapter file fills the model's LoRA parameters (every one of them, with
    matching shapes); a full model file fills every parameter. Anything else
    raises :class:`~gradtrace.errors.CheckpointError`.

    A file the model already holds is not read again: when the model was
    loaded from it (:func:`gradtrace.lm.load.load_model`, or this function)
    and neither the file nor any weight changed since
    (:func:`gradtrace.checkpoints.holds_weights_of`), e.g. featurizing a
    model at its own weights, whose folder is also the checkpoint.
    """
    folder = Path(ref.path if isinstance(ref, CheckpointRef) else ref)
    if folder.is_file():
        weights_path = folder
    else:
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint {str(folder)!r} does not exist")
        found = _weights_file(folder)
        if found is None:
            raise CheckpointError(f"checkpoint {str(folder)!r} holds none of {ADAPTER_FILES + MODEL_FILES}")
        weights_path = found
    if holds_weights_of(model, weights_path):
        return model
    state = _read_weights(weights_path)
    if weights_path.name.startswith("adapter_model"):
        _load_adapter(model, state, weights_path)
    else:
        _load_full(model, state, weights_path)
    note_weights_source(model, weights_path)
    return model


def adapter_key_map(model: nn.Module) -> dict[str, str]:
    """``{key in a saved adapter file: parameter name in the model}`` for a
    PEFT model's adapter parameters (PEFT saves them without the adapter name)."""
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    adapters = getattr(model, "peft_config", {}) or {"default": None}
    out = {}
    for name in names:
        key = name
        for adapter in adapters:
            key = key.replace(f".{adapter}.", ".")
        out[key] = name
    return out


def _load_adapter(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    mapping = adapter_key_map(model)
    if not mapping:
        raise CheckpointError(f"checkpoint {str(path)!r} is a PEFT adapter but the model has no LoRA parameters (load it as a PeftModel)")
    params = dict(model.named_parameters())
    check_state_matches(state, {k: tuple(params[n].shape) for k, n in mapping.items()}, f"adapter {str(path)!r}",
                        "the model's LoRA parameters", " (another rank or base model?)")
    with torch.no_grad():
        for k, n in mapping.items():
            params[n].copy_(state[k].to(params[n].dtype))


def _load_full(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    # Tied weights (lm_head tied to the embeddings) are saved once.
    shared = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(p.data_ptr(), []).append(name)
    missing = [k for k in missing if not any(o in state for o in shared.get(expected[k].data_ptr(), []))]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a checkpoint of this model: missing keys {short_list(missing)}, "
            f"unexpected keys {short_list(unexpected)}"
        )
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match the model's shapes: {short_list(wrong)}")
    model.load_state_dict(dict(state), strict=False)


def optimizer_param_order(model: nn.Module) -> list[str]:
    """Parameter names in the order the Trainer gave them to its optimizer:
    trainable parameters with weight decay, then those without."""
    try:
        from transformers import Trainer

        decay = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    except (ImportError, AttributeError, TypeError):
        pattern = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")
        decay = {n for n, _ in model.named_parameters() if not pattern.search(n)}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in trainable if n in decay] + [n for n, _ in trainable if n not in decay]


def read_adam_state(ckpt_dir: str | Path, model: nn.Module) -> AdamPreconditioner:
    """Adam's moments from ``optimizer.pt`` of a Trainer checkpoint, by parameter name."""
    path = Path(ckpt_dir) / "optimizer.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} has no optimizer.pt (Adam preconditioning needs the optimizer state)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise CheckpointError(f"{str(path)!r} could not be read: {exc}") from exc
    if not isinstance(saved, Mapping) or "state" not in saved or "param_groups" not in saved:
        raise CheckpointError(f"{str(path)!r} is not an optimizer state dict")
    groups = saved["param_groups"]
    indices = [i for g in groups for i in g["params"]]
    names = optimizer_param_order(model)
    if len(indices) != len(names):
        raise CheckpointError(
            f"{str(path)!r} holds {len(indices)} parameters; the model has {len(names)} trainable ones (another model or adapter?)"
        )
    params = dict(model.named_parameters())
    m, v = {}, {}
    for idx, name in zip(indices, names):
        st = saved["state"].get(idx)
        if not st or "exp_avg" not in st or "exp_avg_sq" not in st:
            raise CheckpointError(f"{str(path)!r}: parameter {name!r} (index {idx}) has no Adam moments (not an Adam optimizer?)")
        if tuple(st["exp_avg"].shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"{str(path)!r}: moments of index {idx} have shape {tuple(st['exp_avg'].shape)}, "
                f"parameter {name!r} has {tuple(params[name].shape)}"
            )
        m[name], v[name] = st["exp_avg"], st["exp_avg_sq"]
    beta1, beta2 = groups[0].get("betas", (0.9, 0.999))
    return AdamPreconditioner(m, v, float(beta1), float(beta2), float(groups[0].get("eps", 1e-8)))


def adam_transform(model: nn.Module, ref: CheckpointRef, param_names: list[str]) -> AdamPreconditioner:
    """``featurize(train_transform=adam_transform)``: the Adam preconditioner
    of each checkpoint, from its ``optimizer.pt``."""
    pre = read_adam_state(ref.path, model)
    lacking = [n for n in param_names if n not in pre.exp_avg]
    if lacking:
        raise InputError(f"Adam preconditioning: the optimizer did not train these selected parameters: {lacking[:6]!r}")
    return pre
