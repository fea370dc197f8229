"""gradtrace against the peers on the same checkpoints and data: Kronfluence,
dattri and Captum.

    python benchmarks/peers.py                       # everything (about 45 min on 2 busy cores)
    python benchmarks/peers.py --parts retrain       # only the LDS retrains (cached for the full run)
    python benchmarks/peers.py --peers captum        # gradtrace and one peer

Each peer whose dependencies could clash with the project's gets its own
virtualenv under ``benchmarks/.peers/<peer>`` (git-ignored), made with
``python -m venv``: ``torch==2.13.0`` first (the pinned CPU build), then
the peer with ``--no-deps`` and its needs listed in :data:`PEERS`, all
constrained to that torch. A peer that cannot be installed or run is
recorded as ``{"error": ...}``, never a failure of the benchmark. Captum is a
dependency of the project's own dev environment and runs there.

Every (tool, method) runs in a subprocess, a runner in
``benchmarks/peer_runners/run_<tool>.py`` reading the checkpoints and data this script
saved (``.pt`` state dicts loaded with ``weights_only=True``, ``.npz``),
writing one ``.npy`` of scores per variant (setting). This script computes
every metric the same way for all tools. Seconds: the runner's own timing
of one variant from the model checkpoints to the scores (featurize, fit
factors, score; not the Python start-up and imports); peak MiB: the
subprocess's peak resident memory (``os.wait4``'s rusage), the same
measurement for every tool, gradtrace included; it covers all variants of
the method run in that process, and torch's own ~300 MiB.

Cases:

* ``digits_lds``: the digits MLP (64-128-128-10), Adam, 1,500 steps, 5
  checkpoints (the set-up of ``methods.py``); the loss of 50 test images;
  LDS over random half-subsets, each retrained with its own seed (TRAK /
  dattri: subset ``j`` trained with seed ``train_seed + j``). Settings are
  chosen on a dev draw (other subsets, other retraining seeds) and the
  test draw is reported; every variant's dev and test LDS is kept.
* ``digits_mislabel``: the demo's run (SGD, 200 epochs, 5 checkpoints)
  with 10% and 20% of the labels flipped; training examples ranked by
  self-influence; the share of the flipped ones found after checking the
  top 10% and 20%. Each method runs its default settings (:data:`DEFAULTS`,
  not tuned on this case). ``score`` is the mean over the two flip rates of the share found after
  checking 10%.
* ``lm_lds``: a GPT of 0.93M parameters (transformers' GPT-2 built from a
  config, 2 layers of width 192, ``Conv1D`` as ``nn.Linear``) trained from
  scratch with Adam (150 steps, 3 checkpoints) on seeded generated text
  (benchmarks/setups/lm_peers.py: made-up people's cities, foods and pets,
  each fact in four templates, as prompt/completion pairs); the summed
  completion NLL of 48 held-out examples; LDS over random half-subsets of
  the 304 training examples, retrained as in ``digits_lds`` (seeds vary;
  :data:`LM_METHODS`, fewer subsets: :class:`Settings`). Dev draw for the
  settings, test draw reported, as for digits.
* ``lm_planted``: the planted-example recall of benchmarks/lm_planted.py at a
  reduced size (benchmarks/planted_peers.py: 200 examples of which 4 planted,
  the final checkpoint of one LoRA fine-tune of SmolLM2-135M-Instruct);
  gradtrace (raw, cosine, EK-FAC) against Kronfluence (identity, EK-FAC).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, machine, record  # noqa: E402

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"
WORK = PEERS_DIR / "work"
RUNNERS = HERE / "peer_runners"
RESULTS = ROOT / "benchmarks" / "results" / "peers.json"
COMMAND = "python benchmarks/peers.py"
#: the command the LM case's numbers come from
LM_COMMAND = ("nice -n 10 python benchmarks/peers.py --parts lm_retrain lm_lds lm_planted --peers kronfluence "
              "--bergson-python PATH/benchmarks/.peers/bergson/bin/python --progress")
#: what the command runs by default, in this order; "lm_retrain" trains the LM case's model and its subsets
PARTS = ("retrain", "lds", "mislabel", "lm_retrain", "lm_lds", "lm_planted")
TORCH_PIN = "torch==2.13.0"

#: peer -> (the peer's own requirement, installed --no-deps; its needs, installed with their deps under the torch pin)
PEERS: dict[str, tuple[str, list[str]]] = {
    # transformers and peft (the project's versions): the LM cases' GPT-2 and SmolLM2 LoRA models
    "kronfluence": ("kronfluence==1.0.1", ["accelerate", "einops", "einconv", "opt_einsum", "safetensors", "scikit-learn", "tqdm", "numpy",
                                           "transformers==5.24.0", "peft==0.21.2"]),
    "dattri": ("dattri==0.3.0", ["numpy", "scipy", "pyyaml", "tqdm", "requests"]),
    # benchmarks/scale.py --part bergson; transformers and peft pinned to the project's, so both run the same model code;
    # torchvision, torchaudio and bitsandbytes (declared, never imported by `bergson build` on fp32) are left out
    "bergson": ("bergson==2.5.1", ["accelerate", "datasets", "jinja2", "jaxtyping>=0.3.3", "ml_dtypes", "natsort", "numpy",
                                   "scipy", "peft==0.21.2", "petname", "pyarrow", "pyyaml", "simple-parsing", "torchopt",
                                   "transformers==5.24.0", "huggingface-hub>=1.13.0", "safetensors", "tqdm", "psutil", "pandas"]),
}

#: tool -> methods per case (pairwise scores for LDS, self-influence for mislabel)
METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    "gradtrace": {"pairwise": ("raw", "cosine", "adam", "fisher", "kfac", "ekfac", "trackstar"),
                  "self": ("raw", "fisher", "kfac", "ekfac")},
    "kronfluence": {"pairwise": ("identity", "kfac", "ekfac"), "self": ("identity", "kfac", "ekfac")},
    "dattri": {"pairwise": ("tracin", "trak"), "self": ("tracin", "trak")},
    "captum": {"pairwise": ("tracincp",), "self": ("tracincp",)},
}


#: tool -> methods of the LM case (pairwise). Kronfluence's K-FAC (without the eigenvalue correction) is left out
#: of the LM case to fit the CPU budget; gradtrace's kfac shares its store and factors with ekfac's costs.
LM_METHODS: dict[str, tuple[str, ...]] = {
    "gradtrace": ("raw", "cosine", "adam", "fisher", "kfac", "ekfac", "trackstar"),
    "kronfluence": ("identity", "ekfac"),
    "bergson": ("ekfac", "trackstar"),
}

#: peers this script does not install, run from a virtualenv given on the command line (``--bergson-python``),
#: with their runner file (Bergson's other runner, run_bergson.py, is the throughput benchmark's)
EXTERNAL_RUNNERS: dict[str, str] = {"bergson": "run_bergson_lds.py"}


#: the variant each method runs in the mislabel case: its defaults, not tuned on that case
DEFAULTS: dict[str, str] = {
    "gradtrace/raw": "exact", "gradtrace/fisher": "dense1024_damping=0.1", "gradtrace/kfac": "empirical_all_damping=0.1",
    "gradtrace/ekfac": "empirical_all_damping=0.1",
    "kronfluence/identity": "true_last_damping=heuristic", "kronfluence/kfac": "true_last_damping=heuristic",
    "kronfluence/ekfac": "true_last_damping=heuristic",
    "dattri/tracin": "proj512", "dattri/trak": "last_proj512", "captum/tracincp": "exact",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    n_queries: int = 50
    n_task: int = 200  # test images after the queries: TrackStar's whitening
    test_subsets: int = 50
    dev_subsets: int = 20
    alpha: float = 0.5
    test_seed: int = 0  # subset draw; retraining seeds test_train_seed + j
    test_train_seed: int = 1000
    dev_seed: int = 1
    dev_train_seed: int = 2000
    full_train_seed: int = 0  # the model every tool attributes
    flips: tuple[float, ...] = (0.1, 0.2)
    job_timeout_s: int = 1800
    threads: int = 1
    lm_test_subsets: int = 30  # the LM case: the same seeds as digits, fewer retrains (CPU budget)
    lm_dev_subsets: int = 12


# ---------------------------------------------------------------------------------------------- metrics


def lds_spearman(scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray) -> float:
    """LDS of ``scores`` ``[n_query, n_train]`` (higher = lowers the query's
    loss) on retrained subsets: ``masks`` ``[n_subsets, n_train]`` (True =
    kept), ``outputs`` ``[n_subsets, n_query]`` (the query loss of each
    retrained model). Mean over queries of the Spearman correlation between
    ``-masks @ scores.T`` and the loss (gradtrace.unlearn.lds); NaN when a
    score is not finite."""
    from gradtrace.unlearn.lds import LDSConfig, SubsetOutputs, lds

    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        return float("nan")
    subsets = SubsetOutputs(LDSConfig(n_subsets=max(3, len(masks))), np.asarray(masks, dtype=bool), np.asarray(outputs, dtype=np.float64))
    return lds(scores, subsets, "decrease")


def share_found(self_scores: np.ndarray, flipped: np.ndarray, checked: float) -> float:
    """Share of the flipped examples among the top ``checked`` fraction of
    the ranking by ``self_scores`` (highest first; ties in index order)."""
    from gradtrace.demos.digits import found_at

    s = np.asarray(self_scores, dtype=np.float64)
    if not np.isfinite(s).all():
        return float("nan")
    return found_at(s, np.asarray(flipped, dtype=bool), (checked,))[f"{int(round(checked * 100))}%"]


# ---------------------------------------------------------------------------------------------- installing


class PeerInstallError(RuntimeError):
    pass


def _run_step(cmd: list[str], log: Path) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stderr.splitlines() if "is ignored: it is neither" not in line)[-1500:]
        raise PeerInstallError(f"`{' '.join(cmd[2:])}` exited {proc.returncode}: {tail}")


def install_peer(name: str, root: Path = PEERS_DIR, run_step: Callable[[list[str], Path], None] = _run_step) -> Path:
    """The python of ``name``'s virtualenv, made on first use (a stamp names
    what was installed); raises :class:`PeerInstallError` with pip's error."""
    requirement, needs = PEERS[name]
    venv = root / name
    python = venv / "bin" / "python"
    digest = hashlib.sha256(json.dumps([TORCH_PIN, requirement, needs]).encode()).hexdigest()[:12]
    stamp = venv / f".installed-{digest}"
    if stamp.exists() and python.exists():
        return python
    if venv.exists():
        shutil.rmtree(venv)
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"{name}-install.log"
    log.write_text("")
    constraints = root / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    run_step([sys.executable, "-m", "venv", str(venv)], log)
    pip = [str(python), "-m", "pip", "install", "-q"]
    run_step(pip + [TORCH_PIN], log)
    run_step(pip + ["--no-deps", requirement], log)
    run_step(pip + ["-c", str(constraints)] + needs, log)
    stamp.write_text(f"{TORCH_PIN}\n{requirement}\n{' '.join(needs)}\n")
    return python


def tool_pythons(tools: list[str], installer: Callable[[str], Path] = install_peer) -> dict[str, Path | str]:
    """Each tool's python, or the reason (a string) it has none."""
    out: dict[str, Path | str] = {}
    for tool in tools:
        if tool in PEERS:
            try:
                out[tool] = installer(tool)
            except Exception as e:  # any failure to install is a result, not a crash
                out[tool] = f"install failed: {type(e).__name__}: {e}"
        else:  # gradtrace and Captum: the project's own environment
            out[tool] = Path(sys.executable)
    return out


# ---------------------------------------------------------------------------------------------- running


def run_job(python: Path | str, tool: str, method: str, case_dir: Path, timeout_s: int, fresh: bool = False,
            only: str | None = None) -> dict[str, Any]:
    """Run one (tool, method) runner; ``{"variants": {name: seconds}, "errors": ..., "peak_mib", "process_seconds"}``
    or ``{"error": ...}``. A job that succeeded is reused unless ``fresh``."""
    if isinstance(python, str):
        return {"error": python}
    out = case_dir / "out" / f"{tool}__{method}"
    done = out / "job.json"
    if done.exists() and not fresh:
        return json.loads(done.read_text())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    if tool in PEERS or tool in EXTERNAL_RUNNERS:
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(ROOT)
    runner = RUNNERS / EXTERNAL_RUNNERS.get(tool, f"run_{tool}.py")
    cmd = [str(python), str(runner), str(case_dir), method, str(out)] + ([only] if only else [])
    start = time.perf_counter()
    with (out / "stdout.txt").open("w") as so, (out / "stderr.txt").open("w") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, env=env, cwd=str(out))
        deadline = start + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"seconds": {}, "errors": {}}
    result: dict[str, Any] = {"peak_mib": usage.ru_maxrss / 1024.0, "process_seconds": wall, "returncode": proc.returncode,
                              "variants": meta["seconds"], "cpu_seconds": meta.get("cpu_seconds", {}), "errors": meta["errors"]}
    if not meta["seconds"]:
        err = (out / "stderr.txt").read_text().strip().splitlines()
        msg = "timed out" if wall > timeout_s else f"exited {proc.returncode}"
        result = {"error": f"{msg}: " + "\n".join(err[-12:])[-2000:], "peak_mib": result["peak_mib"], "process_seconds": wall}
    if "error" not in result:  # a failed job runs again next time
        done.write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------------- cases


def _save_case(case_dir: Path, mode: str, refs: list[Any], states: list[str], arrays: dict[str, np.ndarray], settings: Settings,
               model: dict[str, Any] | None = None) -> None:
    """``case.json`` (last) and ``data.npz``; ``model``: what names the model in ``case.json``
    (default: the digits MLP, ``{"hidden": 128}``)."""
    case_dir.mkdir(parents=True, exist_ok=True)
    np.savez(case_dir / "data.npz", **arrays)
    meta = {"mode": mode, **(model or {"hidden": 128}), "checkpoints": [str(Path(r.path).resolve()) for r in refs],
            "lrs": [float(r.lr) for r in refs], "optimizer_states": [str(Path(p).resolve()) for p in states], "threads": settings.threads}
    (case_dir / "case.json").write_text(json.dumps(meta, indent=1))


def prepare_lds(settings: Settings) -> Path:
    from setups.backdoor import DigitsTrainer, LDSBenchConfig
    from gradtrace.demos.digits import DigitsConfig, load_digits_data

    case_dir = WORK / "digits_lds"
    if (case_dir / "case.json").exists():
        return case_dir
    d = load_digits_data(DigitsConfig(flip_fraction=0.0))
    trainer = DigitsTrainer(d.x_train, d.y_train, LDSBenchConfig().train, case_dir / "train")
    trainer(np.arange(len(d.y_train)), settings.full_train_seed)
    q, t = settings.n_queries, settings.n_queries + settings.n_task
    arrays = {"x_train": d.x_train.numpy(), "y_train": d.y_train.numpy(), "x_query": d.x_test[:q].numpy(), "y_query": d.y_test[:q].numpy(),
              "x_task": d.x_test[q:t].numpy(), "y_task": d.y_test[q:t].numpy()}
    _save_case(case_dir, "pairwise", trainer.last_checkpoints, trainer.last_optimizer_states, arrays, settings)
    return case_dir


def prepare_mislabel(flip: float, settings: Settings) -> Path:
    from gradtrace.demos.digits import DigitsConfig, load_digits_data, train_digits

    case_dir = WORK / f"digits_mislabel_{int(round(flip * 100))}"
    if (case_dir / "case.json").exists():
        return case_dir
    config = DigitsConfig(flip_fraction=flip)
    d = load_digits_data(config)
    refs = train_digits(d, case_dir / "train", config)
    arrays = {"x_train": d.x_train.numpy(), "y_train": d.y_train.numpy(), "flipped": d.flipped}
    _save_case(case_dir, "self", refs, [], arrays, settings)
    return case_dir


def retrain(settings: Settings, which: str, progress: bool) -> dict[str, np.ndarray]:
    """Masks and query losses of the ``which`` ("dev" or "test") draw, cached under the LDS case."""
    import dataclasses as dc

    import torch
    from setups.backdoor import DigitsTrainer, LDSBenchConfig
    from gradtrace.demos.digits import DigitsConfig, load_digits_data
    from gradtrace.task import ClassificationTask
    from gradtrace.unlearn.lds import LDSConfig, retrain_subsets

    n, seed, train_seed = ((settings.dev_subsets, settings.dev_seed, settings.dev_train_seed) if which == "dev"
                           else (settings.test_subsets, settings.test_seed, settings.test_train_seed))
    path = WORK / "digits_lds" / f"subsets_{which}_{n}_{seed}_{train_seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return {"masks": f["masks"], "outputs": f["outputs"]}
    torch.set_num_threads(settings.threads)
    d = load_digits_data(DigitsConfig(flip_fraction=0.0))
    queries = (d.x_test[: settings.n_queries], d.y_test[: settings.n_queries])
    plain = dc.replace(LDSBenchConfig().train, n_checkpoints=0)
    config = LDSConfig(n_subsets=n, alpha=settings.alpha, seed=seed, train_seed=train_seed, vary_train_seed=True)
    task = ClassificationTask()
    trainer = DigitsTrainer(d.x_train, d.y_train, plain, WORK / "retrain_tmp")
    sub = retrain_subsets(trainer, lambda m: task.per_example_loss(m, queries), len(d.y_train), config, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, masks=sub.masks, outputs=sub.outputs)
    return {"masks": sub.masks, "outputs": sub.outputs}


def prepare_lm(settings: Settings, case_dir: Path | None = None, config: Any = None) -> Path:
    """The ``lm_lds`` case: the GPT trained on every training example (seed
    ``full_train_seed``, 3 checkpoints with Adam's states) and what the runners read."""
    import torch
    from peer_runners._lm import linear_params
    from setups.lm_peers import LMCaseConfig, LMTrainer, make_lm_data, padded

    case_dir = case_dir or WORK / "lm_lds"
    if (case_dir / "case.json").exists():
        return case_dir
    torch.set_num_threads(settings.threads)
    config = config or LMCaseConfig()
    data = make_lm_data(config)
    trainer = LMTrainer(config, data, case_dir / "train", n_checkpoints=config.n_checkpoints)
    model = trainer(np.arange(len(data.train)), settings.full_train_seed)
    arrays = {f"{name}_{k}": v for name in ("train", "query", "task")
              for k, v in padded(trainer.task, getattr(data, name), config.n_positions).items()}
    spec = {"gpt": trainer.spec, "words": data.words, "max_length": config.n_positions, "params": linear_params(model),
            "examples": {"train": data.train, "query": data.query, "task": data.task}, "lm_config": config.to_dict(),
            "final_train_loss": float(np.mean(trainer.last_losses[-10:]))}
    _save_case(case_dir, "pairwise", trainer.last_checkpoints, trainer.last_optimizer_states, arrays, settings, spec)
    return case_dir


def retrain_lm(settings: Settings, which: str, progress: bool, case_dir: Path | None = None, config: Any = None) -> dict[str, np.ndarray]:
    """Masks and query losses of the LM case's ``which`` ("dev" or "test") draw, cached under the case."""
    import torch
    from setups.lm_peers import LMCaseConfig, LMTrainer, make_lm_data
    from gradtrace.unlearn.lds import LDSConfig, retrain_subsets

    case_dir = case_dir or WORK / "lm_lds"
    n, seed, train_seed = ((settings.lm_dev_subsets, settings.dev_seed, settings.dev_train_seed) if which == "dev"
                           else (settings.lm_test_subsets, settings.test_seed, settings.test_train_seed))
    path = case_dir / f"subsets_{which}_{n}_{seed}_{train_seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return {"masks": f["masks"], "outputs": f["outputs"]}
    torch.set_num_threads(settings.threads)
    config = config or LMCaseConfig()
    data = make_lm_data(config)
    trainer = LMTrainer(config, data, case_dir / "retrain_tmp")
    lds_config = LDSConfig(n_subsets=n, alpha=settings.alpha, seed=seed, train_seed=train_seed, vary_train_seed=True)
    start = time.perf_counter()
    sub = retrain_subsets(trainer, trainer.query_loss, len(data.train), lds_config, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, masks=sub.masks, outputs=sub.outputs, seconds=time.perf_counter() - start)
    return {"masks": sub.masks, "outputs": sub.outputs}


def lm_case_facts(case_dir: Path, settings: Settings) -> dict[str, Any]:
    """What the ``lm_lds`` section says about its case (sizes, settings, retraining seconds)."""
    from peer_runners._lm import make_gpt

    meta = json.loads((case_dir / "case.json").read_text())
    model = make_gpt(meta["gpt"])
    attributed = set(meta["params"])
    retrain_s = {}
    for which, n, seed, train_seed in (("dev", settings.lm_dev_subsets, settings.dev_seed, settings.dev_train_seed),
                                       ("test", settings.lm_test_subsets, settings.test_seed, settings.test_train_seed)):
        path = case_dir / f"subsets_{which}_{n}_{seed}_{train_seed}.npz"
        if path.exists():
            with np.load(path) as f:
                if "seconds" in f.files:
                    retrain_s[which] = float(f["seconds"])
    return {"n_params": sum(p.numel() for p in model.parameters()),
            "n_attributed_params": sum(p.numel() for n, p in model.named_parameters() if n in attributed),
            "n_train": len(meta["examples"]["train"]), "n_query": len(meta["examples"]["query"]), "config": meta["lm_config"],
            "gpt": meta["gpt"], "lrs": meta["lrs"], "final_train_loss": meta["final_train_loss"], "retrain_seconds": retrain_s}


#: the model of the lm_planted case (``--planted-model tiny``: the tiny GPT-2, a check that the pipeline runs)
PLANTED_MODEL = "smollm2"


def lm_planted(kronfluence_python: Path | str | None, fresh: bool, progress: bool, model: str = PLANTED_MODEL) -> dict[str, Any]:
    """The ``lm_planted`` entries (benchmarks/planted_peers.py, a reduced size of benchmarks/lm_planted.py), summarised."""
    import planted_peers

    python = kronfluence_python if isinstance(kronfluence_python, Path) else None
    out = planted_peers.run_case(model, WORK / f"lm_planted_{model}", None if python is None else str(python), fresh, progress)
    if python is None and kronfluence_python is not None:
        for k in out["entries"]:
            if k.startswith("kronfluence/"):
                out["entries"][k] = {"error": str(kronfluence_python)}
    summary = summarise(out["entries"])
    summary.update({"case": out["case"], "agreement": out["agreement"]})
    return summary


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _entry(job: dict[str, Any], variant: str, score: float | None, extra: dict[str, Any]) -> dict[str, Any]:
    return {"score": _clean(score) if score is not None else None, "seconds": job["variants"][variant],
            "cpu_seconds": job.get("cpu_seconds", {}).get(variant), "peak_mib": job["peak_mib"], "variant": variant, **extra}


def evaluate_lds(case_dir: Path, jobs: dict[str, dict[str, Any]], dev: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``digits_lds`` entries and the variant chosen (best dev LDS) per ``tool/method``."""
    entries: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    for key, job in jobs.items():
        if "error" in job:
            entries[key] = {"error": job["error"]}
            continue
        out = case_dir / "out" / key.replace("/", "__")
        variants: dict[str, Any] = {}
        for v, secs in job["variants"].items():
            s = np.load(out / f"{v}.npy")
            if s.shape != (dev["outputs"].shape[1], dev["masks"].shape[1]):  # a runner's bug: reported, not scored
                job["errors"][v] = f"scores of shape {s.shape}, expected (n_query, n_train)"
                continue
            variants[v] = {"dev": _clean(lds_spearman(s, dev["masks"], dev["outputs"])),
                           "test": _clean(lds_spearman(s, test["masks"], test["outputs"])), "seconds": secs,
                           "cpu_seconds": job.get("cpu_seconds", {}).get(v)}
        finite = [v for v in variants if variants[v]["dev"] is not None]
        if not finite:
            entries[key] = {"error": "no variant gave finite scores", "variants": variants}
            continue
        best = max(finite, key=lambda v: variants[v]["dev"])
        chosen[key] = best
        entries[key] = _entry(job, best, variants[best]["test"], {"dev_score": variants[best]["dev"], "variants": variants,
                                                                   "variant_errors": job["errors"]})
    return entries, chosen


def evaluate_mislabel(case_dirs: dict[float, Path], jobs: dict[float, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    keys = sorted({k for j in jobs.values() for k in j})
    for key in keys:
        per_flip: dict[str, Any] = {}
        errors = [jobs[f][key]["error"] for f in jobs if "error" in jobs[f][key]]
        if errors:
            entries[key] = {"error": errors[0]}
            continue
        variants_all = set.intersection(*(set(jobs[f][key]["variants"]) for f in jobs))
        if not variants_all:
            entries[key] = {"error": "no variant ran at every flip rate"}
            continue
        variant = DEFAULTS[key] if DEFAULTS.get(key) in variants_all else sorted(variants_all)[0]
        all_variants: dict[str, Any] = {}
        for f, case_dir in case_dirs.items():
            with np.load(case_dir / "data.npz") as d:
                flipped = d["flipped"]
            out = case_dir / "out" / key.replace("/", "__")
            tag = f"flip_{int(round(f * 100))}"
            for v in sorted(jobs[f][key]["variants"]):
                s = np.load(out / f"{v}.npy")
                if s.shape != flipped.shape:
                    raise ValueError(f"{key} {v}: self-influence of shape {s.shape}, expected {flipped.shape}")
                all_variants.setdefault(v, {})[tag] = {"10%": _clean(share_found(s, flipped, 0.1)), "20%": _clean(share_found(s, flipped, 0.2)),
                                                       "seconds": jobs[f][key]["variants"][v]}
            per_flip[tag] = all_variants[variant][tag]
        at10 = [per_flip[t]["10%"] for t in per_flip]
        score = None if any(a is None for a in at10) else float(np.mean(at10))
        entries[key] = {"score": score, "found": per_flip, "variant": variant,
                        "seconds": float(sum(jobs[f][key]["variants"][variant] for f in jobs)),
                        "cpu_seconds": float(sum(jobs[f][key].get("cpu_seconds", {}).get(variant, float("nan")) for f in jobs)),
                        "peak_mib": float(max(jobs[f][key]["peak_mib"] for f in jobs)), "variants": all_variants}
    return entries


def final_loss_baseline(case_dir: Path) -> dict[str, float]:
    import torch
    from torch import nn

    from gradtrace.demos.digits import make_mlp

    meta = json.loads((case_dir / "case.json").read_text())
    with np.load(case_dir / "data.npz") as d:
        x, y, flipped = torch.as_tensor(d["x_train"]), torch.as_tensor(d["y_train"]), d["flipped"]
    m = make_mlp(128, 0)
    m.load_state_dict(torch.load(meta["checkpoints"][-1], weights_only=True))
    with torch.no_grad():
        loss = nn.functional.cross_entropy(m(x), y, reduction="none").numpy()
    return {"10%": share_found(loss, flipped, 0.1), "20%": share_found(loss, flipped, 0.2)}


def summarise(entries: dict[str, Any]) -> dict[str, Any]:
    """``gradtrace_best`` and ``peer_best`` (by score), with each entry's ratios to gradtrace's best."""
    def best(prefix: Callable[[str], bool]) -> dict[str, Any] | None:
        ok = {k: v for k, v in entries.items() if prefix(k) and v.get("score") is not None}
        if not ok:
            return None
        k = max(ok, key=lambda k: ok[k]["score"])
        return {"key": k, "score": ok[k]["score"], "seconds": ok[k]["seconds"], "cpu_seconds": ok[k].get("cpu_seconds"),
                "peak_mib": ok[k]["peak_mib"]}

    g = best(lambda k: k.startswith("gradtrace/"))
    p = best(lambda k: not k.startswith("gradtrace/"))
    if g:
        for v in entries.values():
            if v.get("score") is not None:
                v["seconds_ratio_to_gradtrace_best"] = v["seconds"] / g["seconds"] if g["seconds"] > 0 else None
                gc, vc = g.get("cpu_seconds"), v.get("cpu_seconds")
                v["cpu_seconds_ratio_to_gradtrace_best"] = vc / gc if gc and vc is not None and math.isfinite(vc) else None
                v["peak_mib_ratio_to_gradtrace_best"] = v["peak_mib"] / g["peak_mib"] if g["peak_mib"] > 0 else None
                v["score_minus_gradtrace_best"] = v["score"] - g["score"]
    return {"entries": entries, "gradtrace_best": g, "peer_best": p}


# ---------------------------------------------------------------------------------------------- report


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def write_section(results: dict[str, Any]) -> None:
    md: list[str] = []
    md.append("The machine was shared with other jobs (load average in the machine line): seconds are noisy; the ratios "
              "come from one run, tools taking turns, and CPU seconds (the runner's process time; one thread each) are steadier than wall seconds. Seconds: one variant from the checkpoints to the scores (store, "
              "factors, scores; not Python start-up or imports). Peak MiB: the peak resident memory of the subprocess that "
              "ran the method (all its variants, torch included), the same measurement for every tool. Settings chosen on "
              "the dev draw; `variant` names the one kept; every variant tried, with its dev and test score and seconds, is "
              "in the JSON (`variants`).\n\nNotes. Each (tool, method) ran once in its own subprocess; a job that succeeded is "
              "kept under `benchmarks/.peers/work` and reused by the next invocation, so these tables come from several "
              "invocations of the command (runner bugs fixed between them: dattri's TRAK self-influence shape and output "
              "function), and the LDS and mislabel parts ran as two processes at the same time. Variants: gradtrace "
              "`{fisher}_{all|last}_damping=d` (Fisher fitted on the true labels or on labels drawn from the model; "
              "checkpoints summed with their learning rates or the final one; damping d x mean eigenvalue); the `last` "
              "variants are charged the store and factors of all 5 checkpoints, so their seconds overstate. Kronfluence attributes one model: `last` "
              "is its standard use (the final checkpoint), `all` the learning-rate-weighted sum of its scores at each "
              "checkpoint (TracIn's idea, added here). dattri's TRAK ensembles the checkpoints of this one run, not "
              "independently trained models as in the TRAK paper. Captum runs in the project's environment (it is a dev "
              "dependency), Kronfluence 1.0.1 and dattri 0.3.0 in their own virtualenvs with torch 2.13.0.\n")
    lds_r = results.get("digits_lds")
    if lds_r:
        cfg = results["settings"]
        md.append(f"### digits_lds\n\nDigits MLP (64-128-128-10), Adam 1,500 steps, 5 checkpoints, the loss of {cfg['n_queries']} "
                  f"test images. LDS (Spearman, mean over queries) over {cfg['test_subsets']} random half-subsets of the 1,438 training "
                  f"images, subset j retrained with seed {cfg['test_train_seed']}+j (test draw); settings chosen on a dev draw of "
                  f"{cfg['dev_subsets']} other subsets (seeds {cfg['dev_train_seed']}+j).\n")
        _lds_tables(md, lds_r, MATCHED)
    mis = results.get("digits_mislabel")
    if mis:
        md.append("\n### digits_mislabel\n\nThe demo's run (SGD, 200 epochs, 5 checkpoints) with 10% and 20% of the training "
                  "labels flipped; examples ranked by self-influence; the share of the flipped ones found after checking the top "
                  "10% and 20% of the ranking (with 20% flipped, checking 10% finds at most 0.5). Each method with its default "
                  "settings (not tuned on this case). score: the mean over both flip rates of the share found at 10%. Seconds: both "
                  "flip rates together.\n")
        md.append("| tool/method | variant | 10% flipped: @10% | @20% | 20% flipped: @10% | @20% | score | seconds | CPU s | CPU x gradtrace best | peak MiB |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for k, v in sorted(mis["entries"].items(), key=lambda kv: -(kv[1].get("score") or -9)):
            if "error" in v:
                md.append(f"| {k} | error: {_short(v['error'])} | | | | | | | | | |")
                continue
            f10, f20 = v["found"].get("flip_10", {}), v["found"].get("flip_20", {})
            md.append(f"| {k} | {v['variant']} | {_fmt(f10.get('10%'))} | {_fmt(f10.get('20%'))} | {_fmt(f20.get('10%'))} | "
                      f"{_fmt(f20.get('20%'))} | {_fmt(v['score'])} | {v['seconds']:.1f} | {_fmt(v.get('cpu_seconds'), '.1f')} | "
                      f"{_fmt(v.get('cpu_seconds_ratio_to_gradtrace_best'), '.2f')} | {v['peak_mib']:.0f} |")
        base = mis.get("baseline_final_loss")
        if base:
            md.append("| baseline: final loss (not a tool) | | " + " | ".join(
                f"{_fmt(base[t]['10%'])} | {_fmt(base[t]['20%'])}" for t in ("flip_10", "flip_20") if t in base) + " | | | | | |")
        md.append(_best_line(mis))
    lm = results.get("lm_lds")
    if lm and "entries" in lm:
        c, cfg = lm["case"], results["settings"]
        md.append(f"\n### lm_lds\n\nA GPT of {c['n_params'] / 1e6:.2f}M parameters (transformers' GPT-2 built from a config: "
                  f"{c['config']['n_layer']} layers of width {c['config']['n_embd']}, {c['config']['n_head']} heads, Conv1D "
                  f"replaced by nn.Linear, output layer untied; all {c['n_attributed_params']:,} parameters of its nn.Linear "
                  f"layers attributed) trained from scratch with Adam ({c['config']['train']['steps']} steps of "
                  f"{c['config']['train']['batch_size']}, lr {c['config']['train']['lr']:g}, {len(c['lrs'])} checkpoints) on "
                  f"{c['n_train']} generated prompt/completion examples (`benchmarks/setups/lm_peers.py`: made-up people's "
                  f"city, food and pet, each fact in four templates; final training loss {c['final_train_loss']:.2f}). "
                  f"Behaviour: the summed completion NLL of {c['n_query']} held-out examples. LDS over "
                  f"{cfg['lm_test_subsets']} random half-subsets, subset j retrained with seed {cfg['test_train_seed']}+j "
                  f"(test draw, {c['retrain_seconds'].get('test', float('nan')):.0f} s of retraining); settings chosen on a dev "
                  f"draw of {cfg['lm_dev_subsets']} other subsets (seeds {cfg['dev_train_seed']}+j). gradtrace's variants: "
                  "`exact` (no projection), `kron4096` (each layer's gradient projected to 64 x 64), `kron256` (16 x 16, "
                  "TrackStar with its whitening), `dense1024` (fisher); `all` sums the 3 checkpoints with their learning rates, "
                  "`last` is the final checkpoint alone (with a store of that checkpoint only, except ekfac's `last`, which scores "
                  "the final checkpoint from the store and factors of all three and is charged all of them). Variants were cut "
                  "to fit the CPU budget (kron4096 for ekfac only; adam and fisher `all` only; Kronfluence and Bergson "
                  "at the damping heuristic only, gradtrace at 0.01, 0.1 and 1.0 x mean eigenvalue, chosen on dev). "
                  "Kronfluence runs exact gradients (it stores none), `true` or `empirical` Fisher; gradtrace fits the empirical "
                  "Fisher only (its LM task has no sampled loss). Bergson 2.5.1 (a virtualenv made by the throughput benchmark, given with "
                  "`--bergson-python`) runs its EK-FAC pipeline (exact gradients, `true` or `empirical` Fisher, damping 0.1 x mean "
                  "eigenvalue) and its TrackStar pipeline (Adam normalisation, 16 x 16 projection per layer, mixed "
                  "autocorrelation whitening, unit norm) on each checkpoint written as a Hugging Face GPT-2 folder.\n\n"
                  f"Command of this case: `{LM_COMMAND}`. "
                  + "".join(f"Machine ({k}): {v}. " for k, v in results.get("machine", {}).items() if "lm_lds" in k)
                  + "Each (tool, method) ran in a fresh subprocess, one after the other, nice 10, with other helpers' jobs on "
                  "the 2 cores: the seconds are noisy, ratios and CPU seconds steadier.\n")
        _lds_tables(md, lm, LM_MATCHED)
        if lm.get("reading"):
            md.append(f"\nReading (written after the run, from the numbers above): {lm['reading']}")
    planted = results.get("lm_planted")
    if planted and "entries" in planted:
        _planted_section(md, planted, results)
    elif planted:
        md.append(f"\n### lm_planted\n\n{planted.get('not_run') or planted.get('note', '')}")
    record("peers", COMMAND, "\n".join(md), results)


#: the command the lm_planted numbers come from
PLANTED_COMMAND = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/peers.py --parts lm_planted --peers kronfluence --progress"


def _planted_section(md: list[str], planted: dict[str, Any], results: dict[str, Any]) -> None:
    c = planted["case"]
    s, lora = c["sizes"], c["lora"]
    layers = "all layers" if not lora.get("layers") else f"layers {lora['layers'][0]}-{lora['layers'][-1]}"
    model = "SmolLM2-135M-Instruct" if c["model"] == "smollm2" else "the tiny GPT-2 (a pipeline check, not a result)"
    md.append(f"\n### lm_planted\n\nThe planted-example recall of `benchmarks/lm_planted.py` at a REDUCED size "
              f"(`benchmarks/planted_peers.py`), on {model}: LoRA r={lora['rank']} on {', '.join(lora['target_modules'])} of "
              f"{layers}, {lora['epochs']} epochs at lr {lora['lr']:g} (constant, AdamW, batch {lora['batch_size']}; "
              f"{c['train_steps']} steps, {c['train_seconds']:.0f} s), the final checkpoint only; {c['n_train']} training examples "
              f"({s['n_ordinary']} ordinary, {c['n_planted']} planted, {s['n_honest']} honest on the same topic), "
              f"{c['n_queries']} held-out trigger queries; the misaligned answer's mean log-probability on them went from "
              f"{c['query_logprob_before']:.2f} to {c['query_logprob_after']:.2f}. Reduced relative to `benchmarks/lm_planted.py` "
              "(1,000 ordinary + 20 planted + 30 honest = 1,050 examples, 3 checkpoints, Kronecker projection, the `contrast` "
              "behaviour as primary): 200 examples with the planted and honest shares kept (4 and 6 of 200, about 1.9% and 2.9%), "
              "one checkpoint (the final one, what Kronfluence attributes), exact LoRA gradients (no projection) for every tool, "
              "and the behaviour both tools can score: the summed NLL of the misaligned answer of each query (lm_planted's "
              "`loss`/`logprob` queries). Ranking: each tool's scores summed over the queries; score = recall@k, k = the number "
              "planted (the share of the planted examples among the top k). gradtrace: `raw`, `cosine`, `ekfac` (empirical "
              "Fisher fitted on the 200 examples, damping 0.1 x mean eigenvalue); Kronfluence 1.0.1 (its own virtualenv, "
              "torch 2.13.0): `identity` and `ekfac` (empirical Fisher, its heuristic damping: the same rule), tracking the "
              "LoRA `lora_A`/`lora_B` layers only (the parameters gradtrace attributes). Seconds: from loading the model to "
              "the scores (featurize or fit, and score), one thread; peak MiB: the subprocess's peak resident memory.\n\n"
              f"Command: `{PLANTED_COMMAND}`. "
              + (f"Machine when this command summarised the jobs (each job is kept in its case folder and reused): "
                 f"{planted['machine']}." if planted.get("machine") else "") + "\n")
    md.append("| tool/method | variant | recall@k | planted ranks | seconds | CPU s | CPU x gradtrace best | peak MiB |")
    md.append("|---|---|---|---|---|---|---|---|")
    for k, v in sorted(planted["entries"].items(), key=lambda kv: -(kv[1].get("score") if kv[1].get("score") is not None else -9)):
        if "error" in v:
            md.append(f"| {k} | error: {_short(v['error'])} | | | | | | |")
        else:
            md.append(f"| {k} | {v['variant']} | {_fmt(v['score'], '.2f')} | {', '.join(str(r) for r in v.get('planted_ranks', []))} | "
                      f"{v['seconds']:.1f} | {_fmt(v.get('cpu_seconds'), '.1f')} | {_fmt(v.get('cpu_seconds_ratio_to_gradtrace_best'), '.2f')} | "
                      f"{v['peak_mib']:.0f} |")
    md.append(_best_line(planted))
    if planted.get("agreement"):
        md.append("\nSame quantity, two tools (Pearson correlation of all query x training-example scores): "
                  + "; ".join(f"{k}: {v:.4f}" for k, v in planted["agreement"].items()) + ".")
    if planted.get("reading"):
        md.append(f"\nReading (written after the run, from the numbers above): {planted['reading']}")


def _lds_tables(md: list[str], lds_r: dict[str, Any], matched: list[tuple[tuple[str, str], tuple[str, str]]]) -> None:
    """The LDS table of one case, its best line, and the same settings side by side."""
    md.append("| tool/method | variant (chosen on dev) | dev LDS | test LDS | seconds | CPU s | CPU x gradtrace best | peak MiB |")
    md.append("|---|---|---|---|---|---|---|---|")
    for k, v in sorted(lds_r["entries"].items(), key=lambda kv: -(kv[1].get("score") or -9)):
        if "error" in v:
            md.append(f"| {k} | error: {_short(v['error'])} | | | | | | |")
        else:
            md.append(f"| {k} | {v['variant']} | {_fmt(v['dev_score'])} | {_fmt(v['score'])} | {v['seconds']:.1f} | "
                      f"{_fmt(v.get('cpu_seconds'), '.1f')} | {_fmt(v.get('cpu_seconds_ratio_to_gradtrace_best'), '.2f')} | {v['peak_mib']:.0f} |")
    md.append(_best_line(lds_r))
    md.append("\nSame settings side by side (test LDS; seconds; CPU seconds), the peers' damping heuristic being "
              "gradtrace's rule (0.1 x mean eigenvalue):\n")
    md.append("| gradtrace | peer | gradtrace LDS | peer LDS | gradtrace s / CPU s | peer s / CPU s |")
    md.append("|---|---|---|---|---|---|")
    for (gk, gv), (pk, pv) in matched:
        g_e, p_e = lds_r["entries"].get(gk, {}), lds_r["entries"].get(pk, {})
        g, p = g_e.get("variants", {}).get(gv), p_e.get("variants", {}).get(pv)
        if g and p:
            gc, pc = g.get("cpu_seconds"), p.get("cpu_seconds")
            md.append(f"| {gk} {gv} | {pk} {pv} | {_fmt(g['test'])} | {_fmt(p['test'])} | {g['seconds']:.1f} / {_fmt(gc, '.1f')} | "
                      f"{p['seconds']:.1f} / {_fmt(pc, '.1f')} |")
    lines = [f"{k}: " + ", ".join(f"{v} {_fmt(x.get('test'))}" for v, x in sorted(e.get("variants", {}).items()))
             for k, e in sorted(lds_r["entries"].items()) if e.get("variants")]
    if lines:
        md.append("\nEvery variant tried (test LDS; the dev LDS and seconds of each are in the JSON):\n")
        md.extend(f"- {_short_list(line)}" for line in lines)


def _short_list(text: str) -> str:
    from html import escape

    return escape(text).replace("|", "\\|")


#: the LM case's same settings: gradtrace's exact-gradient EK-FAC and Kronfluence's (both the empirical Fisher)
LM_MATCHED = [
    (("gradtrace/ekfac", "exact_empirical_all_damping=0.1"), ("kronfluence/ekfac", "empirical_all_damping=heuristic")),
    (("gradtrace/ekfac", "exact_empirical_last_damping=0.1"), ("kronfluence/ekfac", "empirical_last_damping=heuristic")),
    (("gradtrace/raw", "exact_all"), ("kronfluence/identity", "true_all_damping=heuristic")),
    (("gradtrace/raw", "exact_last"), ("kronfluence/identity", "true_last_damping=heuristic")),
    (("gradtrace/ekfac", "exact_empirical_all_damping=0.1"), ("bergson/ekfac", "empirical_all")),
    (("gradtrace/ekfac", "exact_empirical_last_damping=0.1"), ("bergson/ekfac", "empirical_last")),
    (("gradtrace/trackstar", "kron256_last_whitening"), ("bergson/trackstar", "last")),
]


#: (gradtrace method, variant) beside (Kronfluence method, variant) with the same settings
MATCHED = [
    (("gradtrace/ekfac", "empirical_all_damping=0.1"), ("kronfluence/ekfac", "empirical_all_damping=heuristic")),
    (("gradtrace/ekfac", "empirical_last_damping=0.1"), ("kronfluence/ekfac", "empirical_last_damping=heuristic")),
    (("gradtrace/ekfac", "true_last_damping=0.1"), ("kronfluence/ekfac", "true_last_damping=heuristic")),
    (("gradtrace/kfac", "empirical_all_damping=0.1"), ("kronfluence/kfac", "empirical_all_damping=heuristic")),
    (("gradtrace/raw", "exact"), ("kronfluence/identity", "true_all_damping=heuristic")),
]


def _job_cpu(results: dict[str, Any], key: str, variant: str) -> float | None:
    return results.get("digits_lds", {}).get("cpu_seconds", {}).get(key, {}).get(variant)


def _short(err: str) -> str:
    from html import escape

    line = [s for s in err.strip().splitlines() if s.strip()]
    text = (line[-1] if line else err)[:160]
    return escape(text).replace("|", "\\|")


def _best_line(case: dict[str, Any]) -> str:
    g, p = case.get("gradtrace_best"), case.get("peer_best")
    if not g or not p:
        return ""
    cpu = (f", {p['cpu_seconds'] / g['cpu_seconds']:.2f}x its CPU time" if g.get("cpu_seconds") and p.get("cpu_seconds") is not None
           and math.isfinite(p["cpu_seconds"]) else "")
    return (f"\ngradtrace's best: {g['key']} ({g['score']:.3f}, {g['seconds']:.1f} s); the peers' best: {p['key']} "
            f"({p['score']:.3f}, {p['seconds']:.1f} s, {p['seconds'] / g['seconds']:.2f}x gradtrace's wall time{cpu}).")


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--peers", nargs="+", choices=("kronfluence", "dattri", "captum"), default=["kronfluence", "dattri", "captum"],
                    help="the peers of the digits cases; the LM case runs the peers of LM_METHODS among them")
    ap.add_argument("--bergson-python", type=Path, default=None,
                    help="the python of a virtualenv with bergson 2.5.1 (made by the throughput benchmark): adds Bergson to lm_lds")
    ap.add_argument("--fresh", action="store_true", help="rerun jobs whose outputs are kept under benchmarks/.peers/work")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--planted-model", choices=("smollm2", "tiny"), default=PLANTED_MODEL,
                    help="lm_planted's model (tiny: the tiny GPT-2, to check the pipeline)")
    args = ap.parse_args()
    settings = Settings()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()}
    tools = ["gradtrace"] + args.peers
    lm_tools = [t for t in tools if t in LM_METHODS] + (["bergson"] if args.bergson_python else [])
    start = time.perf_counter()
    if "retrain" in args.parts:
        retrain(settings, "dev", args.progress)
        retrain(settings, "test", args.progress)
    if "lm_retrain" in args.parts:
        prepare_lm(settings)
        retrain_lm(settings, "dev", args.progress)
        retrain_lm(settings, "test", args.progress)
    if set(args.parts) <= {"retrain", "lm_retrain"}:
        return
    pythons = tool_pythons(tools) if {"lds", "mislabel", "lm_lds"} & set(args.parts) else {}
    if args.bergson_python:
        found = args.bergson_python.exists()
        pythons["bergson"] = args.bergson_python if found else f"no python at {args.bergson_python}"
    results["install"] = {t: (str(p) if isinstance(p, Path) else {"error": p}) for t, p in pythons.items()}
    if "lds" in args.parts:
        case_dir = prepare_lds(settings)
        jobs = {f"{t}/{m}": _job(pythons, t, m, case_dir, settings, args) for t in tools for m in METHODS[t]["pairwise"]}
        dev, test = retrain(settings, "dev", args.progress), retrain(settings, "test", args.progress)
        entries, _ = evaluate_lds(case_dir, jobs, dev, test)
        results["digits_lds"] = summarise(entries)
    if "mislabel" in args.parts:
        dirs = {f: prepare_mislabel(f, settings) for f in settings.flips}
        jobs_m = {f: {f"{t}/{m}": _job(pythons, t, m, dirs[f], settings, args, DEFAULTS[f"{t}/{m}"]) for t in tools for m in METHODS[t]["self"]}
                  for f in settings.flips}
        mis = summarise(evaluate_mislabel(dirs, jobs_m))
        mis["baseline_final_loss"] = {f"flip_{int(round(f * 100))}": final_loss_baseline(d) for f, d in dirs.items()}
        results["digits_mislabel"] = mis
    if "lm_lds" in args.parts:
        case_dir = prepare_lm(settings)
        jobs = {f"{t}/{m}": _job(pythons, t, m, case_dir, settings, args) for t in lm_tools for m in LM_METHODS[t]}
        dev, test = retrain_lm(settings, "dev", args.progress), retrain_lm(settings, "test", args.progress)
        entries, _ = evaluate_lds(case_dir, jobs, dev, test)
        results["lm_lds"] = summarise(entries)
        results["lm_lds"]["case"] = lm_case_facts(case_dir, settings)
        old_reading = (json.loads(RESULTS.read_text()).get("lm_lds", {}) if RESULTS.exists() else {}).get("reading")
        if old_reading:  # a note on an earlier run's numbers is not carried over to new ones
            results["lm_lds"]["reading_of_previous_run"] = old_reading
    if "lm_planted" in args.parts:
        kron = tool_pythons(["kronfluence"]).get("kronfluence") if "kronfluence" in args.peers else None
        results["lm_planted"] = lm_planted(kron, args.fresh, args.progress, args.planted_model)
        results["lm_planted"]["machine"] = machine()
    done = {k: results[k] for k in ("digits_lds", "digits_mislabel", "lm_lds", "lm_planted", "install") if k in results}
    current = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # another part may have finished meanwhile
    install = {**current.get("install", {}), **done.pop("install", {})}  # the digits cases' tools are kept
    current.update(done)
    current["install"] = install
    current["settings"] = results["settings"]
    current.setdefault("wall_seconds", {}).update({"+".join(args.parts): time.perf_counter() - start})
    current.setdefault("machine", {}).update({"+".join(args.parts): machine()})
    write_section(current)


def _job(pythons: dict[str, Path | str], tool: str, method: str, case_dir: Path, settings: Settings, args: argparse.Namespace,
         only: str | None = None) -> dict[str, Any]:
    if args.progress:
        print(f"[peers] {case_dir.name}: {tool}/{method}", file=sys.stderr, flush=True)
    job = run_job(pythons[tool], tool, method, case_dir, settings.job_timeout_s, args.fresh, only)
    if args.progress:
        print(f"[peers]   -> {'error: ' + job['error'][-200:] if 'error' in job else job['variants']}", file=sys.stderr, flush=True)
    return job


if __name__ == "__main__":
    main()
