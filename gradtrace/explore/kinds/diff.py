"""A behavioural diff (``diff.json``) in the explorer: the zoomable map of the
texts (coloured by model or by cluster, hover shows the text) and the ranked
clusters; clicking a cluster (on the map or in the table) shows its label,
shares, q-value, keywords and texts from A and B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import InputError
from ...report import figures
from ..artefacts import Artefact, NotFound, ServeOptions

DIFF_FILE = "diff.json"


def read_diff(path: Path) -> dict[str, Any]:
    """A ``diff.json`` (as written by :meth:`DiffResult.save` or ``gradtrace diff``), checked for the fields shown."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"serve: cannot read {str(path)!r} as a diff.json: {exc}") from None
    if not isinstance(d, dict) or not isinstance(d.get("clusters"), list) or not isinstance(d.get("points", []), list):
        raise InputError(f"serve: {str(path)!r} is not a diff.json (no 'clusters' list)")
    return d


class DiffArtefact(Artefact):
    kind = "diff"

    def __init__(self, id: str, path: Path, title: str | None = None):
        self.path = path
        self.d = read_diff(path)
        super().__init__(id, title or path.parent.name or path.name)
        self.clusters: list[dict[str, Any]] = [c for c in self.d["clusters"] if isinstance(c, dict)]
        self.alpha = float((self.d.get("config") or {}).get("alpha", 0.05))

    def summary(self) -> str:
        flagged = sum(1 for c in self.clusters if _num(c.get("q_value")) <= self.alpha)
        return f"behavioural diff: {self.d.get('n_a')} texts from A, {self.d.get('n_b')} from B, {flagged} of {len(self.clusters)} clusters flagged"

    def page(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> tuple[str, dict[str, Any]]:
        if name == "" and not path_args:
            return "diff.html", {
                "d": self.d, "alpha": self.alpha, "rows": [self.row(i) for i in range(len(self.clusters))],
                "map": self.map_markup(),
                "intended": self.d.get("intended"), "sources": self._sources(),
            }
        if name == "cluster" and len(path_args) == 1:
            return "diff_cluster.html", {"c": self.cluster(path_args[0])}
        raise NotFound(f"diff has no page {name!r}")

    def map_markup(self, data_base: str | None = None) -> str:
        """The map of the texts, placed on a page (a click loads the point's cluster into the page's panel,
        from ``data_base`` + the cluster number: by default this diff's ``data/textcluster/``);
        the audit's page and a loop round's show their diff with this too."""
        names = {int(c["cluster"]): str(c.get("llm_label") or c.get("label") or "")
                 for c in self.clusters if c.get("level") == "text" and isinstance(c.get("cluster"), int)}
        fig = figures.diff_map(self.d.get("points") or [], names)
        return figures.embed(fig, click="panel", base=data_base or f"/a/{self.id}/data/textcluster/")

    def text_cluster_index(self, cluster: int) -> int:
        """The position of the tested text-level cluster number ``cluster`` (NotFound if none)."""
        i = self.cluster_index("text", cluster)
        if i is None:
            raise NotFound(f"no tested text-level cluster {cluster}")
        return i

    def cluster_index(self, level: Any, cluster: Any) -> int | None:
        """The position of the cluster ``(level, cluster)`` (its page is ``p/cluster/<position>``), or None."""
        return next((i for i, c in enumerate(self.clusters) if c.get("level") == level and c.get("cluster") == cluster), None)

    def data(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> Any:
        if name == "cluster" and len(path_args) == 1:
            return self.cluster(path_args[0])
        if name == "textcluster" and len(path_args) == 1:
            return self.cluster(self.text_cluster_index(path_args[0]))
        raise NotFound(f"diff has no data {name!r}")

    def _sources(self) -> list[str]:
        out = []
        for side in ("a", "b"):
            src = self.d.get(f"source_{side}")
            if isinstance(src, dict):
                out.append(f"{side.upper()}: " + ", ".join(f"{k}={v}" for k, v in src.items()))
        return out

    def row(self, i: int) -> dict[str, Any]:
        """Cluster ``i``'s line in a table of clusters (the diff's page, a loop round's page)."""
        c = self.clusters[i]
        return {"index": i, "rank": c.get("rank"), "level": c.get("level"), "label": c.get("llm_label") or c.get("label"),
                "share_b": _num(c.get("share_b")), "valid_a": c.get("valid_a"), "valid_b": c.get("valid_b"),
                "q_value": _num(c.get("q_value")), "log_odds": _num(c.get("log_odds")),
                "flagged": _num(c.get("q_value")) <= self.alpha}

    def cluster(self, i: int) -> dict[str, Any]:
        """One cluster as shown (and as the page's script receives it)."""
        if not 0 <= i < len(self.clusters):
            raise NotFound(f"no cluster {i}")
        c = self.clusters[i]

        def texts(key: str) -> list[str]:
            return [str(t) for t in (c.get(key) or []) if t is not None]

        return {
            "diff": self.id, "index": i, "rank": c.get("rank"), "level": c.get("level"), "cluster": c.get("cluster"),
            "label": str(c.get("llm_label") or c.get("label") or ""), "keywords": [str(k) for k in c.get("keywords") or []],
            "share_b": _num(c.get("share_b")), "overall_share_b": _num(c.get("overall_share_b")),
            "valid_a": c.get("valid_a"), "valid_b": c.get("valid_b"), "p_value": _num(c.get("p_value")),
            "q_value": _num(c.get("q_value")), "log_odds": _num(c.get("log_odds")), "flagged": _num(c.get("q_value")) <= self.alpha,
            "alpha": self.alpha, "judgement": c.get("judgement"), "judgement_reason": c.get("judgement_reason"),
            "medoids": texts("medoids"), "examples_a": texts("examples_a"), "examples_b": texts("examples_b"),
        }


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


class DiffLoader:
    kind = "diff"

    def detect(self, path: Path) -> bool:
        if path.is_file():
            return path.name == DIFF_FILE
        return path.is_dir() and (path / DIFF_FILE).is_file() and not (path / "loop.json").is_file()

    def load(self, path: Path, options: ServeOptions, new_id: Callable[[str], str]) -> list[Artefact]:
        return [DiffArtefact(new_id(self.kind), path if path.is_file() else path / DIFF_FILE)]
