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

``--part bergson``: throughput against Bergson 2.5.1's ``build`` on one CPU,
the same work in the same run: SmolLM2-135M-Instruct in float32 (the
bundled model's Hugging Face folder is both the model and the checkpoint),
gradients of all 210 ``*_proj`` linear layers, Kronecker projection 16 x 16
per layer (gradtrace ``--dim 256``, Bergson ``--projection_dim 16``), the
first ``--examples`` planted training examples rendered as chat (the summed
NLL of the assistant's reply), 2 torch threads each. Both tools see the same
token ids and labels (gradtrace tokenizes them; Bergson gets them
pre-tokenized, its ``input_ids``/``labels`` columns). Each run is a fresh
process; the settings alternate within each repeat. Throughput is
non-padding tokens per second of gradtrace's ``featurize`` call (reading the
checkpoint, computing, writing the store) and of Bergson's
``collect_gradients`` (computing and writing its index; its model and data
loading excluded). Settings: ``gradtrace`` (length-sorted batches,
this version's default for a new store, and ``exact_norms=False``, not the
default, since Bergson keeps no exact norms either), ``gradtrace_file_order`` (batches in file
order with exact norms: what gradtrace did before), ``bergson``; and two
floors that are not featurizers, over the same length-sorted batches:
``floor_backward`` (a forward pass and a backward pass to every layer's
activations, no weight gradients: no featurizer of these layers does less)
and ``floor_train_step`` (a plain training step's forward and backward,
weight gradients of the same layers, no optimizer). Keys:
``speedup_vs_bergson_cpu`` (median over repeats of gradtrace over Bergson
within the repeat) and ``bergson_cpu`` (every figure, and the checks:
Bergson's and gradtrace's rows of two layers against the exact per-example
gradient projected with each tool's own matrices, the per-example losses,
and gradtrace's length-sorted store against its file-order store).
Bergson is installed in its own virtualenv (``benchmarks/.peers/bergson``,
as ``benchmarks/peers.py`` does); if it cannot be installed the error is
recorded instead of the ratio.
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
        f"**Reduced size** ({args.examples} of the planted set's 1,050 examples, shards of {args.shard_size}, {args.repeats} "
        "repeat(s)); the full size is the command without `--examples`/`--shard-size`. Read the load average above: "
        "the ratio means the two cores' speed-up only on a quiet machine.\n\n" if figures["validation_run"] else ""
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


# -- against Bergson -------------------------------------------------------------------------------------------
PROJ_PARAMS = "model.layers.*_proj.weight"  # the 210 *_proj linear layers (Bergson: every nn.Linear of the base model)
BERGSON_SIDE = 16  # Bergson's projection_dim: 16 x 16 per layer; gradtrace's Kronecker dim 256 = 16 x 16
CHECK_MODULES = ("layers.0.self_attn.q_proj", "layers.29.mlp.down_proj")  # Bergson's names (inside model.model)
CHECK_ROWS = (0, 1, 2, 3)
BERGSON_SETTINGS = ("gradtrace", "gradtrace_file_order", "bergson", "floor_backward", "floor_train_step")
#: Not featurizers: the least work any featurizer of these layers does (``floor_backward``: a forward and a backward
#: pass to the activations, no weight gradients) and a plain training step's forward and backward (weight
#: gradients of the same layers, no optimizer), over the same length-sorted batches.
FLOOR_SETTINGS = ("floor_backward", "floor_train_step")


def _chat_task(folder: str) -> tuple[Any, Any]:
    from gradtrace.lm.load import load_model
    from gradtrace.lm.tasks import CausalLMTask

    model, tok = load_model(folder)
    return model, CausalLMTask(tok, max_length=256, as_chat=True)


def _bergson_gradtrace_worker(_: int, spec: dict[str, Any]) -> None:
    """One timed gradtrace featurize (spawned: a fresh process)."""
    import torch

    torch.set_num_threads(spec["threads"])
    from gradtrace import FeaturizeConfig, ProjectionConfig, featurize
    from gradtrace.checkpoints import CheckpointRef
    from gradtrace.models.hf_checkpoints import load_hf_checkpoint

    started = time.perf_counter()
    model, task = _chat_task(spec["model"])
    train, ids = _data(spec["examples"])
    config = FeaturizeConfig(params=PROJ_PARAMS, projection=ProjectionConfig("kronecker", BERGSON_SIDE**2, seed=0),
                             batch_size=spec["batch_size"], dtype="float32", **spec["config"])
    start = time.perf_counter()
    featurize(model, task, [CheckpointRef(spec["model"], 1.0, 0)], train, spec["out"], config, ids=ids,
              checkpoint_loader=load_hf_checkpoint, progress=False)
    seconds = time.perf_counter() - start
    Path(spec["result"]).write_text(json.dumps({"seconds": seconds, "process_seconds": time.perf_counter() - started,
                                                "threads": torch.get_num_threads()}))


def _floor_worker(_: int, spec: dict[str, Any]) -> None:
    """One timed pass of a floor setting (spawned: a fresh process): the
    model and data as gradtrace's run has them, batches of ``batch_size``
    examples sorted by length; ``floor_backward`` freezes every weight and
    differentiates the summed loss with respect to the embeddings' output
    (so the backward pass goes through every layer but computes no weight
    gradient); ``floor_train_step`` differentiates it with respect to the
    weights of the same ``*_proj`` layers as the featurizers."""
    import fnmatch

    import torch

    torch.set_num_threads(spec["threads"])
    model, task = _chat_task(spec["model"])
    train, _ = _data(spec["examples"])
    weights = spec["setting"] == "floor_train_step"
    for name, p in model.named_parameters():
        p.requires_grad_(weights and fnmatch.fnmatch(name, PROJ_PARAMS))
    if not weights:
        model.get_input_embeddings().register_forward_hook(lambda m, i, out: out.detach().requires_grad_(True))
    from gradtrace.grads.compute import batch_plan

    # the batches featurize makes with batch_order="length" (longest first, ties in data order)
    plan = batch_plan(0, len(train), spec["batch_size"], [task.example_length(e) for e in train])
    start = time.perf_counter()
    for positions in plan:
        batch = task.collate([train[i] for i in positions])
        task.per_example_loss(model, batch).sum().backward()
        model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    Path(spec["result"]).write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))


def _bergson_run(name: str, spec: dict[str, Any], python: Any, work: Path, rep: int) -> dict[str, Any]:
    import subprocess

    import torch.multiprocessing as mp

    result = work / f"{name}_{rep}.json"
    load_before = os.getloadavg()[0]
    if name == "bergson":
        run_spec = dict(spec["bergson"], run=str(work / f"{name}_{rep}"), result=str(result))
        spec_path = work / f"{name}_{rep}.spec.json"
        spec_path.write_text(json.dumps(run_spec))
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   HF_DATASETS_CACHE=str(work / "hf_datasets_cache"), TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([str(python), str(Path(__file__).parent / "peer_runners" / "run_bergson.py"), "build", str(spec_path)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"bergson build exited {proc.returncode}: {proc.stderr[-3000:]}")
        out = json.loads(result.read_text())
        out["seconds"] = out["collect_seconds"]
    elif name in FLOOR_SETTINGS:
        run_spec = dict(spec["gradtrace"], setting=name, result=str(result))
        mp.start_processes(_floor_worker, args=(run_spec,), nprocs=1, start_method="spawn")
        out = json.loads(result.read_text())
    else:
        # gradtrace: the defaults for a new store (length-sorted batches) without exact norms, which Bergson has not either
        config = {"exact_norms": False} if name == "gradtrace" else {"batch_order": "file", "exact_norms": True}
        run_spec = dict(spec["gradtrace"], out=str(work / f"{name}_{rep}"), result=str(result), config=config)
        mp.start_processes(_bergson_gradtrace_worker, args=(run_spec,), nprocs=1, start_method="spawn")
        out = json.loads(result.read_text())
    out["load_average_before"] = load_before
    out["load_average_after"] = os.getloadavg()[0]
    return out


def _exact_check(spec: dict[str, Any], work: Path, python: Any, rep: int) -> dict[str, Any]:
    """Both tools' rows of :data:`CHECK_MODULES` for :data:`CHECK_ROWS`
    against the exact per-example gradient (gradtrace's ``projection="none"``)
    projected with each tool's own matrices; the per-example losses; and
    gradtrace's length-sorted store against its file-order store."""
    import subprocess

    import numpy as np
    import torch

    from gradtrace import GradientStore
    from gradtrace.grads.per_example import GradientFeaturizer
    from gradtrace.grads.projection import ProjectionConfig, kronecker_factors

    model, task = _chat_task(spec["model"])
    train, _ = _data(spec["examples"])
    shapes = {m: list(model.get_submodule(f"model.{m}").weight.shape) for m in CHECK_MODULES}
    dump = work / "bergson_dump.npz"
    dump_spec = dict(spec["bergson"], run=str(work / f"bergson_{rep}"), modules=list(CHECK_MODULES), rows=list(CHECK_ROWS),
                     shapes=shapes, out=str(dump))
    (work / "dump.spec.json").write_text(json.dumps(dump_spec))
    proc = subprocess.run([str(python), str(Path(__file__).parent / "peer_runners" / "run_bergson.py"), "dump", str(work / "dump.spec.json")],
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"bergson dump exited {proc.returncode}: {proc.stderr[-3000:]}")
    theirs = dict(np.load(dump))
    names = [f"model.{m}.weight" for m in CHECK_MODULES]
    exact = GradientFeaturizer(names, ProjectionConfig("none"))
    batch = task.collate([train[i] for i in CHECK_ROWS])
    with torch.no_grad():
        losses = task.per_example_loss(model, task.collate(train[: spec["examples"]][:32])).double().numpy()
    fb = exact(model, task.per_example_loss, batch)
    ours = GradientStore.open(work / f"gradtrace_{rep}")
    sites = [n for n in ours.param_names]
    rows = ours.features(0, 0, ours.n_examples)[list(CHECK_ROWS)].astype(np.float64) * ours.norms(0, 0, ours.n_examples)[list(CHECK_ROWS), :1]
    at, errors = 0, {}
    for m, name in zip(CHECK_MODULES, names):
        d_out, d_in = shapes[m]
        g = fb.features[:, at : at + d_out * d_in].double().reshape(len(CHECK_ROWS), d_out, d_in)
        at += d_out * d_in
        left, right = torch.from_numpy(theirs[f"{m}/left"]).double(), torch.from_numpy(theirs[f"{m}/right"]).double()
        want_b = (left @ g @ right.T).reshape(len(CHECK_ROWS), -1).numpy()
        got_b = theirs[f"{m}/rows"].astype(np.float64)
        f = kronecker_factors(f"model.{m}", d_in, d_out, ProjectionConfig("kronecker", BERGSON_SIDE**2, seed=0), torch.float64,
                              torch.device("cpu"))
        want_g = (f.p_out.T @ g @ f.p_in).reshape(len(CHECK_ROWS), -1).numpy()  # type: ignore[union-attr]
        k = sites.index(name) * BERGSON_SIDE**2
        got_g = rows[:, k : k + BERGSON_SIDE**2]
        errors[m] = {
            "bergson_max_rel_error": float(np.abs(got_b - want_b).max() / np.abs(want_b).max()),
            "gradtrace_max_rel_error": float(np.abs(got_g - want_g).max() / np.abs(want_g).max()),
        }
    sorted_store = GradientStore.open(work / f"gradtrace_{rep}")
    file_store = GradientStore.open(work / f"gradtrace_file_order_{rep}")
    a = sorted_store.features(0, 0, sorted_store.n_examples).astype(np.float64)
    b = file_store.features(0, 0, file_store.n_examples).astype(np.float64)
    na, nb = sorted_store.norms(0, 0, sorted_store.n_examples), file_store.norms(0, 0, file_store.n_examples)
    n_loss = min(32, spec["examples"])
    return {
        "bergson_modules": len(theirs["modules"]), "gradtrace_layers": len(ours.param_names),
        "same_layers": sorted(f"model.{m}.weight" for m in theirs["modules"]) == sorted(ours.param_names),
        "layers": errors,
        "loss_max_abs_diff_first_32": float(np.abs(theirs["loss"][:n_loss] - losses[:n_loss]).max()),
        "loss_max_first_32": float(np.abs(losses[:n_loss]).max()),
        "length_vs_file_order_rows_max_abs_diff": float(np.abs(a - b).max()),
        "length_vs_file_order_rows_identical": bool(np.array_equal(sorted_store.features(0, 0, sorted_store.n_examples),
                                                                   file_store.features(0, 0, file_store.n_examples))),
        "length_vs_file_order_norm_max_rel_diff": float(np.abs(na[:, 0] - nb[:, 0]).max() / np.abs(nb[:, 0]).max()),
    }


def bergson(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    import statistics

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import install_peer

    from gradtrace.models.zoo import smollm2_dir

    folder = str(smollm2_dir())
    try:
        python = install_peer("bergson")
    except Exception as exc:  # an install failure is a result, not a crash
        keys = {"bergson_cpu": {"error": f"Bergson could not be installed: {type(exc).__name__}: {exc}"}}
        return keys, f"Bergson 2.5.1 could not be installed in its own virtualenv: {exc}"
    work = Path(tempfile.mkdtemp(prefix="gradtrace_scale_bergson_"))
    _, task = _chat_task(folder)
    train, _ = _data(args.examples)
    encoded = [task.encode(e, i) for i, e in enumerate(train)]
    lengths = [len(p) + len(c) for p, c in encoded]
    tokens = sum(lengths)
    with (work / "train.jsonl").open("w") as f:
        for p, c in encoded:
            f.write(json.dumps({"input_ids": p + c, "labels": [-100] * len(p) + c}) + "\n")
    spec = {
        "threads": args.threads,
        "gradtrace": {"model": folder, "examples": args.examples, "batch_size": args.batch_size, "threads": args.threads},
        "bergson": {"model": folder, "data": str(work / "train.jsonl"), "projection_dim": BERGSON_SIDE,
                    "token_batch_size": args.token_batch_size, "threads": args.threads},
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in BERGSON_SETTINGS}
    loads = [os.getloadavg()]
    for rep in range(args.repeats):
        order = BERGSON_SETTINGS if rep % 2 == 0 else BERGSON_SETTINGS[::-1]  # alternate who goes first
        for name in order:
            out = _bergson_run(name, spec, python, work, rep)
            out["tokens_per_s"] = tokens / out["seconds"]
            runs[name].append(out)
            print(f"rep {rep} {name}: {out['seconds']:.1f} s, {out['tokens_per_s']:.1f} tokens/s "
                  f"(load {out['load_average_before']:.1f} -> {out['load_average_after']:.1f})", flush=True)
        loads.append(os.getloadavg())
    check = _exact_check(spec["gradtrace"] | {"bergson": spec["bergson"]}, work, python, args.repeats - 1)
    ratio = [g["tokens_per_s"] / b["tokens_per_s"] for g, b in zip(runs["gradtrace"], runs["bergson"])]
    before = [g["tokens_per_s"] / b["tokens_per_s"] for g, b in zip(runs["gradtrace_file_order"], runs["bergson"])]
    gain = [g["tokens_per_s"] / f["tokens_per_s"] for g, f in zip(runs["gradtrace"], runs["gradtrace_file_order"])]
    median = {name: statistics.median(r["tokens_per_s"] for r in v) for name, v in runs.items()}
    # the most any featurizer that runs a forward and a backward pass could gain over Bergson here, and how far each tool is from it
    ceiling = [f["tokens_per_s"] / b["tokens_per_s"] for f, b in zip(runs["floor_backward"], runs["bergson"])]
    of_floor = {name: [r["tokens_per_s"] / f["tokens_per_s"] for r, f in zip(runs[name], runs["floor_backward"])]
                for name in ("gradtrace", "bergson", "floor_train_step")}
    sorted_lengths = sorted(lengths, reverse=True)

    def padded(ls: list[int]) -> int:
        return sum(max(ls[i : i + args.batch_size]) * len(ls[i : i + args.batch_size]) for i in range(0, len(ls), args.batch_size))

    figures = {
        "model": "SmolLM2-135M-Instruct (float32)", "layers": 210, "projection": "kronecker 16 x 16 per layer",
        "examples": args.examples, "tokens": tokens, "threads": args.threads, "repeats": args.repeats,
        "gradtrace_batch_size": args.batch_size, "bergson_token_batch_size": args.token_batch_size,
        "padded_tokens": {"gradtrace_file_order": padded(lengths), "gradtrace": padded(sorted_lengths),
                          "bergson": runs["bergson"][0].get("padded_tokens")},
        "tokens_per_s": median, "speedup_per_repeat": ratio, "file_order_speedup_per_repeat": before,
        "gain_over_file_order_per_repeat": gain, "floor_backward_over_bergson_per_repeat": ceiling,
        "share_of_floor_backward_speed_per_repeat": of_floor, "runs": runs, "check": check,
        "load_average_1_5_15": [list(x) for x in loads], "torch": torch.__version__, "bergson": runs["bergson"][0].get("bergson"),
    }
    keys = {"speedup_vs_bergson_cpu": statistics.median(ratio), "bergson_cpu": figures}
    return keys, bergson_summary(keys)


def bergson_summary(keys: dict[str, Any]) -> str:
    """The BENCHMARKS.md text of ``--part bergson``, from its result keys."""
    f = keys["bergson_cpu"]
    check, median, runs = f["check"], f["tokens_per_s"], f["runs"]
    n_loss = min(32, f["examples"])
    layer_lines = "".join(
        f"| `{m}` | {e['gradtrace_max_rel_error']:.1e} | {e['bergson_max_rel_error']:.1e} |\n" for m, e in check["layers"].items()
    )
    loads = ", ".join(f"{r['load_average_before']:.1f}" for name in BERGSON_SETTINGS for r in runs[name])
    fewer = (
        f"**{f['examples']} examples, not the issue's 200** (a shorter run; both tools do the same work, so the ratio "
        "compares like with like; read the load averages below). " if f["examples"] < 200 else ""
    )
    default = " (its default)" if f["bergson_token_batch_size"] == 2048 else " (its default is 2,048)"
    return (
        f"{fewer}SmolLM2-135M-Instruct, float32, all 210 `*_proj` layers, Kronecker 16 x 16 per layer, {f['examples']} planted "
        f"training examples as chat ({f['tokens']} tokens, the same token ids and labels for both tools), {f['threads']} torch "
        f"threads per tool, each run a fresh process, {f['repeats']} repeat(s) alternating the order. gradtrace batches "
        f"{f['gradtrace_batch_size']} examples, Bergson {f['bergson_token_batch_size']} tokens{default}. Tokens/s: non-padding "
        "tokens over the seconds of gradtrace's featurize call and of Bergson's collect_gradients (Bergson's model and data "
        "loading excluded; gradtrace's checkpoint fingerprinting, store writing and giving the model back included).\n\n"
        "| setting | tokens/s (median) |\n|---|---|\n"
        f"| gradtrace (length-sorted batches, a new store's default; `--no-exact-norms`, since Bergson computes no norms) | {median['gradtrace']:.1f} |\n"
        f"| gradtrace with file-order batches and exact norms (the old behaviour of those two settings; this version's "
        f"other changes apply) | {median['gradtrace_file_order']:.1f} |\n"
        f"| Bergson {f['bergson']} `build` | {median['bergson']:.1f} |\n"
        f"| floor: forward and backward to the activations, no weight gradients (no featurizer does less) | {median['floor_backward']:.1f} |\n"
        f"| a plain training step's forward and backward (weight gradients of the same layers; no optimizer) | {median['floor_train_step']:.1f} |\n\n"
        f"**The floor over Bergson, the largest speedup over Bergson any featurizer could reach here: "
        f"{', '.join(f'{r:.2f}' for r in f['floor_backward_over_bergson_per_repeat'])}** per repeat. Speed as a share of "
        "the floor's, per repeat: " + "; ".join(f"{name} {', '.join(f'{r:.2f}' for r in v)}"
                                                 for name, v in f["share_of_floor_backward_speed_per_repeat"].items()) + ".\n\n"
        f"**speedup_vs_bergson_cpu = {keys['speedup_vs_bergson_cpu']:.2f}** (per repeat: "
        f"{', '.join(f'{r:.2f}' for r in f['speedup_per_repeat'])}); file order with exact norms against Bergson: "
        f"{', '.join(f'{r:.2f}' for r in f['file_order_speedup_per_repeat'])}; the new defaults over file order: "
        f"{', '.join(f'{r:.2f}' for r in f['gain_over_file_order_per_repeat'])} . Padded tokens per pass: file order "
        f"{f['padded_tokens']['gradtrace_file_order']}, length-sorted {f['padded_tokens']['gradtrace']}, Bergson "
        f"{f['padded_tokens']['bergson']}. Load average (1 min) before each run, in the order of the table: {loads}.\n\n"
        "Same computation: rows of two layers for 4 examples against the exact per-example gradient (gradtrace, "
        "no projection) projected with each tool's own matrices (largest error over the largest entry); both tools took "
        f"the same {check['gradtrace_layers']} layers (Bergson: {check['bergson_modules']}, same names: {check['same_layers']}):\n\n"
        "| layer | gradtrace | Bergson |\n|---|---|---|\n" + layer_lines + "\n"
        f"Per-example losses (first {n_loss}): largest difference {check['loss_max_abs_diff_first_32']:.1e} nats "
        f"(largest loss {check['loss_max_first_32']:.1f}). gradtrace's length-sorted store against its file-order store: "
        f"largest difference of a unit-norm row entry {check['length_vs_file_order_rows_max_abs_diff']:.1e} "
        f"(bytewise identical: {check['length_vs_file_order_rows_identical']}), of a row norm "
        f"{check['length_vs_file_order_norm_max_rel_diff']:.1e} relative."
    )


PARTS = {"processes": processes, "bergson": bergson}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", required=True, choices=sorted(PARTS))
    parser.add_argument("--model", default="smollm2", help="processes: smollm2 (the benchmark) or tiny (a quick check)")
    parser.add_argument("--examples", type=int, default=None,
                        help="training examples (default: processes 1,050, the planted set; bergson 200)")
    parser.add_argument("--shard-size", type=int, default=SHARD, help="processes: examples per shard (lm_planted: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians are reported)")
    parser.add_argument("--batch-size", type=int, default=32, help="bergson: gradtrace's examples per batch")
    parser.add_argument("--token-batch-size", type=int, default=2048, help="bergson: Bergson's tokens per batch (its default)")
    parser.add_argument("--threads", type=int, default=2, help="bergson: torch threads of each tool")
    args = parser.parse_args()
    if args.examples is None:
        args.examples = 1050 if args.part == "processes" else 200
    keys, summary = PARTS[args.part](args)
    # a speed ratio: one timing run on the machine at a time (the lock is shared with the other timing benchmarks)
    command = "flock /tmp/gt-timing.lock .venv/bin/python " + " ".join(["benchmarks/scale.py", *sys.argv[1:]])
    merge_results(RESULTS, keys)
    write_section(f"scale_{args.part}", command, summary, f"benchmarks/results/{RESULTS}.json")
    print(json.dumps(keys))


if __name__ == "__main__":
    main()
