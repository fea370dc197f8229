"""What the CLI needs to featurize and query a Hugging Face run, from flags.

``--hf-model`` is a local model folder (anything ``AutoModelForCausalLM``
loads) or ``smollm2`` (the bundled model). ``--checkpoints`` is a Trainer run
directory (``checkpoint-N`` folders) or one adapter folder. When the
checkpoints are PEFT adapters, the model is wrapped with the adapter's own
``adapter_config.json`` so that the LoRA parameters exist before loading.
``--data`` and ``--queries`` are JSONL files of example dicts (see
:mod:`gradtrace.models.hf`), each optionally with ``id`` and ``tag``.

The settings are saved next to the store (``hf_spec.json``) so that
``gradtrace query`` needs only the store, a behaviour and the queries.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoints import CheckpointRef
from ..configbase import ConfigBase, boolean, int_at_least, optional, positive
from ..data import numbered_jsonl_objects
from ..errors import InputError
from ..lm.load import load_model
from ..lm.lora import wrap_with_adapter_config
from ..lm.tasks import CausalLMTask
from .hf_checkpoints import ADAPTER_FILES, trainer_checkpoints

SPEC_FILE = "hf_spec.json"


@dataclasses.dataclass(frozen=True)
class HFSpec(ConfigBase):
    """A Hugging Face run as the CLI sees it (saved next to the store as ``hf_spec.json``)."""

    model: str
    checkpoints: str
    max_length: int = 256
    as_chat: bool = False
    lr: float | None = None
    data: str | None = None

    _checks = {"max_length": int_at_least(2), "as_chat": boolean, "lr": optional(positive)}

    def refs(self) -> list[CheckpointRef]:
        return trainer_checkpoints(self.checkpoints, self.lr)

    def load(self) -> tuple[nn.Module, CausalLMTask]:
        """The model (wrapped with the checkpoints' LoRA adapter if they are
        adapters) in eval mode, and the task."""
        model, tok = load_base(self.model)
        first = Path(self.refs()[0].path)
        if any((first / f).is_file() for f in ADAPTER_FILES):
            model = wrap_with_adapter_config(model, first)
        model.eval()
        return model, CausalLMTask(tok, max_length=self.max_length, as_chat=self.as_chat)

    def save(self, store_root: str | Path) -> None:
        (Path(store_root) / SPEC_FILE).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def saved(cls, store_root: str | Path) -> "HFSpec":
        path = Path(store_root) / SPEC_FILE
        if not path.is_file():
            raise InputError(
                f"the store {str(store_root)!r} was not made with --hf-model ({SPEC_FILE} is missing); pass --task or --hf-model"
            )
        return cls.from_dict(json.loads(path.read_text()), where=str(path))


def load_base(name: str) -> tuple[nn.Module, Any]:
    """``smollm2`` (bundled) or a local Hugging Face folder; never downloads (see :func:`gradtrace.lm.load.load_model`)."""
    return load_model(name, what="--hf-model")


#: Fields of a prompt/completion example (training data; logprob and loss
#: queries); a chat example has ``messages`` instead.
COMPLETION_FIELDS = ("prompt", "completion")
#: Fields of a preference pair (margin and contrast queries).
PAIR_FIELDS = ("prompt", "chosen", "rejected")


def read_jsonl(
    path: str | Path, what: str, fields: tuple[str, ...] | None = None, who: str = "each line needs",
) -> tuple[list[dict[str, Any]], list[str] | None, list[Any] | None]:
    """Examples, ids (if every line has ``id``) and tags (if any line has ``tag``).

    With ``fields``, every line must have each of them as a string (for
    :data:`COMPLETION_FIELDS`, a ``messages`` list may stand instead); an
    error names ``what``, the file, the 1-based line and the missing field,
    ``who`` saying who needs it (``"--behaviour margin needs"``)."""
    label = f"{what} {str(path)!r}"
    numbered = numbered_jsonl_objects(path, label)
    if not numbered:
        raise InputError(f"{what}: {str(path)!r} holds no examples")
    if fields is not None:
        alternative = " (or 'messages')" if fields == COMPLETION_FIELDS else ""
        rule = f"{who} " + ", ".join(map(repr, fields)) + alternative
        for line, r in numbered:
            if alternative and "messages" in r:
                continue
            for key in fields:
                if key not in r:
                    raise InputError(f"{label}, line {line}: missing {key!r} (keys: {sorted(r)!r}); {rule}")
                if not isinstance(r[key], str):
                    raise InputError(f"{label}, line {line}: {key!r} must be a string; got {type(r[key]).__name__} ({rule})")
    rows = [r for _, r in numbered]
    ids = [str(r["id"]) for r in rows] if all("id" in r for r in rows) else None
    tags = [r.get("tag") for r in rows] if any("tag" in r for r in rows) else None
    examples = [{k: v for k, v in r.items() if k not in ("id", "tag")} for r in rows]
    return examples, ids, tags
