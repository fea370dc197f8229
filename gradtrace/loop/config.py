"""Settings of a self-training loop, read from a TOML file or built in Python.

Every section is a frozen :class:`~gradtrace.configbase.ConfigBase`
dataclass; a run folder keeps the whole config in ``loop.json`` and a resumed
run must give the same ``to_dict()`` (pinned in tests/test_configbase.py).
Errors name the field (``monitors.nll.margin``, ``stop[0].above``,
``data.prompts``), the rule and the bad value.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ..configbase import (
    ConfigBase, boolean, check_unknown_keys, in_range, integer, non_negative, non_negative_int, one_of, optional, positive, positive_int,
)
from ..errors import InputError
from ..lm.embed import NAMES as EMBEDDER_NAMES
from .monitors import build_monitors
from .stop import StopRule

REGIMES = ("replace", "accumulate", "replay")
MODEL_KINDS = ("tiny_gpt2", "smollm2_lora", "hf_lora")
HASHING_ANALYZER = "char"  # the loop's hashing embedder ("hashed"/"hashing") hashes character n-grams


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigBase):
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

    _prefix = "model."
    _checks = {"kind": one_of(MODEL_KINDS), "n_layer": positive_int, "n_embd": positive_int, "n_head": positive_int,
               "seed": integer, "lora_r": positive_int, "lora_alpha": positive_int, "max_length": positive_int}

    def _check(self) -> None:
        if self.kind == "hf_lora" and not self.path:
            raise InputError(f"model.path must name a local Hugging Face model folder when model.kind = 'hf_lora'; got {self.path!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Files: real training texts and held-out real texts (JSONL with a
    ``text`` field), generation prompts and probe prompts (one per line).
    Relative paths are relative to the config file."""

    train: str = ""
    heldout: str = ""
    prompts: str = ""
    probes: str = ""

    _prefix = "data."

    def resolved(self, base: Path) -> "DataConfig":
        out = {}
        for name in ("train", "heldout", "prompts", "probes"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InputError(f"data.{name} must be a file path; got {value!r}")
            path = Path(value) if Path(value).is_absolute() else (base / value)
            if not path.is_file():
                raise InputError(f"data.{name}: file {str(path)!r} does not exist")
            out[name] = str(path.resolve())
        return DataConfig(**out)


@dataclasses.dataclass(frozen=True)
class LoopGenerationConfig(ConfigBase):
    """Sampling: ``n_per_prompt`` samples per prompt, up to ``max_new_tokens``
    (the ``[generation]`` table; drawn by :func:`gradtrace.lm.sample.sample_continuations`)."""

    n_per_prompt: int = 50
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0

    _prefix = "generation."
    _checks = {"n_per_prompt": positive_int, "max_new_tokens": positive_int, "temperature": positive,
               "top_p": in_range(0, 1, low_open=True)}


GenerationConfig = LoopGenerationConfig  # the name it had (docs and old scripts); the sampler's own settings are gradtrace.lm.sample.SamplingConfig


@dataclasses.dataclass(frozen=True)
class LoopTrainConfig(ConfigBase):
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

    _prefix = "train."
    _checks = {
        "base_steps": non_negative_int, "steps": positive_int, "batch_size": positive_int, "lr": positive, "base_lr": optional(positive),
        "init": one_of(("previous", "base")), "schedule": one_of(("constant", "linear")), "checkpoint_every": positive_int,
        "regime": one_of(REGIMES), "replay_fraction": in_range(0, 1, high_open=True), "ewc": non_negative,
        "fisher_examples": positive_int,
    }

    def _check(self) -> None:
        if self.regime == "replay" and self.replay_fraction <= 0:
            raise InputError(f"train.replay_fraction must be > 0 with regime 'replay'; got {self.replay_fraction!r}")


TrainConfig = LoopTrainConfig  # the name it had (docs and old scripts); gradtrace.unlearn has its own TrainConfig

STOP_TRACE_PROJECTIONS = ("auto", "dense", "kronecker", "none")


@dataclasses.dataclass(frozen=True)
class StopTraceConfig(ConfigBase):
    """What the loop does when a stop rule fires: trace the fired monitor's
    quantity back to the training data of the rounds (the ``[stop_trace]``
    table; :mod:`gradtrace.loop.trace`, docs/loop.md).

    ``enabled``: on by default. ``include_base``: also score round 0's
    training data (off: the monitors measure change since round 0, which
    rounds 1..t made). ``attribute_target``: how an ``attribute`` metric
    becomes a target (``contrast`` or ``rate_gradient``; docs/loop.md). ``max_queries``: texts per side of the target (the
    first ones). ``top_k``: examples listed in the stop report.
    ``max_per_round``: score only the first training texts of each round
    (None: all). ``projection`` (``auto``: dense for the tiny GPT-2,
    Kronecker for LoRA adapters), ``dim``, ``seed``, ``batch_size`` and
    ``dtype``: how each round's gradient store is made.
    """

    enabled: bool = True
    include_base: bool = False
    attribute_target: str = "contrast"
    max_queries: int = 32
    top_k: int = 10
    max_per_round: int | None = None
    projection: str = "auto"
    dim: int = 256
    seed: int = 0
    batch_size: int = 16
    dtype: str = "float32"

    _prefix = "stop_trace."
    _checks = {"enabled": boolean, "include_base": boolean, "attribute_target": one_of(("contrast", "rate_gradient")), "max_queries": positive_int, "top_k": positive_int,
               "max_per_round": optional(positive_int), "projection": one_of(STOP_TRACE_PROJECTIONS), "dim": positive_int,
               "seed": non_negative_int, "batch_size": positive_int, "dtype": one_of(("float16", "float32", "float64"))}


@dataclasses.dataclass(frozen=True)
class LoopConfig(ConfigBase):
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
    stop_trace: StopTraceConfig = dataclasses.field(default_factory=StopTraceConfig)

    _checks = {"rounds": positive_int, "seed": integer, "embedder": one_of(sorted(EMBEDDER_NAMES)), "stop_on_breach": boolean}
    # The stop trace changes no round, so it is not part of what a resumed run must match: the run folder keeps it
    # beside the config in loop.json (key STOP_TRACE_KEY), and a resumed run may change it (its results are cached by it).
    _not_saved = ("stop_trace",)

    def _check(self) -> None:
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
        for i, rule in enumerate(self.stop):
            if not isinstance(rule, StopRule):
                raise InputError(f"stop[{i}] must be a StopRule; got {type(rule).__name__}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: str | Path | None = None) -> "LoopConfig":
        """Parse and check a config table; relative data paths resolve against ``base``."""
        if not isinstance(d, Mapping):
            raise InputError(f"config must be a table of settings; got {type(d).__name__}")
        d = dict(d)
        d.pop(_OUT, None)
        trace = d.pop(STOP_TRACE_KEY, None)
        kw: dict[str, Any] = {} if trace is None else {STOP_TRACE_KEY: StopTraceConfig.from_dict(trace, where="stop_trace")}
        check_unknown_keys(d, cls.saved_fields(), "config")
        if "data" not in d:
            raise InputError("data: the [data] table is missing (train, heldout, prompts, probes)")
        data = DataConfig.from_dict(d.pop("data"), where="data").resolved(Path(base) if base is not None else Path.cwd())
        sections = {"model": ModelConfig, "generation": LoopGenerationConfig, "train": LoopTrainConfig}
        kw.update({k: sections[k].from_dict(d.pop(k), where=k) for k in list(sections) if k in d})
        stop = d.pop("stop", [])
        if not isinstance(stop, list):
            raise InputError(f"stop must be a list of tables ([[stop]]); got {type(stop).__name__}")
        kw["stop"] = tuple(StopRule.from_dict(s, f"stop[{i}]") for i, s in enumerate(stop))
        curation = d.pop("curation", [])
        if not isinstance(curation, list) or not all(isinstance(c, Mapping) for c in curation):
            raise InputError("curation must be a list of tables ([[curation]])")
        kw["curation"] = tuple(curation)
        return cls(data=data, **kw, **d)

    def to_file_dict(self) -> dict[str, Any]:
        """What a run folder's ``loop.json`` holds: :meth:`to_dict` and the ``stop_trace`` table."""
        return {**self.to_dict(), STOP_TRACE_KEY: self.stop_trace.to_dict()}


# The key of the stop-trace settings in a config file and in loop.json.
STOP_TRACE_KEY = "stop_trace"

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
