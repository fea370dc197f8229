"""Bergson (EK-FAC and TrackStar pipelines) on the language-model case of
benchmarks/peers.py (``lm_lds``); runs in a virtualenv with bergson 2.5.1
(``--bergson-python``), never imports gradtrace. Same calling convention as
the other runners (_common.py).

Bergson reads a Hugging Face model folder and a dataset, so each
checkpoint is written as one: the case's GPT with its ``nn.Linear`` layers
turned back into transformers' ``Conv1D`` (the same function; Bergson
handles ``Conv1D``), untied output layer, its position table padded with
unused rows to 4,096 (Bergson's token batches may not exceed the model's
context), the word tokenizer, and the Adam
state saved with the checkpoint as ``optimizer.pt`` (second moments of the
converted layers transposed the same way). Data: JSONL of the exact
``input_ids`` and ``labels`` (-100 on the prompt) every tool computes on;
Bergson's per-example loss is their summed NLL (``loss_reduction="sum"``,
its default), with the linear layers' biases (``include_bias=True``).

* ``ekfac``: ``hessian_pipeline`` with ``HessianConfig(method="kfac",
  ev_correction=True)``, exact gradients (EK-FAC takes no projection), one
  score column per query, damping ``0.1 x mean eigenvalue`` (its default
  ``damped_inverse``, gradtrace's and Kronfluence's rule); ``true`` Fisher
  (labels drawn from the model, its default) or ``empirical`` (the
  dataset's labels, ``use_dataset_labels``). ``last``: the
  final checkpoint; ``all``: the learning-rate-weighted sum over the
  checkpoints (TracIn's idea, added here).
* ``trackstar``: the ``trackstar`` pipeline (Adam normalisation from the
  checkpoint's optimizer state, projection 16 x 16 per module, the
  autocorrelation of the training and query gradients mixed, unit norm),
  as its CLI runs it; ``last`` and ``all`` likewise.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Case, Recorder, main  # noqa: E402
from _lm import linear_modules, make_gpt, word_tokenizer  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


TOKEN_BATCH = 4096


def hf_folder(case: Case, c: int, dest: Path) -> Path:
    """Checkpoint ``c`` as a Hugging Face GPT-2 folder (``Conv1D`` layers), with its ``optimizer.pt``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    spec = case.meta["gpt"]
    linear = make_gpt(spec)
    state = torch.load(case.checkpoints[c], weights_only=True)
    # Bergson's token batches may not exceed the model's context: the position table is padded with unused rows
    config = GPT2Config(vocab_size=int(spec["vocab_size"]), n_positions=TOKEN_BATCH, n_embd=int(spec["n_embd"]),
                        n_layer=int(spec["n_layer"]), n_head=int(spec["n_head"]), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=int(spec["eos_id"]), eos_token_id=int(spec["eos_id"]), pad_token_id=int(spec["pad_id"]),
                        tie_word_embeddings=False)
    model = GPT2LMHeadModel(config)
    conv = {f"{m}.weight" for m in linear_modules(linear) if m != "lm_head"}  # Conv1D in GPT-2: weight [in, out]
    state = {k: (v.T.contiguous() if k in conv else v) for k, v in state.items()}
    wpe = state["transformer.wpe.weight"]
    state["transformer.wpe.weight"] = torch.cat([wpe, wpe.new_zeros(TOKEN_BATCH - wpe.shape[0], wpe.shape[1])])
    model.load_state_dict(state)
    model.save_pretrained(dest)
    word_tokenizer(case.meta["words"]).save_pretrained(dest)
    opt = torch.load(case.meta["optimizer_states"][c], weights_only=True)
    names = [n for n, _ in linear.named_parameters()]
    for idx, st in opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            if names[int(idx)] in conv:
                st[key] = st[key].T.contiguous()
            elif names[int(idx)] == "transformer.wpe.weight":  # the padded rows (never used: not a linear layer)
                st[key] = torch.cat([st[key], st[key].new_zeros(TOKEN_BATCH - st[key].shape[0], st[key].shape[1])])
    torch.save(opt, dest / "optimizer.pt")
    return dest


def jsonl(case: Case, name: str, dest: Path) -> Path:
    arrays = case.token_arrays(name)
    with dest.open("w") as f:
        for ids, mask, labels in zip(arrays["input_ids"], arrays["attention_mask"], arrays["labels"]):
            n = int(mask.sum())
            f.write(json.dumps({"input_ids": ids[:n].tolist(), "labels": labels[:n].tolist()}) + "\n")
    return dest


def load(scores_path: str, n_train: int, n_query: int) -> np.ndarray:
    """Bergson's scores as ``[n_query, n_train]``, higher = a proponent (its ``higher_is_better``)."""
    from bergson.data import load_scores

    loaded = load_scores(Path(scores_path))
    arr = np.asarray(loaded[:], dtype=np.float64)
    if arr.shape != (n_train, n_query):
        raise ValueError(f"Bergson scores of shape {arr.shape}, expected ({n_train}, {n_query})")
    return arr.T


def run(case: Case, method: str, rec: Recorder) -> None:
    if not case.is_lm:
        raise SystemExit("the Bergson runner serves the language-model case only")
    from bergson.config.config import (
        DataConfig, HessianConfig, HessianPipelineConfig, IndexConfig, InversionConfig, PreprocessConfig, QuerySetConfig,
        ScoreConfig, TrackstarConfig,
    )

    tmp = Path(tempfile.mkdtemp(prefix=f"bergson-peers-{method}-"))
    n_train, n_query = len(case.examples("train")), len(case.examples("query"))
    last = len(case.checkpoints) - 1
    try:
        def data() -> tuple[Path, Path]:
            return jsonl(case, "train", tmp / "train.jsonl"), jsonl(case, "query", tmp / "query.jsonl")

        def index(c: int, run: str, projection_dim: int, normalize: bool) -> IndexConfig:
            folder = rec.cached(f"folder_{c}", lambda: hf_folder(case, c, tmp / f"model_{c}"))
            train, _ = rec.cached("data", data)
            return IndexConfig(run_path=str(tmp / run), model=str(folder), precision="fp32", projection_dim=projection_dim,
                               include_bias=True, data=DataConfig(dataset=str(train)), overwrite=True, token_batch_size=TOKEN_BATCH,
                               optimizer_state=str(folder) if normalize else "")

        def ekfac(c: int, fisher: str) -> np.ndarray:
            from bergson.hessians.pipeline import hessian_pipeline

            cfg = index(c, f"ekfac_{fisher}_{c}", 0, False)
            _, query = rec.cached("data", data)
            hessian = HessianConfig(method="kfac", ev_correction=True, hessian_dtype="fp64", use_dataset_labels=fisher == "empirical")
            hessian_pipeline(cfg, hessian, ScoreConfig(),
                             PreprocessConfig(), HessianPipelineConfig(query=QuerySetConfig(dataset=str(query), aggregation="none"),
                                                                       inversion_cfg=InversionConfig(damping_factor=0.1)))
            return load(f"{cfg.run_path}/scores", n_train, n_query)

        def trackstar(c: int) -> np.ndarray:
            from bergson.cli.trackstar import trackstar as pipeline

            cfg = index(c, f"trackstar_{c}", 16, True)
            _, query = rec.cached("data", data)
            pipeline(cfg, TrackstarConfig(query=QuerySetConfig(dataset=str(query), aggregation="none"),
                                          preprocess_cfg=PreprocessConfig(unit_normalize=True), stats_sample_size=None))
            return load(f"{cfg.run_path}/scores", n_train, n_query)

        # to fit the CPU budget: the empirical Fisher over one or all checkpoints, its default (true) Fisher on the last;
        # TrackStar on the last checkpoint (as published)
        if method == "ekfac":
            for fisher, cks in (("empirical", ("last", "all")), ("true", ("last",))):
                per = lambda c: rec.cached(f"ekfac_{fisher}_{c}", lambda: ekfac(c, fisher))  # noqa: E731
                rec.variant(f"{fisher}_last", lambda: per(last))
                if "all" in cks:
                    rec.variant(f"{fisher}_all", lambda: sum(case.lrs[c] * per(c) for c in range(len(case.checkpoints))))
        elif method == "trackstar":
            rec.variant("last", lambda: rec.cached(f"trackstar_{last}", lambda: trackstar(last)))
        else:
            raise SystemExit(f"unknown bergson method {method!r}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(run)
