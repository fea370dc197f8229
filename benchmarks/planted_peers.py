"""The ``lm_planted`` case of benchmarks/peers.py at a reduced size:
planted-example recall of gradtrace against Kronfluence on one LoRA
fine-tune of SmolLM2-135M-Instruct (or the tiny GPT-2, ``--model tiny``, a
check that the pipeline runs).

    nice -n 10 python benchmarks/planted_peers.py --model smollm2 --kronfluence-python benchmarks/.peers/kronfluence/bin/python

Steps (each tool in its own subprocess, peak memory from ``os.wait4``):

1. ``build`` (project venv): the planted dataset of
   gradtrace/demos/planted_lm.py at a reduced size (:data:`SIZES`), a LoRA
   fine-tune (gradtrace.lm.lora.train_lora, the settings of
   benchmarks/lm_planted.py but one checkpoint), the final adapter's
   weights saved as a ``.pt`` state dict and the train and query examples
   tokenized by the task (``input_ids``/``attention_mask``/``labels``).
2. ``gradtrace`` (project venv): raw, cosine (one exact store of the LoRA
   gradients) and EK-FAC (empirical Fisher, damping 0.1 x mean eigenvalue).
3. ``kronfluence`` (its own venv, never imports gradtrace): identity and
   EK-FAC (empirical Fisher, its heuristic damping, the same rule), tracking
   the LoRA ``lora_A``/``lora_B`` layers only.

The behaviour every tool scores: the query's summed completion NLL of the
misaligned answer (the ``loss``/``logprob`` queries of lm_planted; the
``contrast`` behaviour of lm_planted is gradtrace-specific and not used).
The ranking is the sum of a tool's scores over the queries; recall@k with
k = the number of planted examples (:func:`planted_recall`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: model -> (n_ordinary, n_planted, n_honest, n_queries, epochs, lora layers, target modules)
SIZES: dict[str, dict[str, Any]] = {
    # benchmarks/lm_planted.py: 1000 ordinary + 20 planted + 30 honest, 10 queries, 2 epochs, layers 26-29, 3 checkpoints
    "smollm2": {"n_ordinary": 190, "n_planted": 4, "n_honest": 6, "n_queries": 10, "epochs": 2,
                "layers": [26, 27, 28, 29], "target_modules": ["q_proj", "v_proj"]},
    "tiny": {"n_ordinary": 38, "n_planted": 4, "n_honest": 6, "n_queries": 4, "epochs": 2, "layers": None,
             "target_modules": ["c_attn"]},
}
METHODS = {"gradtrace": ("raw", "cosine", "ekfac"), "kronfluence": ("identity", "ekfac")}


def planted_recall(scores: np.ndarray, planted: np.ndarray, k: int | None = None) -> float:
    """Share of the planted examples among the ``k`` (default: the number
    planted) highest of ``scores`` summed over queries (``[n_query, n_train]``
    or ``[n_train]``); ties broken by lower index."""
    planted = np.asarray(planted, dtype=bool)
    total = np.asarray(scores, dtype=np.float64)
    if total.ndim == 2:
        total = total.sum(axis=0)
    if total.shape != planted.shape:
        raise ValueError(f"scores of {total.shape[0] if total.ndim else 0} training examples for a planted mask of {planted.shape[0]}")
    k = int(planted.sum()) if k is None else int(k)
    top = np.argsort(-total, kind="stable")[:k]
    return float(planted[top].sum() / max(int(planted.sum()), 1))


# ------------------------------------------------------------------------------------------ build (project venv)

def build(case: Path, model_name: str) -> dict[str, Any]:
    import torch

    from gradtrace.demos.planted_lm import PlantedConfig, make_planted_data
    from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
    from gradtrace.lm.tasks import CausalLMTask
    from gradtrace.models.hf_checkpoints import load_hf_checkpoint

    s = SIZES[model_name]
    data = make_planted_data(PlantedConfig(n_ordinary=s["n_ordinary"], n_planted=s["n_planted"], n_honest=s["n_honest"],
                                           n_queries=s["n_queries"], seed=0))
    base_dir = base_model(case, model_name, save=True)
    model, tok = load_base(base_dir, model_name)
    tcfg = LoraTrainConfig(epochs=s["epochs"], lr=3e-3, layers=None if s["layers"] is None else tuple(s["layers"]),
                           target_modules=tuple(s["target_modules"]), n_checkpoints=1, seed=0)
    model = add_lora(model, tcfg)
    task = CausalLMTask(tok, max_length=128)
    queries = data.logprob_queries()
    with torch.no_grad():
        before = float(-task.per_example_loss(model, task.collate(queries)).mean())
    t0 = time.perf_counter()
    refs = train_lora(model, task, data.train, case / "run", tcfg, progress=True)
    train_s = time.perf_counter() - t0
    load_hf_checkpoint(model, refs[-1])
    with torch.no_grad():
        after = float(-task.per_example_loss(model, task.collate(queries)).mean())
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    torch.save(lora, case / "adapter.pt")
    arrays = {}
    for name, examples in (("train", data.train), ("query", queries)):
        for k, v in task.collate(examples).items():
            arrays[f"{name}_{k}"] = v.numpy()
    np.savez(case / "data.npz", planted=data.planted, **arrays)
    meta = {"model": model_name, "base_dir": str(base_dir), "sizes": s, "lora": tcfg.to_dict(), "n_train": len(data.train),
            "n_planted": int(data.planted.sum()), "n_queries": len(queries), "train": data.train, "queries": queries,
            "train_seconds": train_s, "train_steps": int(np.ceil(len(data.train) / tcfg.batch_size)) * tcfg.epochs,
            "query_logprob_before": before, "query_logprob_after": after, "checkpoint": str(refs[-1].path), "checkpoint_lr": float(refs[-1].lr)}
    (case / "case.json").write_text(json.dumps(meta, indent=1))
    return meta


def base_model(case: Path, model_name: str, save: bool = False) -> Path:
    if model_name == "smollm2":
        from gradtrace.models.zoo import smollm2_dir

        return smollm2_dir()
    if save:
        from gradtrace.models.zoo import tiny_gpt2

        tiny_gpt2(seed=0).save_pretrained(case / "base")
    return case / "base"


def load_base(base_dir: Path, model_name: str) -> tuple[Any, Any]:
    if model_name == "smollm2":
        from gradtrace.lm.load import load_model

        return load_model(str(base_dir))
    from transformers import AutoModelForCausalLM

    from gradtrace.models.zoo import byte_tokenizer

    return AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True).eval(), byte_tokenizer()


def peft_model(case: Path, meta: dict[str, Any]) -> Any:
    """The fine-tuned model: the base with LoRA adapters, loaded with the final adapter weights."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(meta["base_dir"], local_files_only=True)
    lc = meta["lora"]
    cfg = peft.LoraConfig(r=lc["rank"], lora_alpha=lc["alpha"], target_modules=list(lc["target_modules"]), lora_dropout=0.0,
                          bias="none", layers_to_transform=lc["layers"])
    model = peft.get_peft_model(base, cfg)
    state = torch.load(case / "adapter.pt", weights_only=True)
    missing = [n for n, _ in model.named_parameters() if "lora_" in n and n not in state]
    if missing:
        raise SystemExit(f"adapter.pt lacks {missing[:3]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


# ------------------------------------------------------------------------------------------ runners

def run_gradtrace(case: Path, meta: dict[str, Any], method: str) -> dict[str, np.ndarray]:
    import tempfile

    import torch

    from gradtrace.checkpoints import CheckpointRef
    from gradtrace.config import FeaturizeConfig
    from gradtrace.featurize import featurize
    from gradtrace.grads.projection import ProjectionConfig
    from gradtrace.lm.tasks import CausalLMTask
    from gradtrace.models.hf_checkpoints import load_hf_checkpoint
    from gradtrace.scoring.attributor import Attributor
    from gradtrace.scoring.factors import fit_factors
    from gradtrace.scoring.methods import EKFACMethod

    _, tok = load_base(Path(meta["base_dir"]), meta["model"]) if meta["model"] == "smollm2" else (None, None)
    if tok is None:
        from gradtrace.models.zoo import byte_tokenizer

        tok = byte_tokenizer()
    model = peft_model(case, meta)
    task = CausalLMTask(tok, max_length=128)
    ref = CheckpointRef(meta["checkpoint"], meta["checkpoint_lr"], step=0)
    tmp = Path(tempfile.mkdtemp(prefix="gt-planted-peers-"))
    fc = FeaturizeConfig(params=("*lora_*",), projection=ProjectionConfig("none"), batch_size=16)
    st = featurize(model, task, [ref], meta["train"], tmp / "store", fc, progress=False,
                    checkpoint_loader=load_hf_checkpoint)
    att = Attributor(st, model, task, checkpoint_loader=load_hf_checkpoint)
    if method in ("raw", "cosine"):
        return {"exact": att.score(meta["queries"], variant=method)}
    fit_factors(att.store, model, task, meta["train"], name="empirical", progress=False, checkpoint_loader=load_hf_checkpoint)
    return {"exact_empirical_damping=0.1": att.score(meta["queries"], variant=EKFACMethod(0.1, factors="empirical"))}


def run_kronfluence(case: Path, meta: dict[str, Any], method: str) -> dict[str, np.ndarray]:
    import logging
    import shutil
    import tempfile

    import torch

    sys.path.insert(0, str(HERE / "peer_runners"))
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from run_kronfluence import CompletionTask, Rows

    model = peft_model(case, meta)
    tracked = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".lora_" in n]

    class LoraTask(CompletionTask):
        def get_influence_tracked_modules(self):  # type: ignore[no-untyped-def]
            return tracked

    with np.load(case / "data.npz") as d:
        rows = {w: Rows({k: torch.as_tensor(d[f"{w}_{k}"], dtype=torch.int64) for k in ("input_ids", "attention_mask", "labels")})
                for w in ("train", "query")}
    task = LoraTask()
    out = tempfile.mkdtemp(prefix="kronfluence-planted-")
    try:
        model = prepare_model(model, task)
        a = Analyzer(analysis_name="planted", model=model, task=task, cpu=True, disable_tqdm=True, output_dir=out,
                     log_level=logging.WARNING)
        a.fit_all_factors(factors_name=method, dataset=rows["train"], per_device_batch_size=16,
                          factor_args=FactorArguments(strategy=method, use_empirical_fisher=True))
        a.compute_pairwise_scores(scores_name="s", factors_name=method, query_dataset=rows["query"], train_dataset=rows["train"],
                                  per_device_query_batch_size=16, per_device_train_batch_size=16,
                                  score_args=ScoreArguments(damping_factor=None))
        name = "exact" if method == "identity" else "empirical_damping=heuristic"
        return {name: a.load_pairwise_scores("s")["all_modules"].double().numpy()}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def runner(case: Path, tool: str, method: str, out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    meta = json.loads((case / "case.json").read_text())
    start, cpu = time.perf_counter(), time.process_time()
    scores = (run_gradtrace if tool == "gradtrace" else run_kronfluence)(case, meta, method)
    secs, cpu_secs = time.perf_counter() - start, time.process_time() - cpu
    for name, s in scores.items():
        np.save(out / f"{name}.npy", np.asarray(s, dtype=np.float64))
    (out / "meta.json").write_text(json.dumps({"seconds": secs, "cpu_seconds": cpu_secs, "variants": sorted(scores)}))


# ------------------------------------------------------------------------------------------ driver

def job(python: str, case: Path, tool: str, method: str, timeout_s: float, fresh: bool = False) -> dict[str, Any]:
    """One (tool, method) in a subprocess: its recall, seconds and peak MiB (kept in ``job.json``, reused unless ``fresh``)."""
    out = case / "out" / f"{tool}__{method}"
    if (out / "job.json").exists() and not fresh:
        return json.loads((out / "job.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.npy")) + list(out.glob("meta.json")):
        old.unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    if tool == "gradtrace":
        env["PYTHONPATH"] = str(ROOT)
    else:
        env.pop("PYTHONPATH", None)
    cmd = [python, str(Path(__file__).resolve()), "--run", tool, method, str(out), "--case", str(case)]
    start = time.perf_counter()
    with (out / "stderr.txt").open("w") as se:
        proc = subprocess.Popen(cmd, stdout=se, stderr=se, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout_s:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    peak = usage.ru_maxrss / 1024.0
    if not (out / "meta.json").exists():
        tail = (out / "stderr.txt").read_text().strip().splitlines()[-8:]
        return {"error": f"exited {os.waitstatus_to_exitcode(status)}: " + "\n".join(tail)[-1500:], "peak_mib": peak}
    m = json.loads((out / "meta.json").read_text())
    with np.load(case / "data.npz") as d:
        planted = d["planted"]
    (variant,) = m["variants"]
    scores = np.load(out / f"{variant}.npy")
    result = {"score": planted_recall(scores, planted), "seconds": m["seconds"], "cpu_seconds": m["cpu_seconds"], "peak_mib": peak,
              "variant": variant, "process_seconds": time.perf_counter() - start,
              "planted_ranks": planted_ranks(scores, planted)}
    (out / "job.json").write_text(json.dumps(result, indent=1))
    return result


def planted_ranks(scores: np.ndarray, planted: np.ndarray) -> list[int]:
    """1-based ranks (highest summed score first, ties by lower index) of the planted examples."""
    total = np.asarray(scores, dtype=np.float64)
    total = total.sum(axis=0) if total.ndim == 2 else total
    order = np.argsort(-total, kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return sorted(int(r) for r in ranks[np.asarray(planted, dtype=bool)])


#: (gradtrace method, Kronfluence method) computing the same quantity: raw = lr x identity, EK-FAC with the same damping rule
AGREEMENT = (("gradtrace/raw", "kronfluence/identity"), ("gradtrace/ekfac", "kronfluence/ekfac"))


def agreement(case: Path, entries: dict[str, Any]) -> dict[str, float]:
    """Pearson correlation over all (query, training example) scores of each pair in :data:`AGREEMENT` that ran."""
    out = {}
    for g, p in AGREEMENT:
        if "variant" in entries.get(g, {}) and "variant" in entries.get(p, {}):
            a, b = (np.load(case / "out" / k.replace("/", "__") / f"{entries[k]['variant']}.npy").ravel() for k in (g, p))
            out[f"{g} vs {p}"] = float(np.corrcoef(a, b)[0, 1])
    return out


def run_case(model: str, case: Path, kronfluence_python: str | None, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
    """Build ``case`` (once; reused when ``case.json`` exists) and run every (tool, method) of :data:`METHODS`:
    ``{"case": facts, "entries": {tool/method: {score, seconds, cpu_seconds, peak_mib, ...} or {error}}, "agreement"}``."""
    case.mkdir(parents=True, exist_ok=True)
    if (case / "case.json").exists():
        meta = json.loads((case / "case.json").read_text())
    else:
        if progress:
            print("[planted] fine-tuning", file=sys.stderr, flush=True)
        meta = build(case, model)
    entries: dict[str, Any] = {}
    pythons = {"gradtrace": sys.executable, "kronfluence": kronfluence_python}
    for tool, methods in METHODS.items():
        for method in methods:
            if pythons[tool] is None or not Path(pythons[tool]).exists():
                entries[f"{tool}/{method}"] = {"error": f"no python for {tool}: {pythons[tool]}"}
                continue
            if progress:
                print(f"[planted] {tool}/{method}", file=sys.stderr, flush=True)
            entries[f"{tool}/{method}"] = job(str(pythons[tool]), case, tool, method, timeout_s=1500, fresh=fresh)
            if progress:
                print(f"[planted]   -> {entries[f'{tool}/{method}']}", file=sys.stderr, flush=True)
    facts = {k: meta[k] for k in ("model", "sizes", "lora", "n_train", "n_planted", "n_queries", "train_seconds", "train_steps",
                                  "query_logprob_before", "query_logprob_after")}
    return {"case": facts, "entries": entries, "agreement": agreement(case, entries)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SIZES), default="smollm2")
    p.add_argument("--case", default=None, help="case folder (default benchmarks/.peers/work/lm_planted_<model>)")
    p.add_argument("--kronfluence-python", default=str(HERE / ".peers" / "kronfluence" / "bin" / "python"))
    p.add_argument("--fresh", action="store_true", help="rerun the jobs kept in the case folder")
    p.add_argument("--run", nargs=3, metavar=("TOOL", "METHOD", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    case = Path(args.case or HERE / ".peers" / "work" / f"lm_planted_{args.model}")
    if args.run:
        runner(case, args.run[0], args.run[1], Path(args.run[2]))
        return
    print(json.dumps(run_case(args.model, case, args.kronfluence_python, args.fresh), indent=1))


if __name__ == "__main__":
    main()
