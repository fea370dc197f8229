"""The loop's monitors and stop rules inside a user's own training.

:class:`MonitorSession` holds the monitors, the stop rules and the fixed
inputs (prompts, held-out texts, probe prompts). Call
:meth:`MonitorSession.observe` with the model whenever you want a
measurement: the first call is the reference ("round 0"); each later call
adds a row to :attr:`MonitorSession.rows` and checks the stop rules; stop
training when :attr:`MonitorSession.should_stop` is true.

:class:`LoopMonitorCallback` does this for a Hugging Face ``Trainer``: it
observes before training and every ``every`` steps, and sets
``control.should_training_stop`` when a rule fires.

    session = MonitorSession(tokenizer, prompts=prompts, heldout=heldout, probes=probes,
                             monitors=[HeldoutNLL(margin=0.1), RepresentationDrift()],
                             rules=[StopRule("nll.tail_share", above=0.3)])
    trainer = Trainer(..., callbacks=[LoopMonitorCallback(session, every=50)])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..configbase import positive_int
from ..errors import InputError
from ..lm.embed import Embedder, make_embedder
from .config import HASHING_ANALYZER, LoopGenerationConfig
from .lm import LanguageModel
from .monitors import Monitor, Observation, Row, measure_all
from .stop import StopEvent, StopRule, first_stop

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is in the lm/loop extras
    TrainerCallback = object  # type: ignore[assignment,misc]


class MonitorSession:
    """Monitors and stop rules for any training loop (see the module docstring)."""

    def __init__(
        self, tokenizer: Any, *, prompts: Sequence[str], monitors: Sequence[Monitor], rules: Sequence[StopRule] = (),
        heldout: Sequence[str] = (), probes: Sequence[str] = (), embedder: str | Embedder = "hashed",
        generation: LoopGenerationConfig | None = None, seed: int = 0, max_length: int = 96,
    ):
        if not prompts:
            raise InputError("prompts: give at least one prompt")
        self.tokenizer, self.prompts, self.monitors, self.rules = tokenizer, list(prompts), list(monitors), list(rules)
        self.heldout, self.probes = list(heldout), list(probes)
        self.embedder = make_embedder(embedder, analyzer=HASHING_ANALYZER)
        self.generation = generation or LoopGenerationConfig(n_per_prompt=20, max_new_tokens=48)
        self.seed, self.max_length = seed, max_length
        self.needs = set().union(*(m.needs for m in self.monitors)) if self.monitors else set()
        if "heldout_nll" in self.needs and not self.heldout:
            raise InputError("heldout: the nll monitor needs held-out texts")
        if "probe_hidden" in self.needs and not self.probes:
            raise InputError("probes: the cka monitor needs probe prompts")
        self.rows: list[Row] = []
        self.steps: list[int] = []
        self.stop: StopEvent | None = None
        self._ref: Observation | None = None

    @property
    def should_stop(self) -> bool:
        return self.stop is not None

    def observe(self, model: nn.Module, step: int = 0) -> Row:
        """Measure ``model`` now; returns the new row (``round`` counts calls from 0)."""
        t = len(self.rows)
        lm = LanguageModel(model, self.tokenizer, max_length=self.max_length)
        was_training = model.training
        g = self.generation
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, t]).generate_state(1)[0]))
        try:
            texts = [x for _, x in lm.generate(self.prompts, n_per_prompt=g.n_per_prompt, max_new_tokens=g.max_new_tokens,
                                               generator=gen, temperature=g.temperature, top_p=g.top_p)]
            obs = Observation(
                round=t, generations=texts,
                heldout_nll=lm.nll(self.heldout) if "heldout_nll" in self.needs else None,
                probe_hidden=lm.hidden(self.probes) if "probe_hidden" in self.needs else None,
                embeddings=np.asarray(self.embedder.embed(texts), dtype=np.float64) if "embeddings" in self.needs else None,
            )
            for m in self.monitors:
                obs.extras.update(m.observe(lm))
        finally:
            model.train(was_training)
        if self._ref is None:
            self._ref = obs
        row: Row = {"round": float(t), "step": float(step), **measure_all(self.monitors, obs, self._ref, self.rows)}
        self.rows.append(row)
        self.steps.append(step)
        if self.stop is None:
            self.stop = first_stop(self.rules, self.rows)
        return row


class LoopMonitorCallback(TrainerCallback):  # type: ignore[misc,valid-type]
    """A ``transformers.TrainerCallback`` running a :class:`MonitorSession`
    before training and every ``every`` optimisation steps; it stops the
    Trainer when a stop rule fires."""

    def __init__(self, session: MonitorSession, every: int = 50):
        positive_int(every, "every")
        self.session, self.every = session, every

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if not self.session.rows and model is not None:
            self.session.observe(model, step=state.global_step)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if model is not None and state.global_step % self.every == 0:
            self.session.observe(model, step=state.global_step)
            if self.session.should_stop:
                control.should_training_stop = True
        return control
