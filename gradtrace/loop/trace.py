"""Trace a behaviour of a loop back through the rounds' data with TracIn.

:func:`loop_task_spec` turns a run folder into a
:class:`~gradtrace.spec.TaskSpec`: the round-0 architecture, a causal-LM
task (mean next-token NLL per text), every round's checkpoints with their
learning rates in training order, and every round's training texts (ids
``r<round>-<n>``, tagged with the round they were trained in). So

    gradtrace featurize --task examples/loop_task.py:make_task --out loop_store --projection dense --dim 256

featurizes the whole loop, and a query scores each text of each round. LoRA
runs store only adapters in their checkpoints; the spec's checkpoint loader
loads them into the adapted model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..checkpoints import CheckpointRef
from ..errors import InputError
from ..lm.tasks import TextNLLTask
from ..spec import TaskSpec
from .config import LoopConfig
from .lm import load_state
from .runner import CONFIG_FILE, SelfTrainingLoop, round_dir


def loop_checkpoints(out: str | Path) -> list[CheckpointRef]:
    """Every finished round's checkpoints, in training order, with absolute paths."""
    out = Path(out)
    refs = []
    for t in SelfTrainingLoop.resume(out).finished_rounds():
        for c in json.loads((round_dir(out, t) / "checkpoints.json").read_text(encoding="utf-8")):
            refs.append(CheckpointRef(path=str((out / c["path"]).resolve()), lr=float(c["lr"]), step=c["step"]))
    if not refs:
        raise InputError(f"{str(out)!r}: no finished round has checkpoints")
    return refs


def loop_task_spec(out: str | Path, rounds: Sequence[int] | None = None, max_per_round: int | None = None) -> TaskSpec:
    """A TaskSpec over the run in ``out`` (see the module docstring).

    ``rounds`` limits the training texts to those rounds; ``max_per_round``
    keeps the first texts of each round (a quick look)."""
    from .models import build_lm

    out = Path(out)
    if not (out / CONFIG_FILE).is_file():
        raise InputError(f"{str(out)!r} holds no loop run (no {CONFIG_FILE})")
    config = LoopConfig.from_dict(json.loads((out / CONFIG_FILE).read_text(encoding="utf-8")))
    lm = build_lm(config.model)
    done = SelfTrainingLoop(config, out).finished_rounds()
    texts, ids, tags = [], [], []
    for t in (done if rounds is None else [r for r in rounds if r in done]):
        records = [json.loads(x) for x in (round_dir(out, t) / "train.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        for n, r in enumerate(records[:max_per_round]):
            texts.append(r["text"])
            ids.append(f"r{t}-{n}")
            tags.append(f"round {t} ({r.get('source', '?')})")
    train = [torch.tensor(x, dtype=torch.long) for x in lm.encode(texts)]
    task = TextNLLTask(pad_id=lm.pad_id)

    def model() -> nn.Module:
        return build_lm(config.model).model

    def loader(m: nn.Module, ref: CheckpointRef) -> None:
        load_state(m, torch.load(ref.path, map_location="cpu", weights_only=True))

    return TaskSpec(model=model, task=task, checkpoints=loop_checkpoints(out), train=train, train_ids=ids, train_tags=tags,
                    checkpoint_loader=loader)
