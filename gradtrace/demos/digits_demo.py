"""The bundled demo: find flipped labels in digits and explain test predictions.

Trains the digits MLP with 20% of its training labels flipped (5
checkpoints), featurizes it once, ranks training examples by self-influence,
scores how many flipped labels that ranking finds against the final-loss
baseline, and writes an HTML report with proponents and opponents of a few
test images.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import FeaturizeConfig
from ..featurize import featurize
from ..grads.projection import ProjectionConfig
from ..scoring import SCORE_MEANING, Attributor, TopK
from ..task import ClassificationTask
from ..checkpoints import load_checkpoint
from ..report import figures
from ..report.html import esc, image_tag, page, table
from .digits import DigitsConfig, DigitsData, accuracy, found_at, load_digits_data, make_mlp, train_digits, train_label

FRACTIONS = (0.05, 0.1, 0.2, 0.3)


@dataclasses.dataclass
class DemoResult:
    found_self_influence: dict[str, float]
    found_loss: dict[str, float]
    test_accuracy: float
    n_train: int
    n_flipped: int
    report: Path
    store: Path
    proponents: TopK
    opponents: TopK
    query_indices: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "found_self_influence": self.found_self_influence, "found_loss": self.found_loss,
            "test_accuracy": self.test_accuracy, "n_train": self.n_train, "n_flipped": self.n_flipped,
            "report": str(self.report), "store": str(self.store),
        }


def run_digits_demo(out: str | Path, config: DigitsConfig = DigitsConfig(), n_queries: int = 4, k: int = 5, progress: bool = True) -> DemoResult:
    """Run the whole demo into ``out`` (re-running reuses its checkpoints and store)."""
    out = Path(out)
    data = load_digits_data(config)
    ckpt_dir = out / "checkpoints"
    refs = train_digits(data, ckpt_dir, config) if not (ckpt_dir / "done.json").is_file() else _saved_refs(ckpt_dir)
    (ckpt_dir / "done.json").write_text(json.dumps([r.to_dict() for r in refs]))
    task = ClassificationTask()
    store = featurize(
        make_mlp(config.hidden, config.seed), task, refs, (data.x_train, data.y_train), out / "store",
        FeaturizeConfig(projection=ProjectionConfig("factored"), batch_size=512),
        ids=[f"train-{i}" for i in range(len(data.y_train))],
        tags=["flipped" if f else "clean" for f in data.flipped], progress=progress,
    )
    attributor = Attributor(store, make_mlp(config.hidden, config.seed), task)
    si = attributor.self_influence()
    final = make_mlp(config.hidden, config.seed)
    load_checkpoint(final, refs[-1])
    with torch.no_grad():
        loss = nn.functional.cross_entropy(final(data.x_train), data.y_train, reduction="none").numpy()
    queries = list(range(n_queries))
    qf = attributor.query_features((data.x_test[queries], data.y_test[queries]))
    pro = attributor.top_k(qf, k=k, largest=True)
    opp = attributor.top_k(qf, k=k, largest=False)
    pro_cos = attributor.top_k(qf, k=k, largest=True, variant="cosine")
    shown = sorted({int(i) for i in np.concatenate([pro.indices.ravel(), opp.indices.ravel()])})
    breakdown = attributor.breakdown(qf, shown)
    result = DemoResult(
        found_self_influence=found_at(si, data.flipped, FRACTIONS), found_loss=found_at(loss, data.flipped, FRACTIONS),
        test_accuracy=accuracy(final, data.x_test, data.y_test), n_train=len(data.y_train), n_flipped=int(data.flipped.sum()),
        report=out / "report.html", store=Path(store.root), proponents=pro, opponents=opp, query_indices=queries,
    )
    html_text = _report(result, data, si, pro_cos, breakdown, shown, [r.step for r in refs], final)
    result.report.write_text(html_text, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(result.to_dict(), indent=1))
    write_task_file(out, config)
    return result


TASK_FILE = "task.py"


def write_task_file(out: Path, config: DigitsConfig) -> Path:
    """``<out>/task.py``: the demo's task as a ``--task`` target
    (``gradtrace serve <out>/store --task <out>/task.py:make_task``); it
    reuses the demo's checkpoints."""
    from ..fileio import atomic_write_bytes

    text = (
        '"""The digits demo\'s task (written by `gradtrace demo`): for `gradtrace serve` and `gradtrace query --task`."""\n\n'
        "import json\nfrom pathlib import Path\n\nfrom gradtrace.demos.digits import DigitsConfig, make_task as _make_task\n\n"
        f"CONFIG = json.loads({json.dumps(json.dumps(config.to_dict()))})\n\n\n"
        "def make_task():\n    return _make_task(Path(__file__).resolve().parent, DigitsConfig.from_dict(CONFIG))\n"
    )
    path = Path(out) / TASK_FILE
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def _saved_refs(ckpt_dir: Path) -> list:
    from ..checkpoints import CheckpointRef

    return [CheckpointRef.from_dict(d) for d in json.loads((ckpt_dir / "done.json").read_text())]


def _card(data: DigitsData, i: int, score: float | None = None) -> str:
    label = train_label(data, i)
    parts = [image_tag(data.images_train[i], scale=6, vmax=16, alt=f"train-{i}"), f"<div>{esc(f'train-{i}')}</div><div>{esc(label)}</div>"]
    if score is not None:
        cls = "pos" if score >= 0 else "neg"
        parts.append(f'<div class="{cls}">score {esc(f"{score:.4g}")}</div>')
    return f'<div class="card{" flipped" if bool(data.flipped[i]) else ""}">{"".join(parts)}</div>'


def _report(result: DemoResult, data: DigitsData, si: np.ndarray, pro_cos: TopK, breakdown: np.ndarray, shown: list[int], steps: list, final: nn.Module) -> str:
    col = {idx: j for j, idx in enumerate(shown)}
    body = [
        '<p class="note">gradtrace demo: an MLP trained on scikit-learn digits with '
        f"{result.n_flipped} of {result.n_train} training labels flipped, 5 checkpoints, exact TracIn "
        f"(factored gradients of every layer). Test accuracy of the final model: {result.test_accuracy:.3f}.</p>",
        "<h2>Finding the flipped labels</h2>",
        "<p>Training examples ranked by self-influence (sum over checkpoints of lr &times; squared gradient norm), "
        "against ranking by the final model's loss. Share of all flipped labels found when checking the top of each ranking:</p>",
        table(["checked", "self-influence", "final loss (baseline)"],
              [[k, f"{v:.3f}", f"{result.found_loss[k]:.3f}"] for k, v in result.found_self_influence.items()], numeric=(1, 2)),
        "<p>Highest self-influence (pink background: a flipped label):</p><div class=\"cards\">",
        "".join(_card(data, int(i), float(si[i])) for i in np.argsort(-si)[:12]),
        "</div>",
        "<h2>Why did the model predict that?</h2>",
        f"<p class=\"note\"><b>Raw score.</b> {esc(SCORE_MEANING['raw'])}</p>",
        f"<p class=\"note\"><b>Cosine score.</b> {esc(SCORE_MEANING['cosine'])} Use it when the same few examples top every query's list.</p>",
        "<p class=\"note\">Under each list of raw proponents and opponents: each one's contribution at each checkpoint "
        "(influence over training).</p>",
    ]
    with torch.no_grad():
        preds = final(data.x_test[result.query_indices]).argmax(1).tolist()
    for qi, q in enumerate(result.query_indices):
        body.append(f"<h3>test-{q}: label {int(data.y_test[q])}, predicted {preds[qi]}</h3>")
        body.append(image_tag(data.images_test[q], scale=8, vmax=16, alt=f"test-{q}"))
        for title, topk in (("Proponents (raw)", result.proponents), ("Opponents (raw)", result.opponents), ("Proponents (cosine)", pro_cos)):
            listed = [int(i) for i in topk.indices[qi]]
            cards = "".join(_card(data, i, float(topk.scores[qi, r])) for r, i in enumerate(listed))
            body.append(f"<p><b>{esc(title)}</b></p><div class=\"cards\">{cards}</div>")
            if topk.variant == "raw":
                matrix = breakdown[:, qi, [col[i] for i in listed]]
                body.append(figures.embed(figures.contributions(matrix, [f"train-{i}" for i in listed], [f"epoch {s}" for s in steps],
                                                                f"{title}: contribution per checkpoint", height=240)))
    return page("gradtrace: flipped labels in digits", "\n".join(body), figures=True)
