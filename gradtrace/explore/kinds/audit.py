"""An audit folder (``gradtrace audit``'s OUT) in the explorer: its diff's map
when the folder holds the diff, and per behaviour its label, shares of A's
and B's texts with the q-value, B's texts that show it, its top training
examples (text, score, contribution per checkpoint as a figure) and the
verification (B's share before and after removing the top-K proponents and
K random examples, with 95% intervals).

Reads the folder as :func:`gradtrace.audit.run.run_audit` writes it:
``audit.json`` (the format of ``_assemble`` there), ``samples_b.jsonl`` (the
lines ``b_texts`` points at) and the diff: ``diff.json`` in the folder if
there is one, else the cached diff stage ``stages/diff-<key>.json`` that
matches ``audit.json`` (its text counts, cluster count and embedder; the
newest if several do). The diff is served as an artefact of its own
(``<audit id>.diff``) that the audit's pages link to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from ...data import read_jsonl_objects
from ...errors import GradtraceError, InputError
from ...report import figures
from ..artefacts import Artefact, NotFound, ServeOptions
from .diff import DIFF_FILE, DiffArtefact

AUDIT_FILE = "audit.json"
MAX_TEXTS = 100
PANEL_PROPONENTS = 5
SHARE_KEYS = ("count", "n", "share", "ci95")


def read_audit(path: Path) -> dict[str, Any]:
    """An ``audit.json``, checked for the fields shown (errors name the file and the field)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"serve: cannot read {str(path)!r} as an audit.json: {exc}") from None

    def bad(what: str) -> InputError:
        return InputError(f"serve: {str(path)!r} is not an audit.json written by gradtrace audit: {what}")

    if not isinstance(d, dict) or not isinstance(d.get("behaviours"), list):
        raise bad("no 'behaviours' list")
    for key in ("model_a", "run", "checkpoints", "n_texts", "diff"):
        if key not in d:
            raise bad(f"no {key!r}")
    for i, b in enumerate(d["behaviours"]):
        if not isinstance(b, dict):
            raise bad(f"behaviours[{i}] is not an object")
        for key in ("label", "skew", "q_value", "share_a", "share_b", "members", "b_texts"):
            if key not in b:
                raise bad(f"behaviours[{i}] has no {key!r}")
        for key in ("share_a", "share_b"):
            if not isinstance(b[key], dict) or any(k not in b[key] for k in SHARE_KEYS):
                raise bad(f"behaviours[{i}].{key} needs {', '.join(SHARE_KEYS)}")
        for j, p in enumerate(b.get("proponents") or []):
            if not isinstance(p, dict) or any(k not in p for k in ("rank", "id", "score", "per_checkpoint", "example")):
                raise bad(f"behaviours[{i}].proponents[{j}] needs rank, id, score, per_checkpoint and example")
        v = b.get("verification")
        if v is not None and (not isinstance(v, dict) or any(k not in v for k in ("k", "share_b_before", "topk", "random"))):
            raise bad(f"behaviours[{i}].verification needs k, share_b_before, topk and random")
    return d


def find_diff(folder: Path, audit: dict[str, Any]) -> Path | None:
    """The diff of the audit in ``folder`` (see the module docstring), or None."""
    if (folder / DIFF_FILE).is_file():
        return folder / DIFF_FILE
    n_texts, summary = audit.get("n_texts") or {}, audit.get("diff") or {}
    matches = []
    for path in (folder / "stages").glob("diff-*.json"):
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if (isinstance(d, dict) and isinstance(d.get("clusters"), list) and d.get("n_a") == n_texts.get("a")
                and d.get("n_b") == n_texts.get("b") and len(d["clusters"]) == summary.get("clusters")
                and d.get("embedder") == summary.get("embedder")):
            matches.append(path)
    return max(matches, key=lambda p: (p.stat().st_mtime, p.name)) if matches else None


def _share(s: dict[str, Any]) -> dict[str, Any]:
    lo, hi = (s.get("ci95") or [None, None])[:2]
    return {"share": s.get("share"), "count": s.get("count"), "n": s.get("n"), "low": lo, "high": hi}


class AuditArtefact(Artefact):
    kind = "audit"

    def __init__(self, id: str, folder: Path):
        from ...audit.report import example_text

        self.folder = folder
        self.d = read_audit(folder / AUDIT_FILE)
        super().__init__(id, folder.name or str(folder))
        self.behaviours: list[dict[str, Any]] = self.d["behaviours"]
        self.example_text = example_text
        diff_path = find_diff(folder, self.d)
        self.diff = DiffArtefact(f"{id}.diff", diff_path, f"{self.title}, diff of the audit") if diff_path is not None else None
        self.samples_b: list[dict[str, Any]] | None = None
        self.samples_error: str | None = None
        samples = folder / "samples_b.jsonl"
        if samples.is_file():
            try:
                self.samples_b = read_jsonl_objects(samples, "samples_b.jsonl")
            except GradtraceError as exc:
                self.samples_error = str(exc)

    def summary(self) -> str:
        traced = sum(1 for b in self.behaviours if b.get("proponents"))
        verified = sum(1 for b in self.behaviours if b.get("verification"))
        return f"audit: {len(self.behaviours)} behaviours, {traced} traced, {verified} verified by retraining"

    def page(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> tuple[str, dict[str, Any]]:
        if name == "" and not path_args:
            rows = []
            for i, b in enumerate(self.behaviours):
                v = b.get("verification") or {}
                rows.append({"index": i, "label": str(b["label"]), "skew": b["skew"], "q_value": b["q_value"],
                             "share_a": _share(b["share_a"]), "share_b": _share(b["share_b"]),
                             "n_proponents": len(b.get("proponents") or []),
                             "topk_after": (v.get("topk") or {}).get("share_b_after", {}).get("share") if v else None,
                             "random_after": (v.get("random") or {}).get("share_b_after", {}).get("share") if v else None})
            return "audit.html", {"d": self.d, "rows": rows,
                                  "map": self.diff.map_markup(f"/a/{self.id}/data/textcluster/") if self.diff is not None else None,
                                  "diff": self.diff.id if self.diff is not None else None}
        if name == "behaviour" and len(path_args) == 1:
            return "audit_behaviour.html", self.behaviour(path_args[0])
        raise NotFound(f"audit has no page {name!r}")

    def data(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> Any:
        """``textcluster/<n>``: the diff's text-level cluster ``n`` (what a click on the map loads), with the behaviours
        it belongs to: each one's first proponents and its verification, and its page."""
        if name == "textcluster" and len(path_args) == 1 and self.diff is not None:
            c = self.diff.cluster(self.diff.text_cluster_index(path_args[0]))
            c["behaviours"] = [self.panel_behaviour(i) for i, b in enumerate(self.behaviours)
                               if any(isinstance(m, dict) and m.get("level") == "text" and m.get("cluster") == path_args[0]
                                      for m in b["members"])]
            return c
        raise NotFound(f"audit has no data {name!r}")

    def panel_behaviour(self, i: int) -> dict[str, Any]:
        """Behaviour ``i`` as the map's panel shows it: label, its first proponents (rank, id, score) and B's share
        before and after the verification's removals."""
        b = self.behaviours[i]
        v = b.get("verification")
        return {"audit": self.id, "index": i, "label": str(b["label"]), "skew": b["skew"], "q_value": b["q_value"],
                "share_a": _share(b["share_a"]), "share_b": _share(b["share_b"]),
                "proponents": [{"rank": p["rank"], "id": str(p["id"]), "score": p["score"]} for p in (b.get("proponents") or [])[:PANEL_PROPONENTS]],
                "verification": None if not v else {
                    "k": v["k"], "before": _share(v["share_b_before"])["share"],
                    "topk": _share(v["topk"]["share_b_after"])["share"], "random": _share(v["random"]["share_b_after"])["share"],
                    "topk_better": v.get("topk_reduces_more_than_random")}}

    def behaviour(self, i: int) -> dict[str, Any]:
        """One behaviour as its page shows it."""
        if not 0 <= i < len(self.behaviours):
            raise NotFound(f"no behaviour {i}")
        b = self.behaviours[i]
        members = [{**m, "diff_index": self.diff.cluster_index(m.get("level"), m.get("cluster")) if self.diff is not None else None}
                   for m in b["members"] if isinstance(m, dict)]
        positions = [int(j) for j in b["b_texts"] if isinstance(j, int)]
        texts = None
        if self.samples_b is not None:
            texts = [{"line": j, "prompt": str(self.samples_b[j].get("prompt", "")), "text": str(self.samples_b[j].get("text", ""))}
                     for j in positions[:MAX_TEXTS] if 0 <= j < len(self.samples_b)]
        proponents = []
        for p in b.get("proponents") or []:
            steps = list(p["per_checkpoint"])
            values = [float(p["per_checkpoint"][s]) for s in steps]
            fig = figures.per_checkpoint(values, [f"step {s}" for s in steps], f"#{p['rank']} {p['id']}: contribution per checkpoint",
                                         height=200)
            ex = p["example"] if isinstance(p["example"], dict) else {}
            proponents.append({"rank": p["rank"], "id": str(p["id"]), "score": p["score"], "text": self.example_text(ex),
                               "figure": figures.embed(fig)})
        v = b.get("verification")
        verification = None
        if v:
            arms = []
            for arm, what in (("retrain_all", "nothing (retrained on all the data)"), ("topk", f"top {v['k']} proponents"),
                              ("random", f"{v['k']} random examples")):
                a = v.get(arm)
                if not isinstance(a, dict):  # audits made before the retrain_all arm have none
                    continue
                arms.append({"what": what, "share": _share(a["share_b_after"]), "within": a.get("within_base_ci95"),
                             "p_value": a.get("p_value_vs_before"), "still_flagged": a.get("rediff_still_flagged"),
                             "removed": [str(x) for x in a.get("removed_ids") or []],
                             "moved": [str(o.get("label")) for o in (a.get("other_behaviours") or {}).values() if o.get("moved")]})
            verification = {"k": v["k"], "before": _share(v["share_b_before"]), "share_a": _share(v.get("share_a") or b["share_a"]),
                            "arms": arms, "topk_better": v.get("topk_reduces_more_than_random")}
        return {"i": i, "b": b, "label": str(b["label"]), "share_a": _share(b["share_a"]), "share_b": _share(b["share_b"]),
                "members": members, "diff": self.diff.id if self.diff is not None else None, "texts": texts,
                "n_texts": len(positions), "samples_error": self.samples_error, "queries": (b.get("target") or {}).get("queries") or [],
                "target": (b.get("target") or {}).get("behaviour"),
                "influence_share": b.get("influence_share_top_k"), "proponents": proponents, "verification": verification,
                "n_behaviours": len(self.behaviours)}


class AuditLoader:
    kind = "audit"

    def detect(self, path: Path) -> bool:
        if path.is_file():
            return path.name == AUDIT_FILE
        return path.is_dir() and (path / AUDIT_FILE).is_file()

    def load(self, path: Path, options: ServeOptions, new_id: Callable[[str], str]) -> list[Artefact]:
        audit = AuditArtefact(new_id(self.kind), path.parent if path.is_file() else path)
        return [audit] + ([audit.diff] if audit.diff is not None else [])
