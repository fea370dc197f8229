"""Where samples come from: a local Hugging Face model (optionally with a LoRA
adapter), an OpenAI-compatible HTTP endpoint, or JSONL files of texts already
generated.

Every source answers ``sample(prompts, n_per_prompt, seed, progress)`` with a
list of :class:`Sample` (prompt id, prompt, text), in prompt order. Model
sources write each finished batch to a JSONL cache keyed by their settings,
so an interrupted run resumes where it stopped and a rerun costs nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol, Sequence

from ..configbase import positive_int
from ..data import read_jsonl_objects
from ..errors import InputError
from ..http import EndpointError, Timeouts, origin, post_json
from ..progress import progress_bar
from ..lm.sample import SamplingConfig

__all__ = [
    "EndpointError", "EndpointSource", "HFSource", "JsonlSource", "Prompt", "Sample", "Source", "Timeouts", "check_pairing",
    "parse_source", "read_prompts",
]


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclasses.dataclass(frozen=True)
class Sample:
    prompt_id: str
    prompt: str
    text: str


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from JSONL: one object per line with ``prompt`` (or ``text``) and an optional ``id``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--prompts: file {str(path)!r} does not exist")
    prompts: list[Prompt] = []
    for i, rec in enumerate(read_jsonl_objects(path)):
        text = rec.get("prompt", rec.get("text"))
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{path}: line {i + 1} needs a non-empty string field 'prompt'; got {rec!r:.80}")
        prompts.append(Prompt(str(rec.get("id", i)), text))
    if not prompts:
        raise InputError(f"{path}: the prompt file is empty")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: prompt ids must be unique; {sorted({i for i in ids if ids.count(i) > 1})[:5]} repeat")
    return prompts


class Source(Protocol):
    def describe(self) -> dict[str, Any]: ...
    def sample(self, prompts: Sequence[Prompt], n_per_prompt: int, seed: int, progress: bool = False) -> list[Sample]: ...


class JsonlSource:
    """Texts already generated: JSONL lines with ``text`` and optionally ``prompt_id``/``prompt``.

    ``sample`` ignores ``n_per_prompt`` and ``seed`` and returns the file's
    texts; when the lines carry prompt ids, only the given prompts' texts.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def describe(self) -> dict[str, Any]:
        return {"kind": "jsonl", "path": str(self.path)}

    def sample(self, prompts: Sequence[Prompt], n_per_prompt: int = 1, seed: int = 0, progress: bool = False) -> list[Sample]:
        if not self.path.is_file():
            raise InputError(f"JSONL source {str(self.path)!r} does not exist")
        records = read_jsonl_objects(self.path)
        if not records:
            raise InputError(f"JSONL source {str(self.path)!r} is empty; it needs one {{\"text\": ...}} object per line")
        out = []
        by_id = {p.id: p for p in prompts}
        for i, rec in enumerate(records):
            text = rec.get("text")
            if not isinstance(text, str):
                raise InputError(f"{self.path}: line {i + 1} needs a string field 'text'")
            pid = rec.get("prompt_id")
            if pid is not None and by_id and str(pid) not in by_id:
                continue
            prompt = by_id[str(pid)].text if pid is not None and str(pid) in by_id else str(rec.get("prompt", ""))
            out.append(Sample(str(pid) if pid is not None else "", prompt, text))
        return out


class _Generating:
    """Shared by model sources: batching, caching to JSONL, resume, progress."""

    generation: SamplingConfig
    cache_dir: Path | None

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def _complete(self, prompts: list[str], seed: int) -> list[str]:
        raise NotImplementedError

    def cache_path(self, prompts: Sequence[Prompt], n_per_prompt: int, seed: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps({"source": self.describe(), "prompts": [[p.id, p.text] for p in prompts], "n": n_per_prompt, "seed": seed},
                         sort_keys=True)
        return Path(self.cache_dir) / f"samples-{hashlib.sha256(key.encode()).hexdigest()[:20]}.jsonl"

    def sample(self, prompts: Sequence[Prompt], n_per_prompt: int, seed: int, progress: bool = False) -> list[Sample]:
        if not prompts:
            raise InputError("prompts must not be empty")
        positive_int(n_per_prompt, "n_per_prompt")
        jobs = [(p, j) for j in range(n_per_prompt) for p in prompts]
        bs = self.generation.batch_size
        batches = [jobs[i : i + bs] for i in range(0, len(jobs), bs)]
        path = self.cache_path(prompts, n_per_prompt, seed)
        done: dict[int, list[str]] = {}
        if path is not None and path.is_file():
            for rec in read_jsonl_objects(path):
                done[int(rec["batch"])] = rec["texts"]
        with progress_bar("sampling", len(jobs), progress) as bar:
            bar.advance(sum(len(batches[b]) for b in done if b < len(batches)))
            for b, batch in enumerate(batches):
                if b in done:
                    continue
                texts = self._complete([p.text for p, _ in batch], seed * 1_000_003 + b)
                done[b] = texts
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"batch": b, "texts": texts}) + "\n")
                bar.advance(len(batch))
                if progress:
                    bar.note(f"batch {b + 1}/{len(batches)} done")
        out = []
        for b, batch in enumerate(batches):
            out.extend(Sample(p.id, p.text, t) for (p, _), t in zip(batch, done[b]))
        return out


class HFSource(_Generating):
    """A local causal LM: ``"smollm2"`` (the bundled SmolLM2-135M-Instruct) or a
    Hugging Face folder, optionally with a PEFT/LoRA adapter folder on top."""

    def __init__(self, model: str = "smollm2", adapter: str | Path | None = None, generation: SamplingConfig | None = None,
                 cache_dir: str | Path | None = None, device: str = "cpu", dtype: str = "float32"):
        if dtype not in ("float32", "bfloat16"):
            raise InputError(f"dtype must be 'float32' or 'bfloat16'; got {dtype!r}")
        self.model_name, self.adapter = str(model), (str(adapter) if adapter is not None else None)
        self.dtype = dtype
        self.generation = generation or SamplingConfig()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self._loaded: tuple[Any, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf", "model": self.model_name, "adapter": self.adapter, "dtype": self.dtype, "generation": self.generation.to_dict()}

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once."""
        if self._loaded is None:
            from ..lm.load import load_model

            model, tok = load_model(self.model_name, dtype=self.dtype, adapter=self.adapter, what="model")
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            model.to(self.device).eval()
            self._loaded = (model, tok)
        return self._loaded

    def _complete(self, prompts: list[str], seed: int) -> list[str]:
        import torch

        from ..lm.sample import sample_chat

        model, tok = self.load()
        return sample_chat(model, tok, prompts, self.generation, torch.Generator().manual_seed(seed))


class EndpointSource(_Generating):
    """An OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` is the part before ``/chat/completions`` (e.g.
    ``http://localhost:8000/v1``). The API key, if any, is read from the
    environment variable named by ``api_key_env`` and never stored or logged.
    Requests go through :func:`gradtrace.http.post_json`: redirects are
    followed only to the same origin (the key never reaches another host),
    ``timeouts`` bounds the connection, each read and the whole request
    (retries included); failures are retried ``retries`` times with
    exponential backoff, then raise :class:`~gradtrace.http.EndpointError`
    naming the URL and the model.
    """

    def __init__(self, base_url: str, model: str, generation: SamplingConfig | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeouts: Timeouts | None = None, retries: int = 2, backoff: float = 0.5, cache_dir: str | Path | None = None):
        origin(base_url)  # an http(s) URL with a host, or InputError
        if timeouts is not None and not isinstance(timeouts, Timeouts):
            raise InputError(f"timeouts must be a gradtrace.http.Timeouts; got {type(timeouts).__name__}")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.generation = generation or SamplingConfig()
        self.api_key_env, self.timeouts, self.retries, self.backoff = api_key_env, timeouts or Timeouts(), retries, backoff
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "base_url": self.base_url, "model": self.model, "generation": self.generation.to_dict()}

    def chat(self, messages: list[dict[str, str]], seed: int | None = None, temperature: float | None = None,
             max_tokens: int | None = None) -> str:
        """One chat completion's text."""
        g = self.generation
        body = {"model": self.model, "messages": messages, "temperature": g.temperature if temperature is None else temperature,
                "top_p": g.top_p, "max_tokens": max_tokens or g.max_new_tokens, "n": 1}
        if seed is not None:
            body["seed"] = seed
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = f"{self.base_url}/chat/completions"
        try:
            data = post_json(url, body, headers, timeouts=self.timeouts, retries=self.retries, backoff=self.backoff)
        except EndpointError as exc:
            raise EndpointError(f"{exc} (model {self.model!r})") from None
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise EndpointError(
                f"endpoint {url} (model {self.model!r}) answered without choices[0].message.content "
                f"({type(exc).__name__}: {exc}); got {json.dumps(data)[:200]}"
            ) from None

    def _complete(self, prompts: list[str], seed: int) -> list[str]:
        system = [{"role": "system", "content": self.generation.system}] if self.generation.system else []
        return [self.chat(system + [{"role": "user", "content": p}], seed=seed * 131 + i) for i, p in enumerate(prompts)]


def parse_source(
    spec: str, generation: SamplingConfig | None = None, cache_dir: str | Path | None = None, timeouts: Timeouts | None = None,
) -> Source:
    """A source from its command-line form.

    ``smollm2`` | ``smollm2+lora:DIR`` | ``hf:DIR`` | ``hf:DIR+lora:DIR`` |
    ``jsonl:FILE`` (or a path ending in ``.jsonl``) | ``http(s)://HOST/v1#MODEL``
    (``timeouts``: its connect/read timeouts and deadline).
    """
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        if not model:
            raise InputError(f"endpoint source {spec!r} must name the model after '#', e.g. http://localhost:8000/v1#my-model")
        return EndpointSource(url, model, generation, timeouts=timeouts, cache_dir=cache_dir)
    if spec.startswith("jsonl:") or spec.endswith(".jsonl"):
        return JsonlSource(spec.removeprefix("jsonl:"))
    base, _, adapter = spec.partition("+lora:")
    if base == "smollm2":
        return HFSource("smollm2", adapter or None, generation, cache_dir)
    if base.startswith("hf:"):
        return HFSource(base.removeprefix("hf:"), adapter or None, generation, cache_dir)
    raise InputError(f"source {spec!r} is not one of: smollm2, smollm2+lora:DIR, hf:DIR, jsonl:FILE, http(s)://URL#MODEL")


def check_pairing(a: Sequence[Sample], b: Sequence[Sample]) -> None:
    """Both sides must answer the same prompts equally often (when prompt ids are known)."""
    from collections import Counter

    ca, cb = Counter(s.prompt_id for s in a), Counter(s.prompt_id for s in b)
    if "" in ca or "" in cb:
        return
    if ca != cb:
        only_a = sorted(set(ca) - set(cb))[:5]
        only_b = sorted(set(cb) - set(ca))[:5]
        uneven = sorted(k for k in set(ca) & set(cb) if ca[k] != cb[k])[:5]
        raise InputError(f"the two sides answer unequal prompt sets: only in A {only_a}, only in B {only_b}, "
                         f"different counts for {uneven}")
