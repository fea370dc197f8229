"""The self-training loop: train, generate, measure, curate, repeat; stop on a breach.

Round 0 trains the model on the real data (``train.base_steps`` steps). Round
t >= 1 trains on data chosen by the regime from the curated generations of
earlier rounds (and the real data), starting from round t-1's (or round 0's)
weights. After training, the round's model samples on the prompt set; the
monitors compare what it did with round 0; the curation policy turns its
generations into data for the next round; the stop rules read the results
table.

Each round lives in ``<out>/round_NNN/``: ``train.jsonl`` (what it trained
on), ``generations.jsonl``, ``curated.jsonl``, ``checkpoints/step_NNNNNN.pt``
with ``checkpoints.json`` (path, learning rate, step: what ``gradtrace
featurize`` reads), ``model.pt``, ``observation.*``, ``metrics.json`` and a
``DONE`` marker written last. Every random draw comes from a generator seeded
by (seed, round, stage), so an interrupted run resumed with :meth:`resume`
redoes the unfinished round and ends byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..config import dict_differences
from ..data import read_jsonl_objects
from ..errors import ConfigMismatchError, InputError
from ..fileio import atomic_write_bytes, write_jsonl
from ..lm.embed import Embedder, make_embedder
from ..progress import progress_bar
from .config import HASHING_ANALYZER, STOP_TRACE_KEY, LoopConfig
from .curation import Compose, Policy, policy_from_dict
from .lm import LanguageModel, checkpoint_state, diagonal_fisher, ewc_penalty, load_state
from .monitors import Monitor, Observation, Row, build_monitors, measure_all
from .stop import StopEvent, first_stop

CONFIG_FILE = "loop.json"
STOP_FILE = "stop.json"
STAGES = {"train": 0, "generate": 1, "curate": 2, "replay": 3}


def round_dir(out: str | Path, t: int) -> Path:
    return Path(out) / f"round_{t:03d}"


def read_texts(path: str | Path) -> list[str]:
    """``text`` fields of a JSONL file (or lines of a .txt file)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    out.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(f"{str(path)!r} line {i + 1}: expected a JSON object with a 'text' field") from None
        return out
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclasses.dataclass
class LoopResult:
    """The results table (one row per finished round: ``round`` and every
    ``<monitor>.<metric>``), the stop event if a rule fired, where the run is,
    and the stop trace (``stop.json``'s ``attribution``: which rounds' data and
    which examples drove the fired monitor; None when no rule fired or the
    trace is off)."""

    out: Path
    rows: list[Row]
    stop: StopEvent | None
    attribution: dict[str, Any] | None = None

    def series(self, metric: str) -> list[float]:
        if not self.rows or metric not in self.rows[0]:
            raise InputError(f"metric {metric!r} is not in the results table; available: {sorted(self.rows[0]) if self.rows else []}")
        return [r[metric] for r in self.rows]


class SelfTrainingLoop:
    """Runs (or resumes) a loop described by a :class:`LoopConfig` into ``out``.

    ``curation``: a policy ``(records, rng) -> records`` replacing the
    config's; ``classifiers``: ``{name: texts -> booleans}`` for the
    ``attribute`` monitor, added to any regex classifiers of the config;
    ``embedder``: an object with ``embed(texts)``, replacing ``config.embedder``.
    """

    def __init__(
        self, config: LoopConfig, out: str | Path, *, curation: Policy | None = None,
        classifiers: Mapping[str, Callable[[Sequence[str]], Any]] | None = None, embedder: Embedder | None = None,
        progress: bool = True, on_round_end: Callable[[int], None] | None = None,
    ):
        self.config, self.out = config, Path(out)
        self.curation_override, self.extra_classifiers, self.embedder_override = curation, dict(classifiers or {}), embedder
        self.progress, self.on_round_end = progress, on_round_end

    @classmethod
    def resume(cls, out: str | Path, **kwargs: Any) -> "SelfTrainingLoop":
        """The loop saved in ``out`` (its ``loop.json``), to continue with :meth:`run`."""
        path = Path(out) / CONFIG_FILE
        if not path.is_file():
            raise InputError(f"--resume: {str(out)!r} holds no loop run (no {CONFIG_FILE})")
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(LoopConfig.from_dict(raw), out, **kwargs)

    # -- seeds ---------------------------------------------------------------------------------------
    def _seed(self, t: int, stage: str) -> int:
        return int(np.random.SeedSequence([self.config.seed, t, STAGES[stage]]).generate_state(1)[0])

    def _torch_gen(self, t: int, stage: str) -> torch.Generator:
        return torch.Generator().manual_seed(self._seed(t, stage))

    # -- setup ---------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CONFIG_FILE
        mine = self.config.to_dict()
        file_dict = self.config.to_file_dict()
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            trace = old.pop(STOP_TRACE_KEY, None)
            diffs = dict_differences(old, mine)
            if diffs:
                raise ConfigMismatchError(f"the loop run in {str(self.out)!r}", diffs)
            if trace != file_dict[STOP_TRACE_KEY]:  # the stop trace's settings may change: it changes no round
                atomic_write_bytes(path, (json.dumps(file_dict, indent=1) + "\n").encode("utf-8"))
        else:
            atomic_write_bytes(path, (json.dumps(file_dict, indent=1) + "\n").encode("utf-8"))  # key order kept: it fixes the monitor order

    def _monitors(self, embedder: Embedder) -> list[Monitor]:
        return build_monitors(self.config.monitors, embedder, self.extra_classifiers)

    def _curation(self, judge: LanguageModel | None) -> Policy:
        if self.curation_override is not None:
            return self.curation_override
        return Compose([policy_from_dict(c, f"curation[{i}]", judge_lm=judge) for i, c in enumerate(self.config.curation)])

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        """Run every round not yet finished; returns the results table."""
        from .models import build_lm

        cfg = self.config
        self._prepare()
        done = self.finished_rounds()
        for t in range(len(done), cfg.rounds + 1):
            if round_dir(self.out, t).exists():
                shutil.rmtree(round_dir(self.out, t))  # an interrupted round: redo it
        rows = [json.loads((round_dir(self.out, t) / "metrics.json").read_text())["row"] for t in done]
        # Recomputed from the finished rounds, so a kill between a round's end and stop.json changes nothing.
        stop = first_stop(cfg.stop, rows) if rows else None
        if stop is not None and not (self.out / STOP_FILE).is_file():
            self._write_stop(stop, None)
        if stop is not None and cfg.stop_on_breach:
            return self._finish(rows, stop)

        real, heldout = read_texts(cfg.data.train), read_texts(cfg.data.heldout)
        prompts, probes = read_texts(cfg.data.prompts), read_texts(cfg.data.probes)
        if not prompts:
            raise InputError(f"data.prompts: file {cfg.data.prompts!r} has no prompt")
        embedder = self.embedder_override or make_embedder(cfg.embedder, analyzer=HASHING_ANALYZER)
        lm = build_lm(cfg.model)
        monitors = self._monitors(embedder)
        needs = set().union(*(m.needs for m in monitors)) if monitors else set()
        base_state = None
        if done:
            base_state = torch.load(round_dir(self.out, 0) / "model.pt", weights_only=True)
        ref = Observation.load(round_dir(self.out, 0)) if done else None
        policy: Policy | None = None

        for t in range(len(done), cfg.rounds + 1):
            folder = round_dir(self.out, t)
            tmp = folder.with_name(folder.name + ".partial")
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "checkpoints").mkdir(parents=True)
            if t == 0:
                train_records = [{"id": f"real-{i}", "text": x, "source": "real", "round": -1} for i, x in enumerate(real)]
                steps, lr = cfg.train.base_steps, cfg.train.base_lr or cfg.train.lr
                regulariser = None
            else:
                prev = torch.load(round_dir(self.out, 0 if cfg.train.init == "base" else t - 1) / "model.pt", weights_only=True)
                load_state(lm.model, prev)
                train_records = self._training_set(t, real)
                steps, lr = cfg.train.steps, cfg.train.lr
                regulariser = self._ewc(lm, base_state) if cfg.train.ewc > 0 else None
            write_jsonl(tmp / "train.jsonl", train_records)
            ckpts: list[dict[str, Any]] = []
            first_step = self.global_step(t)

            def save(step: int, rate: float, t: int = t, tmp: Path = tmp, ckpts: list = ckpts, steps: int = steps) -> None:
                if step % cfg.train.checkpoint_every == 0 or step == steps:
                    g = first_step + step
                    rel = f"checkpoints/step_{g:06d}.pt"
                    torch.save(checkpoint_state(lm), tmp / rel)
                    ckpts.append({"path": f"{round_dir('.', t).name}/{rel}", "lr": rate, "step": g})

            with progress_bar(f"round {t}: train", steps, self.progress) as bar:
                losses = lm.train([r["text"] for r in train_records], steps=steps, batch_size=cfg.train.batch_size, lr=lr,
                                  generator=self._torch_gen(t, "train"), regulariser=regulariser, on_step=save, bar=bar,
                                  schedule=cfg.train.schedule) if steps else []
            (tmp / "checkpoints.json").write_text(json.dumps(ckpts, indent=1) + "\n", encoding="utf-8")
            state = checkpoint_state(lm)
            torch.save(state, tmp / "model.pt")
            if t == 0:
                base_state = state
                if cfg.train.ewc > 0:
                    n = min(cfg.train.fisher_examples, len(real))
                    torch.save(diagonal_fisher(lm, real[:n]), tmp / "fisher.pt")

            obs, records = self._observe(lm, t, prompts, heldout, probes, embedder, needs, monitors)
            obs.save(tmp)
            write_jsonl(tmp / "generations.jsonl", records)
            if ref is None:
                ref = obs
            row: Row = {"round": float(t), **measure_all(monitors, obs, ref, rows, out_dir=tmp)}
            if policy is None:
                policy = self._curation(self._judge(base_state))
            curated = list(policy([dict(r) for r in records], np.random.default_rng(self._seed(t, "curate"))))
            write_jsonl(tmp / "curated.jsonl", curated)
            row["curated.kept_share"] = len(curated) / max(len(records), 1)
            row["train.final_loss"] = float(np.mean(losses[-10:])) if losses else float("nan")
            rows.append(row)
            (tmp / "metrics.json").write_text(json.dumps({"round": t, "row": row, "train_losses": losses}, indent=1) + "\n", encoding="utf-8")
            (tmp / "DONE").write_text("ok\n")
            os.replace(tmp, folder)
            if self.on_round_end is not None:
                self.on_round_end(t)
            event = first_stop(cfg.stop, rows)
            if event is not None and stop is None:
                stop = event
                self._write_stop(event, None)
            self._dashboard(rows, stop)
            if stop is not None and cfg.stop_on_breach:
                break
        return self._finish(rows, stop)

    def _finish(self, rows: list[Row], stop: StopEvent | None) -> LoopResult:
        """The stop trace (when a rule fired and it is enabled), ``stop.json`` and the dashboard with it, the result."""
        attribution = None
        if stop is not None and self.config.stop_trace.enabled:
            from .trace import trace_stop

            attribution = trace_stop(self.config, self.out, stop, self.extra_classifiers, progress=self.progress)
            if not attribution["traced"]:
                # a trace made earlier (with a classifier passed from Python, say) is kept when this call cannot rebuild it
                old = json.loads((self.out / STOP_FILE).read_text(encoding="utf-8")).get("attribution") if (self.out / STOP_FILE).is_file() else None
                if old and old.get("traced") and old.get("metric") == stop.metric and old.get("stop_round") == stop.round:
                    attribution = old
        if stop is not None:
            self._write_stop(stop, attribution)
        self._dashboard(rows, stop, attribution)
        return LoopResult(self.out, rows, stop, attribution)

    def _write_stop(self, stop: StopEvent, attribution: dict[str, Any] | None) -> None:
        d = stop.to_dict()
        if attribution is not None:
            d["attribution"] = attribution
        atomic_write_bytes(self.out / STOP_FILE, (json.dumps(d, indent=1, allow_nan=False) + "\n").encode("utf-8"))

    def finished_rounds(self) -> list[int]:
        """Rounds 0..k-1 whose folders carry a DONE marker (a contiguous prefix)."""
        out = []
        while (round_dir(self.out, len(out)) / "DONE").is_file():
            out.append(len(out))
        return out

    def global_step(self, t: int) -> int:
        """The global step before round ``t``'s first step (checkpoint steps count from it)."""
        return 0 if t == 0 else self.config.train.base_steps + (t - 1) * self.config.train.steps

    def _judge(self, base_state: Any) -> LanguageModel | None:
        if not any(c.get("kind") == "judge" for c in self.config.curation):
            return None
        from .models import build_lm

        judge = build_lm(self.config.model)
        load_state(judge.model, base_state)
        return judge

    def _ewc(self, lm: LanguageModel, base_state: Mapping[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
        fisher = torch.load(round_dir(self.out, 0) / "fisher.pt", weights_only=True)
        named = dict(lm.model.named_parameters())
        anchor = {n: base_state[n].detach().clone() for n in fisher if n in named and n in base_state}
        return ewc_penalty(anchor, {n: fisher[n] for n in anchor}, self.config.train.ewc)

    def _training_set(self, t: int, real: list[str]) -> list[dict[str, Any]]:
        """Round t's training records under the data regime."""
        cfg = self.config.train
        last = read_jsonl_objects(round_dir(self.out, t - 1) / "curated.jsonl")
        reals = [{"id": f"real-{i}", "text": x, "source": "real", "round": -1} for i, x in enumerate(real)]
        if cfg.regime == "replace":
            out = last
        elif cfg.regime == "accumulate":
            out = reals + [r for s in range(t) for r in read_jsonl_objects(round_dir(self.out, s) / "curated.jsonl")]
        else:
            n_real = int(round(cfg.replay_fraction / (1 - cfg.replay_fraction) * len(last)))
            rng = np.random.default_rng(self._seed(t, "replay"))
            pick = rng.choice(len(reals), size=min(n_real, len(reals)), replace=False)
            out = last + [reals[i] for i in sorted(pick.tolist())]
        if not out:
            raise InputError(f"round {t}: the training set is empty (curation kept no generation of round {t - 1})")
        return out

    def _observe(self, lm: LanguageModel, t: int, prompts: list[str], heldout: list[str], probes: list[str],
                 embedder: Embedder, needs: set[str], monitors: Sequence[Monitor] = ()) -> tuple[Observation, list[dict[str, Any]]]:
        g = self.config.generation
        samples = lm.generate(prompts, n_per_prompt=g.n_per_prompt, max_new_tokens=g.max_new_tokens,
                              generator=self._torch_gen(t, "generate"), temperature=g.temperature, top_p=g.top_p)
        records = [{"id": f"r{t}-{j}", "text": text, "prompt": prompts[i], "round": t, "source": "generated"} for j, (i, text) in enumerate(samples)]
        texts = [r["text"] for r in records]
        obs = Observation(
            round=t, generations=texts,
            heldout_nll=lm.nll(heldout) if "heldout_nll" in needs else None,
            probe_hidden=lm.hidden(probes) if "probe_hidden" in needs else None,
            embeddings=np.asarray(embedder.embed(texts), dtype=np.float64) if "embeddings" in needs else None,
        )
        for m in monitors:
            obs.extras.update(m.observe(lm))
        return obs, records

    def _dashboard(self, rows: list[Row], stop: StopEvent | None, attribution: dict[str, Any] | None = None) -> None:
        from .dashboard import write_dashboard

        write_dashboard(self.out, rows, stop, title=f"self-training loop: {self.out.name}", rules=self.config.stop, attribution=attribution)
