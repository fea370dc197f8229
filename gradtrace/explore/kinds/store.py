"""A gradient store in the explorer: the training set (search, sort by
self-influence, one page per example) and queries (proponents, opponents,
their per-checkpoint contributions, the cumulative-influence curve).

What an example looks like and how to compute a query come from the store's
task: a TaskSpec (``gradtrace serve STORE --task file.py:make_task``), or the
Hugging Face spec saved beside a store made with ``--hf-model``
(``hf_spec.json``). Without either, the training set shows ids, tags and
self-influence only.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...errors import GradtraceError, InputError
from ...report import figures
from ...report.html import grey_image_png
from ...spec import ExampleView
from ...store import GradientStore
from ..artefacts import Artefact, BadRequest, NotFound, ServeOptions

PAGE_SIZE = 50
SORTS = ("self-influence", "-self-influence", "index")
MAX_TEXT = 4000


class _Task:
    """What the store's task gives the explorer: views of examples, the query
    items to pick from, the behaviours, and how to build an attributor."""

    kind = "none"
    free_text = False  # queries can be typed (LM prompt/completion)

    def train_view(self, i: int) -> ExampleView | None:
        return None

    def query_items(self) -> list[str]:
        return []

    def query_view(self, i: int) -> ExampleView | None:
        return None

    def behaviours(self) -> list[str]:
        return []

    def query(self, item: int | None, fields: dict[str, str], behaviour: str) -> tuple[Any, Any, ExampleView]:
        raise BadRequest("this store was opened without its task: start serve with --task file.py:make_task "
                         "(or use a store made with --hf-model) to compute queries")

    def attributor(self, store: GradientStore) -> Any:
        raise BadRequest("this store was opened without its task; queries need --task")


class _SpecTask(_Task):
    """A :class:`~gradtrace.spec.TaskSpec` (``--task``)."""

    kind = "task"

    def __init__(self, spec: Any, n_train: int):
        from ...data import as_source

        self.spec = spec
        n = len(as_source(spec.train, collate=getattr(spec.task, "collate", None), what="the TaskSpec's train"))
        if n != n_train:
            raise InputError(f"--task: the TaskSpec's training set has {n} examples; the store has {n_train}: not the store's task")
        self.n_queries = 0
        if spec.queries is not None:
            self.n_queries = len(as_source(spec.queries, collate=getattr(spec.task, "collate", None), what="the TaskSpec's queries"))

    def train_view(self, i: int) -> ExampleView | None:
        if self.spec.train_view is not None:
            return self.spec.train_view(i)
        return ExampleView(text=_summary(self.spec.train, i))

    def query_items(self) -> list[str]:
        if self.spec.query_ids is not None:
            return [str(q) for q in self.spec.query_ids][: self.n_queries]
        return [f"q{i}" for i in range(self.n_queries)]

    def query_view(self, i: int) -> ExampleView | None:
        if self.spec.query_view is not None:
            return self.spec.query_view(i)
        return ExampleView(text=_summary(self.spec.queries, i))

    def behaviours(self) -> list[str]:
        from ...task import ClassificationTask

        out = ["task" if self.spec.behaviour is not None else "loss"]
        if isinstance(self.spec.task, ClassificationTask):
            out += [b for b in ("loss", "margin") if b not in out]
        return out

    def behaviour(self, name: str) -> Any:
        from ...task import LogitMarginBehaviour, LossBehaviour

        if name not in self.behaviours():
            raise BadRequest(f"behaviour must be one of {', '.join(self.behaviours())}; got {name!r}")
        if name == "task":
            return self.spec.behaviour
        return LossBehaviour(self.spec.task) if name == "loss" else LogitMarginBehaviour()

    def query(self, item: int | None, fields: dict[str, str], behaviour: str) -> tuple[Any, Any, ExampleView]:
        from ...data import take

        if item is None or not 0 <= item < self.n_queries:
            raise BadRequest(f"pick a query: an item in [0, {self.n_queries})")
        return take(self.spec.queries, [item]), self.behaviour(behaviour), self.query_view(item) or ExampleView()

    def attributor(self, store: GradientStore) -> Any:
        from ...scoring import Attributor

        return Attributor(store, self.spec.model(), self.spec.task, checkpoint_loader=self.spec.checkpoint_loader)

    def top_of_behaviour(self, limit: int) -> str:
        return self.behaviours()[0]

    def all_queries(self, limit: int) -> tuple[Any, Any, list[int]]:
        from ...data import head

        n = min(limit, self.n_queries)
        return head(self.spec.queries, n, "max_queries"), self.spec.behaviour, list(range(n))


class _HFTask(_Task):
    """A store made with ``--hf-model`` (its ``hf_spec.json``)."""

    kind = "hf"
    free_text = True

    def __init__(self, root: Path, n_train: int, queries: str | None):
        from ...models.hf_spec import HFSpec, read_jsonl

        self.spec = HFSpec.saved(root)
        self.train: list[Any] | None = None
        if self.spec.data is not None and Path(self.spec.data).is_file():
            self.train = read_jsonl(self.spec.data, "the store's --data")[0]
            if len(self.train) != n_train:
                raise InputError(f"the store's --data file {self.spec.data!r} holds {len(self.train)} examples; the store has {n_train}")
        self.queries: list[dict[str, Any]] = []
        self.query_ids: list[str] = []
        if queries is not None:
            examples, ids, _ = read_jsonl(queries, "--queries")
            self.queries, self.query_ids = examples, ids or [f"q{i}" for i in range(len(examples))]
        self._model: Any = None

    def train_view(self, i: int) -> ExampleView | None:
        from ...report.lm_report import example_text

        if self.train is None:
            return ExampleView(text="(training text not available: the store's --data file has moved)")
        return ExampleView(text=example_text(self.train[i]))

    def query_items(self) -> list[str]:
        return list(self.query_ids)

    def query_view(self, i: int) -> ExampleView | None:
        from ...report.lm_report import example_text

        return ExampleView(text=example_text(self.queries[i]))

    def behaviours(self) -> list[str]:
        from ...models.hf import BEHAVIOURS

        return list(BEHAVIOURS)

    def query(self, item: int | None, fields: dict[str, str], behaviour: str) -> tuple[Any, Any, ExampleView]:
        from ...models.hf import PreferenceMarginBehaviour, behaviour_by_name
        from ...report.lm_report import example_text

        if behaviour not in self.behaviours():
            raise BadRequest(f"behaviour must be one of {', '.join(self.behaviours())}; got {behaviour!r}")
        b = behaviour_by_name(behaviour)
        pair = isinstance(b, PreferenceMarginBehaviour)
        if item is not None:
            if not 0 <= item < len(self.queries):
                raise BadRequest(f"pick a query: an item in [0, {len(self.queries)})")
            example = self.queries[item]
        else:
            keys = ("prompt", "chosen", "rejected") if pair else ("prompt", "completion")
            example = {key: fields.get(key, "") for key in keys}
            if not example["prompt"] or not all(example[key] for key in keys[1:]):
                raise BadRequest(f"behaviour {behaviour} needs {', '.join(keys)}: type them or pick a query")
        needed = ("chosen", "rejected") if pair else ("completion",)
        if "messages" not in example and not all(isinstance(example.get(key), str) for key in needed):
            raise BadRequest(f"behaviour {behaviour} needs a query with {', '.join(needed)}")
        return [example], b, ExampleView(text=example_text(example))

    def attributor(self, store: GradientStore) -> Any:
        from ...models.hf_checkpoints import load_hf_checkpoint
        from ...scoring import Attributor

        model, task = self.spec.load()
        return Attributor(store, model, task, checkpoint_loader=load_hf_checkpoint)

    def all_queries(self, limit: int) -> tuple[Any, Any, list[int]]:
        """The first ``limit`` queries of ``--queries``, with the behaviour
        their fields allow (margin for preference pairs, else logprob)."""
        from ...models.hf import behaviour_by_name

        n = min(limit, len(self.queries))
        pairs = n > 0 and all("chosen" in q and "rejected" in q for q in self.queries[:n])
        return self.queries[:n], behaviour_by_name("margin" if pairs else "logprob"), list(range(n))

    def top_of_behaviour(self, limit: int) -> str:
        n = min(limit, len(self.queries))
        return "margin" if n > 0 and all("chosen" in q and "rejected" in q for q in self.queries[:n]) else "logprob"


def _summary(data: Any, i: int) -> str:
    """An example without a view: its tensors' shapes and (short) values."""
    from ...data import take

    example = take(data, [i])
    parts = example if isinstance(example, tuple) else (example,)
    out = []
    for t in parts:
        values = getattr(t, "reshape", None)
        if values is not None and hasattr(t, "shape"):
            flat = t.reshape(-1)
            shown = ", ".join(f"{float(v):.4g}" for v in flat[:16])
            out.append(f"tensor {tuple(t.shape[1:])}: [{shown}{', ...' if flat.numel() > 16 else ''}]")
        else:
            out.append(repr(t)[:MAX_TEXT])
    return "\n".join(out)


class StoreArtefact(Artefact):
    kind = "store"

    def __init__(self, id: str, path: Path, options: ServeOptions, spec: Any = None):
        self.store = GradientStore.open(path)
        super().__init__(id, path.name if path.name != "store" else f"{path.parent.name}/{path.name}")
        self.options = options
        self.ckpt_labels = [f"step {r.step}" if r.step is not None else f"checkpoint {c}" for c, r in enumerate(self.store.checkpoints)]
        if (path / "hf_spec.json").is_file():
            self.task: _Task = _HFTask(path, self.store.n_examples, options.queries)
        elif spec is not None:
            self.task = _SpecTask(spec, self.store.n_examples)
        else:
            self.task = _Task()
        self._lock = threading.RLock()
        self._si: np.ndarray | None = None
        self._si_by_ckpt: np.ndarray | None = None
        self._texts: list[str] | None = None
        self._attributor: Any = None
        self._results: collections.OrderedDict[tuple, dict[str, Any]] = collections.OrderedDict()
        self._top_of: dict[int, list[dict[str, Any]]] | None = None
        self._asked: list[dict[str, Any]] = []
        self._top_of_error: str | None = None

    # -- cached data ---------------------------------------------------------------------------------
    def summary(self) -> str:
        s = self.store
        task = {"task": "with its task (--task)", "hf": "a Hugging Face run", "none": "without its task"}[self.task.kind]
        norms = "" if s.has_exact_norms else "; self-influence from projected gradients (featurized without exact norms)"
        return f"gradient store: {s.n_examples} examples, {len(s.checkpoints)} checkpoints, {task}{norms}"

    def self_influence(self) -> tuple[np.ndarray, np.ndarray]:
        from ...scoring import self_influence_by_checkpoint

        with self._lock:
            if self._si is None:
                by = self_influence_by_checkpoint(self.store) if self.store.has_exact_norms else self._projected_self_influence()
                total = np.zeros(by.shape[1])
                for row in by:
                    total += row
                self._si_by_ckpt, self._si = by, total
            return self._si, self._si_by_ckpt  # type: ignore[return-value]

    def _projected_self_influence(self) -> np.ndarray:
        """``lr_c * |P g_c(z)|^2`` per checkpoint: the ranking of a store
        featurized without exact norms (its projected gradient norms)."""
        s = self.store
        out = np.zeros((len(s.learning_rates), s.n_examples), dtype=np.float64)
        for a, b in s.shard_ranges():
            for c, lr in enumerate(s.learning_rates):
                out[c, a:b] = lr * s.norms(c, a, b)[:, 0] ** 2
        out[:, s.skipped_indices] = 0.0
        return out

    def texts(self) -> list[str]:
        """Searchable text of every example: caption and text of its view."""
        with self._lock:
            if self._texts is None:
                out = []
                for i in range(self.store.n_examples):
                    v = self.task.train_view(i)
                    out.append("" if v is None else f"{v.caption}\n{v.text or ''}")
                self._texts = out
            return self._texts

    def view(self, i: int) -> dict[str, Any]:
        """An example for a template: id, tag, caption, text, image (data URI)."""
        v = self.task.train_view(i) or ExampleView()
        return _view_dict(v) | {"index": i, "id": self.store.ids[i], "tag": self.store.tags[i]}

    def attributor(self) -> Any:
        with self._lock:
            if self._attributor is None:
                self._attributor = self.task.attributor(self.store)
            return self._attributor

    def methods(self) -> list[str]:
        from ...cli import PYTHON_ONLY_METHODS
        from ...scoring import available_methods, get_method

        out = []
        for name in available_methods():
            if name in PYTHON_ONLY_METHODS:
                continue
            try:
                get_method(name).check(self.store)
            except GradtraceError:  # this store cannot serve it (kind, missing or stale factors, ...)
                continue
            out.append(name)
        return out

    # -- pages ---------------------------------------------------------------------------------------
    def page(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> tuple[str, dict[str, Any]]:
        if name in ("", "examples") and not path_args:
            return "store_examples.html", self._examples_page(args)
        if name == "example" and len(path_args) == 1:
            return "store_example.html", self._example_page(path_args[0])
        if name == "query" and not path_args:
            return "store_query.html", self._query_page(args)
        raise NotFound(f"store has no page {name!r}")

    def _examples_page(self, args: dict[str, str]) -> dict[str, Any]:
        si, _ = self.self_influence()
        q = args.get("q", "").strip()
        sort = args.get("sort", "-self-influence")
        if sort not in SORTS:
            raise BadRequest(f"sort must be one of {', '.join(SORTS)}; got {sort!r}")
        page = _int_arg(args, "page", 0)
        ids, tags = self.store.ids, self.store.tags
        idx = np.arange(self.store.n_examples)
        if q:
            needle = q.casefold()
            texts = self.texts()
            idx = np.array([i for i in idx if needle in str(ids[i]).casefold() or needle in str(tags[i]).casefold()
                            or needle in texts[i].casefold()], dtype=np.int64)
        if sort == "-self-influence":
            idx = idx[np.argsort(-si[idx], kind="stable")]
        elif sort == "self-influence":
            idx = idx[np.argsort(si[idx], kind="stable")]
        pages = max(1, -(-len(idx) // PAGE_SIZE))
        shown = idx[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
        rows = [self.view(int(i)) | {"self_influence": float(si[i])} for i in shown]
        return {"rows": rows, "q": q, "sort": sort, "sorts": SORTS, "page": page, "pages": pages, "matches": len(idx),
                "total": self.store.n_examples}

    def _example_page(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.store.n_examples:
            raise NotFound(f"no training example {i}")
        si, by = self.self_influence()
        fig = figures.per_checkpoint(by[:, i], self.ckpt_labels, "self-influence per checkpoint (lr × squared gradient norm)")
        rank = int((si > si[i]).sum()) + 1
        return {"ex": self.view(i) | {"self_influence": float(si[i]), "rank": rank}, "figure": figures.embed(fig),
                "top_of": self.top_of(i), "top_of_error": self._top_of_error, "n_examples": self.store.n_examples,
                "task_queries": self.task.kind != "none"}

    def top_of(self, i: int) -> list[dict[str, Any]]:
        """The queries (the task's, up to ``max_queries``, and those asked in
        this session) that list example ``i`` among their top ``k``
        proponents or opponents."""
        with self._lock:
            if self._top_of is None:
                self._top_of = {}
                if isinstance(self.task, (_SpecTask, _HFTask)):
                    queries, behaviour, items = self.task.all_queries(self.options.max_queries)
                    if items:
                        try:
                            self._score_task_queries(self._top_of, queries, behaviour, items)
                        except GradtraceError as exc:
                            self._top_of_error = str(exc)
            out = list(self._top_of.get(i, []))
            for asked in self._asked:
                out.extend(row for row in asked["rows"] if row["index"] == i)
            return out

    def _score_task_queries(self, out: dict[int, list[dict[str, Any]]], queries: Any, behaviour: Any, items: list[int]) -> None:
        """Fill ``out``: training index -> the task queries listing it in their top k."""
        att = self.attributor()
        qf = att.query_features(queries, behaviour)
        names = self.task.query_items()
        name = self.task.top_of_behaviour(self.options.max_queries)  # type: ignore[attr-defined]
        for topk in (att.top_k(qf, k=self.options.k, largest=True), att.top_k(qf, k=self.options.k, largest=False)):
            kind = "proponent" if topk.largest else "opponent"
            for q in range(topk.indices.shape[0]):
                for r in range(topk.indices.shape[1]):
                    out.setdefault(int(topk.indices[q, r]), []).append({
                        "query": names[items[q]], "item": items[q], "kind": kind, "rank": r + 1,
                        "score": float(topk.scores[q, r]), "method": "raw", "behaviour": name,
                    })

    def _query_page(self, args: dict[str, str]) -> dict[str, Any]:
        items = self.task.query_items()
        behaviours = self.task.behaviours()
        methods = self.methods()
        ctx: dict[str, Any] = {
            "items": items, "behaviours": behaviours, "methods": methods, "free_text": self.task.free_text,
            "task_kind": self.task.kind, "args": args, "result": None,
        }
        if not args.get("run"):
            return ctx
        item = _int_arg(args, "item", None) if args.get("item", "") != "" else None
        behaviour = args.get("behaviour", behaviours[0] if behaviours else "")
        method = args.get("method", "raw")
        if method not in methods:
            raise BadRequest(f"method must be one of {', '.join(methods)}; got {method!r}")
        k = _int_arg(args, "k", self.options.k)
        if not 1 <= k <= 100:
            raise BadRequest(f"k must be in [1, 100]; got {k}")
        fields = {key: args.get(key, "") for key in ("prompt", "completion", "chosen", "rejected")}
        ctx["result"] = self.run_query(item, fields, behaviour, method, k)
        return ctx

    def run_query(self, item: int | None, fields: dict[str, str], behaviour: str, method: str, k: int) -> dict[str, Any]:
        """Proponents and opponents of one query, with per-checkpoint contributions and figures."""
        from ...models.hf_query import rowwise_breakdown

        key = (item, tuple(sorted(fields.items())) if item is None else (), behaviour, method, k)
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
            query, b, qview = self.task.query(item, fields, behaviour)
            att = self.attributor()
            try:
                qf = att.query_features(query, b)
                pro = att.top_k(qf, k=k, largest=True, variant=method)
                opp = att.top_k(qf, k=k, largest=False, variant=method)
                bpro, bopp = rowwise_breakdown(att, qf, [pro, opp], method)
            except GradtraceError as exc:
                raise BadRequest(str(exc)) from exc
            name = self.task.query_items()[item] if item is not None else "typed query"
            lists = []
            for kind, topk, contrib in (("proponent", pro, bpro), ("opponent", opp, bopp)):
                rows = []
                for r in range(topk.indices.shape[1]):
                    i = int(topk.indices[0, r])
                    rows.append(self.view(i) | {"rank": r + 1, "score": float(topk.scores[0, r]),
                                                "per_checkpoint": [float(v) for v in contrib[:, 0, r]]})
                labels = [str(row["id"]) for row in rows]
                fig = figures.contributions(contrib[:, 0, :], labels, self.ckpt_labels, f"{kind}s: contribution per checkpoint")
                lists.append({"kind": kind, "rows": rows, "figure": figures.embed(fig)})
            top = min(5, pro.indices.shape[1])
            curve = figures.cumulative(bpro[:, 0, :top], [str(r["id"]) for r in lists[0]["rows"][:top]], self.ckpt_labels,
                                       "cumulative influence of the top proponents over checkpoints")
            result = {"query": name, "item": item, "view": _view_dict(qview), "behaviour": behaviour, "method": method, "k": k,
                      "meaning": _meaning(method), "lists": lists, "cumulative": figures.embed(curve),
                      "checkpoints": self.ckpt_labels}
            self._results[key] = result
            while len(self._results) > 32:
                self._results.popitem(last=False)
            self._asked.append({"rows": [
                {"query": name, "item": item, "kind": lst["kind"], "rank": row["rank"], "score": row["score"], "method": method,
                 "behaviour": behaviour, "index": row["index"]}
                for lst in lists for row in lst["rows"]
            ]})
            return result


def _meaning(method: str) -> str:
    from ...scoring import SCORE_MEANING

    return SCORE_MEANING[method]


def _view_dict(v: ExampleView) -> dict[str, Any]:
    text = None if v.text is None else str(v.text)
    if text is not None and len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + "\u2026"
    image = None
    if v.image is not None:
        img = np.asarray(v.image, dtype=float)
        image = grey_image_png(img, scale=max(1, 96 // max(img.shape)), vmax=float(img.max()) or 1.0) if img.ndim == 2 else None
    return {"text": text, "image": image, "caption": str(v.caption)}


def _int_arg(args: dict[str, str], name: str, default: Any) -> Any:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer; got {raw!r}") from None


class StoreLoader:
    kind = "store"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "manifest.json").is_file()

    def load(self, path: Path, options: ServeOptions, new_id: Callable[[str], str]) -> list[Artefact]:
        spec = None
        if options.task is not None and not (path / "hf_spec.json").is_file():
            from ...spec import load_task_spec

            spec = load_task_spec(options.task)
        return [StoreArtefact(new_id(self.kind), path, options, spec)]
