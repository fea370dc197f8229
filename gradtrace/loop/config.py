"""Settings of a self-training loop, read from a TOML file or built in Python.

Every section is a frozen dataclass with ``to_dict()/from_dict()``; a run
folder keeps the whole config in ``loop.json`` and a resumed run uses it.
Errors name the field (``monitors.nll.margin``, ``stop[0].above``,
``data.prompts``), the rule and the bad value.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import InputError
from ..lm.embed import NAMES as EMBEDDER_NAMES
from .monitors import build_monitors
from .stop import StopRule

REGIMES = ("replace", "accumulate", "replay")
MODEL_KINDS = ("tiny_gpt2", "smollm2_lora", "hf_lora")
HASHING_ANALYZER = "char"  # the loop's hashing embedder ("hashed"/"hashing") hashes character n-grams


def _check_fields(cls: type, d: Mapping[str, Any], field: str) -> None:
    if not isinstance(d, Mapping):
        raise InputError(f"{field} must be a table; got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"{field}: unknown fields {unknown}; allowed: {sorted(known)}")


def _typed(value: Any, kind: type | tuple[type, ...], field: str, rule: str, ok: Callable[[Any], bool] = lambda v: True) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok_type = False
    else:
        ok_type = isinstance(value, kinds)
    if not ok_type or not ok(value):
        raise InputError(f"{field} must be {rule}; got {value!r} ({type(value).__name__})")


class _Section:
    """to_dict/from_dict for the flat dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "") -> Any:
        _check_fields(cls, d, field or cls.__name__)
        return cls(**dict(d))


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """The model of round 0. ``tiny_gpt2``: the zoo's tiny GPT-2 with the
    byte tokenizer, trained in full. ``smollm2_lora``: the bundled SmolLM2
    with LoRA adapters (only they train). ``hf_lora``: a local Hugging Face
    folder ``path`` with LoRA adapters."""

    kind: str = "tiny_gpt2"
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    seed: int = 0
    path: str | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    max_length: int = 96

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise InputError(f"model.kind must be one of {MODEL_KINDS}; got {self.kind!r}")
        for name in ("n_layer", "n_embd", "n_head", "lora_r", "lora_alpha", "max_length"):
            _typed(getattr(self, name), int, f"model.{name}", "a positive integer", lambda v: v > 0)
        if isinstance(self.lora_targets, list):
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.kind == "hf_lora" and not self.path:
            raise InputError("model.path must name a local Hugging Face model folder when model.kind = 'hf_lora'")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """Files: real training texts and held-out real texts (JSONL with a
    ``text`` field), generation prompts and probe prompts (one per line).
    Relative paths are relative to the config file."""

    train: str = ""
    heldout: str = ""
    prompts: str = ""
    probes: str = ""

    def resolved(self, base: Path) -> "DataConfig":
        out = {}
        for name in ("train", "heldout", "prompts", "probes"):
            value = getattr(self, name)
            _typed(value, str, f"data.{name}", "a file path", lambda v: bool(v))
            path = Path(value) if Path(value).is_absolute() else (base / value)
            if not path.is_file():
                raise InputError(f"data.{name}: file {str(path)!r} does not exist")
            out[name] = str(path.resolve())
        return DataConfig(**out)


@dataclasses.dataclass(frozen=True)
class LoopGenerationConfig(_Section):
    """Sampling: ``n_per_prompt`` samples per prompt, up to ``max_new_tokens``
    (the ``[generation]`` table; drawn by :func:`gradtrace.lm.sample.sample_continuations`)."""

    n_per_prompt: int = 50
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        _typed(self.n_per_prompt, int, "generation.n_per_prompt", "a positive integer", lambda v: v > 0)
        _typed(self.max_new_tokens, int, "generation.max_new_tokens", "a positive integer", lambda v: v > 0)
        _typed(self.temperature, (int, float), "generation.temperature", "a number > 0", lambda v: v > 0)
        _typed(self.top_p, (int, float), "generation.top_p", "a number in (0, 1]", lambda v: 0 < v <= 1)


GenerationConfig = LoopGenerationConfig  # the name it had (docs and old scripts); the sampler's own settings are gradtrace.lm.sample.SamplingConfig


@dataclasses.dataclass(frozen=True)
class LoopTrainConfig(_Section):
    """``base_steps`` AdamW steps on the real data make round 0 (0: use the
    model as loaded); each later round trains ``steps`` steps from the
    previous round's weights (``init="previous"``) or round 0's (``"base"``),
    at a ``constant`` learning rate or one decaying ``linear``-ly within the
    round (each checkpoint records the rate of its step).
    A checkpoint is saved every ``checkpoint_every`` steps. ``regime``:
    ``replace`` (only the last round's curated generations), ``accumulate``
    (real data plus every round's curated generations) or ``replay`` (the
    last round's curated generations plus real texts making up
    ``replay_fraction`` of the set). ``ewc`` > 0 adds an EWC penalty toward
    round 0 (diagonal Fisher from ``fisher_examples`` real texts)."""

    base_steps: int = 300
    steps: int = 100
    batch_size: int = 32
    lr: float = 3e-3
    base_lr: float | None = None
    init: str = "previous"
    schedule: str = "constant"
    checkpoint_every: int = 50
    regime: str = "replace"
    replay_fraction: float = 0.0
    ewc: float = 0.0
    fisher_examples: int = 64

    def __post_init__(self) -> None:
        for name in ("base_steps",):
            _typed(getattr(self, name), int, f"train.{name}", "a non-negative integer", lambda v: v >= 0)
        for name in ("steps", "batch_size", "checkpoint_every", "fisher_examples"):
            _typed(getattr(self, name), int, f"train.{name}", "a positive integer", lambda v: v > 0)
        _typed(self.lr, (int, float), "train.lr", "a positive number", lambda v: v > 0)
        if self.base_lr is not None:
            _typed(self.base_lr, (int, float), "train.base_lr", "a positive number", lambda v: v > 0)
        if self.schedule not in ("constant", "linear"):
            raise InputError(f"train.schedule must be 'constant' or 'linear'; got {self.schedule!r}")
        if self.init not in ("previous", "base"):
            raise InputError(f"train.init must be 'previous' or 'base'; got {self.init!r}")
        if self.regime not in REGIMES:
            raise InputError(f"train.regime must be one of {REGIMES}; got {self.regime!r}")
        _typed(self.replay_fraction, (int, float), "train.replay_fraction", "a number in [0, 1)", lambda v: 0 <= v < 1)
        if self.regime == "replay" and self.replay_fraction <= 0:
            raise InputError(f"train.replay_fraction must be > 0 with regime 'replay'; got {self.replay_fraction!r}")
        _typed(self.ewc, (int, float), "train.ewc", "a non-negative number", lambda v: v >= 0)


TrainConfig = LoopTrainConfig  # the name it had (docs and old scripts); gradtrace.unlearn has its own TrainConfig


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """A whole loop. ``monitors`` maps a monitor name (``nll``, ``diversity``,
    ``clusters``, ``attribute``, ``cka``) to its settings; ``stop`` lists
    :class:`StopRule` tables; ``curation`` lists policy tables (see
    :func:`gradtrace.loop.curation.policy_from_dict`); ``embedder`` is
    ``"hashed"`` (also spelled ``"hashing"``: character n-gram hashing) or ``"minilm"``. ``stop_on_breach=False`` records the stop
    event but runs every round."""

    data: DataConfig
    rounds: int = 5
    seed: int = 0
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    generation: LoopGenerationConfig = dataclasses.field(default_factory=LoopGenerationConfig)
    train: LoopTrainConfig = dataclasses.field(default_factory=LoopTrainConfig)
    curation: tuple[Mapping[str, Any], ...] = ()
    monitors: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=lambda: {"nll": {}, "diversity": {}, "cka": {}})
    stop: tuple[StopRule, ...] = ()
    embedder: str = "minilm"
    stop_on_breach: bool = True

    def __post_init__(self) -> None:
        _typed(self.rounds, int, "rounds", "a positive integer", lambda v: v > 0)
        _typed(self.seed, int, "seed", "an integer")
        _typed(self.stop_on_breach, bool, "stop_on_breach", "true or false")
        if self.embedder not in EMBEDDER_NAMES:
            raise InputError(f"embedder must be one of {sorted(EMBEDDER_NAMES)}; got {self.embedder!r}")
        if not isinstance(self.monitors, Mapping):
            raise InputError(f"monitors must be a table of monitor names; got {type(self.monitors).__name__}")
        for name, settings in self.monitors.items():
            if not isinstance(settings, Mapping):
                raise InputError(f"monitors.{name} must be a table; got {settings!r}")
        build_monitors(self.monitors)  # checks names and settings now, not rounds later
        object.__setattr__(self, "curation", tuple(dict(c) for c in self.curation))
        for i, c in enumerate(self.curation):
            if "kind" not in c:
                raise InputError(f"curation[{i}].kind is missing")
        object.__setattr__(self, "stop", tuple(self.stop))

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data.to_dict(), "rounds": self.rounds, "seed": self.seed, "model": self.model.to_dict(),
            "generation": self.generation.to_dict(), "train": self.train.to_dict(), "curation": [dict(c) for c in self.curation],
            "monitors": json.loads(json.dumps(self.monitors)), "stop": [r.to_dict() for r in self.stop],
            "embedder": self.embedder, "stop_on_breach": self.stop_on_breach,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: str | Path | None = None) -> "LoopConfig":
        """Parse and check a config table; relative data paths resolve against ``base``."""
        d = dict(d)
        d.pop(_OUT, None)
        _check_fields(cls, d, "config")
        if "data" not in d:
            raise InputError("data: the [data] table is missing (train, heldout, prompts, probes)")
        data = DataConfig.from_dict(d.pop("data"), "data").resolved(Path(base) if base is not None else Path.cwd())
        sections = {"model": ModelConfig, "generation": LoopGenerationConfig, "train": LoopTrainConfig}
        kw: dict[str, Any] = {k: sections[k].from_dict(d.pop(k), k) for k in list(sections) if k in d}
        stop = d.pop("stop", [])
        if not isinstance(stop, list):
            raise InputError(f"stop must be a list of tables ([[stop]]); got {type(stop).__name__}")
        kw["stop"] = tuple(StopRule.from_dict(s, f"stop[{i}]") for i, s in enumerate(stop))
        curation = d.pop("curation", [])
        if not isinstance(curation, list) or not all(isinstance(c, Mapping) for c in curation):
            raise InputError("curation must be a list of tables ([[curation]])")
        kw["curation"] = tuple(curation)
        return cls(data=data, **kw, **d)


# LoopConfig accepts an 'out' key in TOML files (where the run goes); it is not a setting of the loop itself.
_OUT = "out"


def read_toml(path: str | Path) -> tuple[LoopConfig, Path | None]:
    """The config in a TOML file and its ``out`` folder (relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config: file {str(path)!r} does not exist")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"--config {str(path)!r} is not valid TOML: {exc}") from None
    out = raw.get(_OUT)
    if out is not None and not isinstance(out, str):
        raise InputError(f"out must be a folder path; got {out!r}")
    base = path.resolve().parent
    config = LoopConfig.from_dict(raw, base=base)
    return config, (None if out is None else (Path(out) if Path(out).is_absolute() else (base / out).resolve()))


def load_callable(target: Any, field: str) -> Callable[..., Any]:
    """``path/to/file.py:function`` or ``package.module:function``."""
    from ..spec import import_target

    return import_target(target, field)
