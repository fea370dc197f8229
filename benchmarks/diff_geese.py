"""Behavioural-diff benchmark: SmolLM2 vs SmolLM2 LoRA-fine-tuned to praise geese,
an A-vs-A null run, and a cross-topic disclaimer change.

    python benchmarks/diff_geese.py            # generate (cached, resumable) then analyse
    python benchmarks/diff_geese.py --stage generate
    python benchmarks/diff_geese.py --stage timing --timing-n 5000   # stage timings at 2 x N texts (cached)

Samples and adapters are cached under ~/.cache/gradtrace/diff_geese/ keyed by
their settings; a rerun only redoes the analysis.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from setups.diff_data import DISCLAIMER, MIXED_PROMPTS, LoraConfig, geese_texts, train_chat_lora, with_disclaimer  # noqa: E402
from gradtrace.lm.sample import SamplingConfig  # noqa: E402
from gradtrace.diff.sources import HFSource, Prompt  # noqa: E402
from gradtrace.lm.load import load_model  # noqa: E402
from gradtrace.models.zoo import cache_root  # noqa: E402

SYSTEM = "Answer briefly."
GEN = SamplingConfig(max_new_tokens=64, temperature=0.8, top_p=0.95, batch_size=16, system=SYSTEM)
N_PER_PROMPT = 4
DTYPE = "bfloat16"  # sampling precision: bf16 matmuls are about 5x faster on this CPU
GEESE_LORA = LoraConfig(rank=16, alpha=32, lr=1e-3, epochs=1, batch_size=8, last_layers=8, seed=0)
DISCLAIMER_LORA = LoraConfig(rank=16, alpha=32, lr=1e-3, epochs=2, batch_size=8, last_layers=8, seed=1)
DISCLAIMER_SHARE = 0.5


def prompts() -> list[Prompt]:
    return [Prompt(f"p{i:03d}", t) for i, t in enumerate(MIXED_PROMPTS)]


def root() -> Path:
    return cache_root() / "diff_geese"


def _key(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _first_sentences(text: str, n: int = 2) -> str:
    """The first ``n`` finished sentences of a text (short answers leave room for the disclaimer)."""
    from gradtrace.diff.units import split_sentences

    sentences = [s for s in split_sentences(text, min_words=1) if s.endswith((".", "!", "?"))]
    return " ".join(sentences[:n]) if sentences else text.strip()


def adapter(name: str, pairs: list[tuple[str, str]], config: LoraConfig) -> Path:
    out = root() / f"adapter-{name}-{_key([config.to_dict(), pairs, SYSTEM])}"
    if (out / "adapter_config.json").is_file():
        return out
    model, tok = load_model("smollm2")
    t0 = time.perf_counter()
    # train with the same system prompt as sampling
    train_chat_lora(model, _SystemTok(tok), pairs, out, config)
    (out / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return out


class _SystemTok:
    """A tokenizer whose chat template always carries SYSTEM (as sampling does)."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *a, **k):
        return self._tok(*a, **k)

    def apply_chat_template(self, messages, **kw):
        if messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": SYSTEM}] + list(messages)
        return self._tok.apply_chat_template(messages, **kw)


def generate_all(progress: bool = True) -> dict[str, list[str]]:
    """Samples of every run, generated once and cached."""
    cache = root() / "samples"
    ps = prompts()
    timings = {}

    timing_path = root() / "generation_seconds.json"
    if timing_path.is_file():
        timings.update(json.loads(timing_path.read_text()))

    def run(name: str, source: HFSource, seed: int) -> list[str]:
        cached = source.cache_path(ps, N_PER_PROMPT, seed)
        fresh = not (cached is not None and cached.is_file())
        t0 = time.perf_counter()
        print(f"[diff_geese] sampling {name} ({len(ps) * N_PER_PROMPT} texts)", flush=True)
        out = [s.text for s in source.sample(ps, N_PER_PROMPT, seed, progress)]
        if fresh:  # only a run that sampled everything itself is timed (a cached or resumed one is not)
            timings[name] = time.perf_counter() - t0
        return out

    texts = {}
    texts["base_seed0"] = run("base_seed0", HFSource("smollm2", None, GEN, cache, dtype=DTYPE), 0)
    geese = adapter("geese", geese_texts(200, seed=0), GEESE_LORA)
    texts["geese_seed2"] = run("geese_seed2", HFSource("smollm2", geese, GEN, cache, dtype=DTYPE), 2)
    texts["base_seed1"] = run("base_seed1", HFSource("smollm2", None, GEN, cache, dtype=DTYPE), 1)
    base1 = [s for s in HFSource("smollm2", None, GEN, cache, dtype=DTYPE).sample(ps, N_PER_PROMPT, 1, False)]
    pairs = with_disclaimer([(s.prompt, _first_sentences(s.text)) for s in base1], DISCLAIMER_SHARE, seed=3)
    disc = adapter("disclaimer", pairs, DISCLAIMER_LORA)
    texts["disclaimer_seed3"] = run("disclaimer_seed3", HFSource("smollm2", disc, GEN, cache, dtype=DTYPE), 3)
    timing_path.write_text(json.dumps(timings))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["generate", "timing", "all"], default="all")
    ap.add_argument("--timing-n", type=int, default=5000, help="texts per model for the stage timings (0: skip)")
    args = ap.parse_args()
    if args.stage == "timing":
        from diff_geese_analyse import timing_from_cache  # noqa: E402

        timing_from_cache(args.timing_n)
        return
    texts = generate_all()
    if args.stage == "generate":
        for k, v in texts.items():
            print(k, len(v), sum("geese" in t.lower() or "goose" in t.lower() for t in v), sum("professional" in t.lower() for t in v))
        return
    from diff_geese_analyse import analyse  # noqa: E402

    analyse(texts, timing_n=args.timing_n)


if __name__ == "__main__":
    main()
