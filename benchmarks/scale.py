"""Scale benchmarks; each ``--part`` merges its own keys into
benchmarks/results/scale.json (other parts' keys are left as they are) and
writes its own section of BENCHMARKS.md.

``--part processes``: SmolLM2-135M LoRA featurize in the lm_planted
configuration (LoRA rank 8 on q_proj/v_proj of layers 26-29, Kronecker
projection 1024 per layer, batch 16, shards of 128, float32; the planted
training set) run three ways in fresh processes: one process with one torch
thread, two processes (torch.distributed, gloo) with one thread each, and one
process with two threads. Throughput is tokens (non-padding) featurized per
second of the featurize call (model loading excluded), and the two-process
store is compared with the one-process store file by file. Keys:
``two_process_speedup`` (two processes over one, one thread each),
``two_process_store_identical``, and ``processes`` (every figure).

The adapter checkpoint is the lm_planted LoRA shape with seeded random
weights (throughput does not depend on the values; no training run needed).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, merge_results, write_section  # noqa: E402

RESULTS = "scale"
LORA_LAYERS = tuple(range(26, 30))  # as benchmarks/lm_planted.py
PROJ_DIM, BATCH, SHARD, MAX_LENGTH = 1024, 16, 128, 64  # LMPipelineConfig's defaults, which lm_planted uses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model_and_task(spec: dict[str, Any]) -> tuple[Any, Any]:
    from gradtrace.lm.load import load_model
    from gradtrace.lm.lora import LoraTrainConfig, add_lora
    from gradtrace.lm.tasks import CausalLMTask

    base, tok = load_model(spec["model"])
    layers = LORA_LAYERS if spec["model"] == "smollm2" else None
    targets = ("q_proj", "v_proj") if spec["model"] == "smollm2" else ("c_attn",)
    model = add_lora(base, LoraTrainConfig(layers=layers, target_modules=targets))
    return model, CausalLMTask(tok, max_length=MAX_LENGTH if spec["model"] == "smollm2" else 256)  # bytes are many tokens


def _data(n: int) -> tuple[list[dict[str, Any]], list[str]]:
    from gradtrace.demos.planted_lm import PlantedConfig, make_planted_data

    data = make_planted_data(PlantedConfig())
    return data.train[:n], data.ids[:n]


def _worker(rank: int, world: int, threads: int, spec: dict[str, Any], out: str, result: str) -> None:
    """One process of a featurize run (spawned): load, meet, featurize, time."""
    import torch

    torch.set_num_threads(threads)
    from gradtrace import FeaturizeConfig, ProjectionConfig, featurize
    from gradtrace.checkpoints import CheckpointRef
    from gradtrace.execution import LocalExecutor
    from gradtrace.models.hf import lora_selection
    from gradtrace.models.hf_checkpoints import load_hf_checkpoint

    executor: Any = LocalExecutor()
    if world > 1:
        import torch.distributed as dist

        from gradtrace.execution_dist import DistributedExecutor

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        executor = DistributedExecutor()
    model, task = _model_and_task(spec)
    train, ids = _data(spec["examples"])
    config = FeaturizeConfig(params=lora_selection(model), projection=ProjectionConfig("kronecker", PROJ_DIM, seed=0),
                             batch_size=BATCH, shard_size=spec["shard_size"], dtype="float32")
    refs = [CheckpointRef(spec["adapter"], 3e-3, 0)]
    if world > 1:
        dist.barrier()  # everyone loaded: time the featurize call alone
    start = time.perf_counter()
    featurize(model, task, refs, train, out, config, ids=ids, checkpoint_loader=load_hf_checkpoint, progress=False,
              executor=executor)
    seconds = time.perf_counter() - start
    if rank == 0:
        Path(result).write_text(json.dumps({"seconds": seconds}))
    if world > 1:
        dist.destroy_process_group()


def _run(processes: int, threads: int, spec: dict[str, Any], out: Path) -> float:
    import torch.multiprocessing as mp

    result = out.with_suffix(".json")
    spec = dict(spec, port=_free_port())
    mp.start_processes(_worker, args=(processes, threads, spec, str(out), str(result)), nprocs=processes, start_method="spawn")
    return float(json.loads(result.read_text())["seconds"])


def _make_adapter(spec: dict[str, Any], folder: Path) -> None:
    """The LoRA adapter of the benchmark, seeded random weights, saved as a PEFT folder."""
    import torch

    model, _ = _model_and_task(spec)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.save_pretrained(folder)


def processes(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    import torch

    from gradtrace.lm.tasks import CausalLMTask  # noqa: F401  (fail early without the LM extras)

    spec = {"model": args.model, "examples": args.examples, "shard_size": args.shard_size}
    work = Path(tempfile.mkdtemp(prefix="gradtrace_scale_"))
    _make_adapter(spec, work / "adapter")
    spec["adapter"] = str(work / "adapter")
    model, task = _model_and_task(spec)
    train, _ = _data(args.examples)
    tokens = sum(int(task.collate(train[i : i + 64])["attention_mask"].sum()) for i in range(0, len(train), 64))
    del model
    runs: dict[str, list[float]] = {"1p1t": [], "2p1t": [], "1p2t": []}
    identical = []
    ratios = []
    for rep in range(args.repeats):  # interleaved, so that load from elsewhere hits every setting alike
        for name, (p, t) in (("1p1t", (1, 1)), ("2p1t", (2, 1)), ("1p2t", (1, 2))):
            seconds = _run(p, t, spec, work / f"{name}_{rep}")
            runs[name].append(tokens / seconds)
            print(f"rep {rep} {name}: {seconds:.1f} s, {tokens / seconds:.1f} tokens/s", flush=True)
        ratios.append(runs["2p1t"][-1] / runs["1p1t"][-1])
        identical.append(_store_files(work / f"2p1t_{rep}") == _store_files(work / f"1p1t_{rep}"))
    median = {name: statistics.median(v) for name, v in runs.items()}
    n_shards = -(-args.examples // args.shard_size)
    figures = {
        "model": args.model, "examples": args.examples, "tokens": tokens, "shard_size": args.shard_size, "shards": n_shards,
        "repeats": args.repeats, "validation_run": args.examples < 1000,
        "tokens_per_s_1_process_1_thread": median["1p1t"], "tokens_per_s_2_processes_1_thread": median["2p1t"],
        "tokens_per_s_1_process_2_threads": median["1p2t"], "two_process_speedup_per_repeat": ratios,
        "two_threads_speedup": statistics.median(r2 / r1 for r1, r2 in zip(runs["1p1t"], runs["1p2t"])),
        "best_possible_two_process_speedup": n_shards / -(-n_shards // 2),  # the larger rank's share of the shards
        "torch": torch.__version__,
    }
    keys = {"two_process_speedup": statistics.median(ratios), "two_process_store_identical": all(identical), "processes": figures}
    validation = (
        f"**Validation run** ({args.examples} examples, {args.repeats} repeat(s)): it shows the benchmark runs and the "
        "stores agree, not the throughput on a quiet machine; the full measurement is the command without "
        "`--examples`/`--shard-size`.\n\n" if figures["validation_run"] else ""
    )
    summary = (
        f"{validation}{'SmolLM2-135M' if args.model == 'smollm2' else args.model} LoRA featurize, lm_planted configuration "
        f"({tokens} tokens in {args.examples} examples, "
        f"{n_shards} shards of {args.shard_size}), medians of {args.repeats} interleaved repeat(s):\n\n"
        "| setting | tokens/s |\n|---|---|\n"
        f"| 1 process, 1 thread | {median['1p1t']:.1f} |\n| 2 processes (gloo), 1 thread each | {median['2p1t']:.1f} |\n"
        f"| 1 process, 2 threads | {median['1p2t']:.1f} |\n\n"
        f"two_process_speedup = {keys['two_process_speedup']:.2f} (ratio within each repeat; the split of {n_shards} shards "
        f"allows at most {figures['best_possible_two_process_speedup']:.2f}); two threads in one process: "
        f"{figures['two_threads_speedup']:.2f}x; two-process store identical to the one-process store: "
        f"{keys['two_process_store_identical']}."
    )
    return keys, summary


def _store_files(root: Path) -> dict[str, bytes]:
    from gradtrace.store.lock import LOCK_FILES

    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in LOCK_FILES}


PARTS = {"processes": processes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", required=True, choices=sorted(PARTS))
    parser.add_argument("--model", default="smollm2", help="processes: smollm2 (the benchmark) or tiny (a quick check)")
    parser.add_argument("--examples", type=int, default=1050, help="processes: training examples (the planted set has 1,050)")
    parser.add_argument("--shard-size", type=int, default=SHARD, help="processes: examples per shard (lm_planted: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="processes: interleaved repeats (medians are reported)")
    args = parser.parse_args()
    keys, summary = PARTS[args.part](args)
    command = "nice -n 10 .venv/bin/python " + " ".join(["benchmarks/scale.py", *sys.argv[1:]])
    merge_results(RESULTS, keys)
    write_section(f"scale_{args.part}", command, summary, f"benchmarks/results/{RESULTS}.json")
    print(json.dumps(keys))


if __name__ == "__main__":
    main()
