"""The explorer's server over real HTTP: only its artefacts are served, a
non-loopback bind needs a token, the token guards every request and is
never printed; the loaders refuse what they cannot read."""

from __future__ import annotations

import http.client
import json
import re
from urllib.parse import urlsplit

import numpy as np
import pytest
from typer.testing import CliRunner

from gradtrace.cli import app as cli_app
from gradtrace.errors import InputError
from gradtrace.explore.app import check_bind, create_app, is_loopback, start
from gradtrace.explore.artefacts import ServeOptions, load_artefacts

TOKEN = "s3cret-token-0123456789abcdef"


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A GET with ``path`` sent exactly as written (no client-side normalisation)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def artefacts(explore_data):
    return load_artefacts([explore_data.store, explore_data.diff, explore_data.loop], ServeOptions(task=explore_data.task))


@pytest.fixture(scope="module")
def server(artefacts):
    running = start(artefacts)
    yield running
    running.stop()


@pytest.mark.parametrize("path", [
    "/static/../../../../etc/passwd", "/static/..%2f..%2f..%2f..%2fetc%2fpasswd", "/static/%2e%2e/%2e%2e/etc/passwd",
    "/a/..%2f..%2fetc%2fpasswd/", "/a/store-0/p/example/-1", "/a/store-0/p/example/1000000", "/a/diff-0/p/cluster/99",
    "/a/nope/", "/etc/passwd", "/a/store-0/../../etc/passwd", "/a/diff-0/data/cluster/..%2f..%2fmanifest.json",
    "/a/store-0/p/manifest.json", "/static/explore.js/../../app.py", "/a/loop-0/p/round/7",
])
def test_paths_outside_the_artefacts_are_refused(server, path, explore_data):
    status, _, body = get(server.url, path)
    assert status == 404, (path, status)
    assert b"root:x" not in body and b'"fingerprint"' not in body and b"def create_app" not in body


def test_pages_answer_with_security_headers(server):
    status, headers, body = get(server.url, "/")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"] and "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert b"store-0" in body and b"diff-0" in body and b"loop-0" in body


def test_the_page_scripts_never_parse_text_as_html(server):
    """Untrusted text reaches the DOM through textContent only: the app's own scripts use no HTML-parsing sink."""
    for path in ("/static/explore.js", "/assets/boot.js"):
        status, _, body = get(server.url, path)
        assert status == 200 and len(body) > 100
        for sink in (b"innerHTML", b"outerHTML", b"insertAdjacentHTML", b"document.write", b"eval(", b"new Function"):
            assert sink not in body, (path, sink)


def test_foreign_host_header_is_refused(server):
    status, _, _ = get(server.url, "/", {"Host": "evil.example:80"})
    assert status == 400
    assert get(server.url, "/", {"Host": f"localhost:{urlsplit(server.url).port}"})[0] == 200


def test_cluster_data_is_json_with_literal_text(server, explore_data):
    status, headers, body = get(server.url, "/a/diff-0/data/cluster/0")
    assert status == 200 and headers["content-type"].startswith("application/json")
    c = json.loads(body)
    top = explore_data.result.clusters[0]
    assert c["examples_b"] == top.examples_b and c["label"] == top.label


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.7", "::", "example.org"])
def test_non_loopback_bind_without_token_is_refused(host, explore_data):
    with pytest.raises(InputError, match="not a loopback address"):
        check_bind(host, None)
    result = CliRunner().invoke(cli_app, ["serve", str(explore_data.diff), "--host", host, "--port", "0"])
    assert result.exit_code == 2 and "not a loopback address" in result.output


def test_loopback_names():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "localhost.example.org"))
    with pytest.raises(InputError, match="at least 16"):
        check_bind("127.0.0.1", "short")
    check_bind("0.0.0.0", TOKEN)  # a token makes any address allowed


def test_token_is_required_on_every_request_and_never_printed(artefacts, capfd):
    running = start(artefacts, token=TOKEN)
    try:
        for path in ("/", "/a/store-0/", "/static/explore.js", "/assets/boot.js", "/a/diff-0/data/cluster/0"):
            assert get(running.url, path)[0] == 401
            assert get(running.url, path, {"Authorization": "Bearer " + TOKEN[:-1] + "x"})[0] == 401
            assert get(running.url, path, {"Authorization": "Bearer " + TOKEN})[0] == 200
        assert get(running.url, "/?token=wrong-token-0123456789")[0] == 401
        status, headers, _ = get(running.url, f"/a/diff-0/?token={TOKEN}&x=1")
        assert status == 303 and headers["location"].endswith("/a/diff-0/?x=1") and TOKEN not in headers["location"]
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert get(running.url, "/a/diff-0/", {"Cookie": cookie.split(";")[0]})[0] == 200
        assert get(running.url, "/a/diff-0/", {"Cookie": "gradtrace_token=nope"})[0] == 401
    finally:
        running.stop()
    out, err = capfd.readouterr()
    assert TOKEN not in out and TOKEN not in err


def test_loaders_refuse_what_they_cannot_read(tmp_path, explore_data):
    with pytest.raises(InputError, match="does not exist"):
        load_artefacts([tmp_path / "missing"])
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "audit.json").write_text("{}")
    with pytest.raises(InputError, match="is not an audit.json written by gradtrace audit: no 'behaviours' list"):
        load_artefacts([tmp_path / "audit"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "probe.json").write_text("{}")
    with pytest.raises(InputError, match="audit .a folder with audit.json.*probe results .the JSON of gradtrace probes run --out"):
        load_artefacts([tmp_path / "other"])
    (tmp_path / "alloc.json").write_text(json.dumps({"intervals": [{"start": "a"}], "params": [], "rule": "gauss", "behaviour": "loss"}))
    with pytest.raises(InputError, match=r"intervals\[0\]: not an interval of an allocation"):
        load_artefacts([tmp_path / "alloc.json"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "diff.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a diff.json"):
        load_artefacts([tmp_path / "bad"])
    task = tmp_path / "other_task.py"
    task.write_text(
        "from gradtrace.demos.digits import DigitsConfig, make_task as m\n"
        f"def make_task():\n    return m({str(tmp_path / 'other')!r}, DigitsConfig(hidden=8, epochs=2, n_checkpoints=1, test_fraction=0.5))\n"
    )
    with pytest.raises(InputError, match="not the store's task"):
        load_artefacts([explore_data.store], ServeOptions(task=f"{task}:make_task"))


def test_a_store_without_its_task_shows_the_training_set_only(explore_data):
    app = create_app(load_artefacts([explore_data.store]))
    client = app.test_client()
    page = client.get("/a/store-0/p/examples?sort=index")
    assert page.status_code == 200 and b">train-0<" in page.data and b">train-49<" in page.data and b">train-50<" not in page.data
    query = client.get("/a/store-0/p/query?run=1&item=0")
    assert query.status_code == 400 and b"--task" in query.data
    bad = client.get("/a/store-0/p/examples?sort=evil")
    assert bad.status_code == 400 and b"sort must be one of" in bad.data


def _texts(page: bytes, cls: str) -> list[str]:
    import html
    import re

    return [html.unescape(t) for t in re.findall(rf'<blockquote class="{cls}"[^>]*>(.*?)</blockquote>', page.decode(), re.S)]


def _figures(page: bytes) -> list[dict]:
    import html
    import re

    return [json.loads(html.unescape(f)) for f in re.findall(r'data-figure="([^"]*)"', page.decode())]


def test_audit_shows_behaviours_texts_proponents_and_verification(audit_dir, explore_data):
    import html

    arts = load_artefacts([audit_dir.path])
    assert [a.id for a in arts] == ["audit-0", "audit-0.diff"]  # the cached diff stage became a diff of its own
    client = create_app(arts).test_client()
    main = client.get("/a/audit-0/")
    assert main.status_code == 200 and b'href="/a/audit-0.diff/"' in main.data
    assert _figures(main.data)[0]["data"][0]["name"] == "model A"  # the diff's map, built by the diff kind
    assert b"run&lt;b&gt;" in main.data and b"run<b>" not in main.data
    beh = audit_dir.audit["behaviours"]
    for i in audit_dir.traced:
        b = beh[i]
        page = client.get(f"/a/audit-0/p/behaviour/{i}")
        assert page.status_code == 200
        assert b"<script>alert" not in page.data and b"<img src=x" not in page.data
        # B's texts that show it: the lines of samples_b.jsonl that audit.json names, literally
        assert _texts(page.data, "behaviour-text") == [audit_dir.texts_b[j] for j in b["b_texts"]]
        assert any(t.startswith(explore_data.evil) for t in _texts(page.data, "behaviour-text"))
        text = page.data.decode()
        share_b = b["share_b"]
        assert f"{share_b['share']:.3f} <span class=\"note\">({share_b['count']}/{share_b['n']}; 95% CI {share_b['ci95'][0]:.3f}" in text
        for p in b["proponents"]:
            assert f"<td>{html.escape(p['id'])}</td>" in text and f"{p['score']:.4g}" in text
        shown = [html.unescape(t) for t in re.findall(r'<pre class="text">(.*?)</pre>', text, re.S)]
        assert shown == [f"prompt: {p['example']['prompt']}\ncompletion: {p['example']['completion']}" for p in b["proponents"]]
        assert shown[0] == f"prompt: Say it\ncompletion: {explore_data.evil}"  # proponent 1 is example 0: hostile, literal
        bars = [f["data"][0] for f in _figures(page.data)]
        assert [bar["y"] for bar in bars] == [list(p["per_checkpoint"].values()) for p in b["proponents"]]
        assert bars[0]["x"] == ["step 10", "step 20"]
        v = b["verification"]
        for arm in ("retrain_all", "topk", "random"):
            assert f"{v[arm]['share_b_after']['share']:.3f}" in text
        assert "retrained on all the data" in text
        assert 'id="topk-better">yes<' in text
        # the map's click on the behaviour's cluster: the cluster, with the behaviour's first proponents and verification
        (cluster,) = [m["cluster"] for m in b["members"] if m["level"] == "text"]
        data = client.get(f"/a/audit-0/data/textcluster/{cluster}").get_json()
        assert data["diff"] == "audit-0.diff" and data["cluster"] == cluster
        (panel,) = [x for x in data["behaviours"] if x["index"] == i]
        assert panel["label"] == b["label"] and [p["id"] for p in panel["proponents"]] == [p["id"] for p in b["proponents"][:5]]
        assert (panel["verification"]["before"], panel["verification"]["topk"], panel["verification"]["random"]) == (
            v["share_b_before"]["share"], v["topk"]["share_b_after"]["share"], v["random"]["share_b_after"]["share"])
    assert client.get("/a/audit-0/data/textcluster/999").status_code == 404
    untraced = [i for i in range(len(beh)) if i not in audit_dir.traced]
    if untraced:
        assert b"Not traced" in client.get(f"/a/audit-0/p/behaviour/{untraced[0]}").data
    assert client.get(f"/a/audit-0/p/behaviour/{len(beh)}").status_code == 404


def test_allocation_heatmap_and_cells_match_the_json(allocation_json):
    from gradtrace.allocate.groups import group_of

    client = create_app(load_artefacts([allocation_json.path])).test_client()
    d = allocation_json.data
    n = len(d["intervals"])
    for level in ("layer", "block", "module"):
        page = client.get(f"/a/allocation-0/?level={level}")
        assert page.status_code == 200
        heat = _figures(page.data)[0]["data"][0]
        groups = list(d["by"][level])
        assert heat["y"] == groups and heat["type"] == "heatmap"
        np.testing.assert_allclose(heat["z"], [d["by"][level][g] for g in groups], rtol=1e-12)
        for cell in range(len(groups) * n):
            g, j = groups[cell // n], cell % n
            text = client.get(f"/a/allocation-0/p/{level}/{cell}").data.decode()
            rows = re.findall(r"<tr><td>([^<]*)</td><td class=\"num\">([^<]*)</td>", text)
            want = {p: d["intervals"][j]["per_tensor"][p] for p in d["params"] if group_of(p, level) == g}
            assert {name: float(v) for name, v in rows} == pytest.approx(want, rel=1e-5)
            assert sum(want.values()) == pytest.approx(d["by"][level][g][j], rel=1e-9, abs=1e-15)
    assert client.get(f"/a/allocation-0/p/layer/{len(d['by']['layer']) * n}").status_code == 404
    assert client.get("/a/allocation-0/?level=evil").status_code == 400


def _table(page: bytes, table_id: str) -> list[list[str]]:
    """The body rows of the table ``table_id``: each cell's text (tags dropped, entities unescaped)."""
    import html

    body = re.search(rf'<table[^>]*id="{table_id}"[^>]*>.*?<tbody>(.*?)</tbody>', page.decode(), re.S)
    assert body is not None, table_id
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows]


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def test_probe_run_page_shows_accuracy_summary_and_items(probe_runs):
    from gradtrace.probes import SUBTASKS

    client = create_app(load_artefacts([probe_runs.a])).test_client()
    index = client.get("/")
    assert b'href="/a/probes-0/"' in index.data and b"probe run: model tiny-0 &lt;i&gt;" in index.data
    page = client.get("/a/probes-0/")
    assert page.status_code == 200
    record = probe_runs.records["a"]
    subs = [s for s in SUBTASKS if s in record["summary"]]
    (bars,) = _figures(page.data)[0]["data"]
    assert bars["type"] == "bar" and bars["customdata"] == subs
    assert bars["y"] == [record["summary"][s]["accuracy"] for s in subs]
    # the summary against the items' correctness, counted here
    for row, s in zip(_table(page.data, "probe-summary"), subs):
        mine = [r for r in record["items"] if r["subtask"] == s]
        assert row[:4] == ["tiny-0 <i>", s, str(len(mine)), f"{sum(r['correct'] for r in mine) / len(mine):.3f}"]
    # the items: every text literal, the key and the model's choice (the option it scored highest)
    items = {it.id: it for it in probe_runs.items}
    rows = _table(page.data, "probe-items")
    assert sorted(r[0] for r in rows) == sorted(items)
    for r in rows:
        it, res = items[r[0]], next(x for x in record["items"] if x["id"] == r[0])
        assert r[1:4] == [it.subtask, it.scenario, it.question]
        assert r[5] == "ABCDEFGHIJ"[it.key]
        best = max(range(len(it.options)), key=lambda j: res["scores"][j])
        assert r[6].split()[:2] == ["ABCDEFGHIJ"[best], "✓" if best == it.key else "✗"]
    text = page.data.decode()
    assert "<script>alert" not in text and "<img src=x" not in text and "<b>yours" not in text
    import html

    shown = [html.unescape(o) for o in re.findall(r'<li class="probe-option[^"]*">(.*?)</li>', text, re.S)]
    assert shown == [o for r in rows for o in items[r[0]].options]
    keys = [html.unescape(o) for o in re.findall(r'<li class="probe-option key">(.*?)</li>', text, re.S)]
    assert keys == [items[r[0]].answer for r in rows]
    # a click on a bar lists one subtask's items
    filtered = client.get("/a/probes-0/?subtask=temporal_change")
    assert {r[1] for r in _table(filtered.data, "probe-items")} == {"temporal_change"}
    assert client.get("/a/probes-0/?subtask=evil").status_code == 400
    assert client.get("/a/probes-0/?page=9").status_code == 404


def test_probe_comparison_page_shows_the_shift_table(probe_runs):
    from gradtrace.probes import SUBTASKS, mcnemar_exact
    from gradtrace.probes.score import correct_p

    client = create_app(load_artefacts([probe_runs.compare])).test_client()
    page = client.get("/a/probes-0/")
    assert page.status_code == 200
    ra, rb = ({r["id"]: r for r in probe_runs.records[s]["items"]} for s in ("a", "b"))
    subs = [s for s in SUBTASKS if any(r["subtask"] == s for r in ra.values())]
    # the oracle: discordant counts and exact McNemar per subtask, Holm over the subtasks, computed here
    want = {}
    for s in subs:
        ids = [i for i in ra if ra[i]["subtask"] == s]
        a_only = sum(ra[i]["correct"] and not rb[i]["correct"] for i in ids)
        b_only = sum(rb[i]["correct"] and not ra[i]["correct"] for i in ids)
        acc_a, acc_b = np.mean([ra[i]["correct"] for i in ids]), np.mean([rb[i]["correct"] for i in ids])
        want[s] = [s, str(len(ids)), f"{acc_a:.3f}", f"{acc_b:.3f}", f"{acc_b - acc_a:+.3f}", str(a_only), str(b_only),
                   f"{mcnemar_exact(a_only, b_only):.3g}"]
    rows = _table(page.data, "shift-0")
    assert [r[:7] for r in rows] == [want[s][:7] for s in subs]
    exact = [probe_runs.comparison["subtasks"][s] for s in subs]
    assert [r[7] for r in rows] == [f"{v['p']:.3g}" for v in exact] == [w[7] for w in want.values()]
    assert [r[8] for r in rows] == [f"{v['p_corrected']:.3g}" for v in exact]
    np.testing.assert_allclose([v["p_corrected"] for v in exact], correct_p([v["p"] for v in exact], "holm"))
    assert [r[9] for r in rows] == ["yes" if v["p_corrected"] <= 0.05 else "no" for v in exact]
    # accuracy of A and B per subtask in the figure; both models' choices per item
    a_bar, b_bar = _figures(page.data)[0]["data"]
    assert a_bar["name"] == "A: tiny-0 &lt;i&gt;" and b_bar["name"] == "B: tiny-1 &lt;i&gt;"  # escaped for plotly's label markup
    assert a_bar["y"] == [probe_runs.comparison["subtasks"][s]["accuracy_a"] for s in subs]
    assert b_bar["y"] == [probe_runs.comparison["subtasks"][s]["accuracy_b"] for s in subs]
    for r in _table(page.data, "probe-items"):
        for cell, res in zip(r[6:8], (ra[r[0]], rb[r[0]])):
            assert cell.split()[:2] == ["ABCDEFGHIJ"[res["predicted"]], "✓" if res["correct"] else "✗"]


def test_a_loop_with_the_probes_monitor_yields_its_probe_results(explore_data):
    from gradtrace.loop.monitors import Observation
    from gradtrace.probes import SUBTASKS, load_suite

    arts = load_artefacts([explore_data.loop])
    assert [a.id for a in arts] == ["loop-0", "loop-0.round-2", "loop-0.probes"]
    client = create_app(arts).test_client()
    assert b'id="loop-probes" href="/a/loop-0.probes/"' in client.get("/a/loop-0/").data
    assert b'id="round-probes" href="/a/loop-0.probes/"' in client.get("/a/loop-0/p/round/1").data
    page = client.get("/a/loop-0.probes/")
    assert page.status_code == 200 and b'href="/a/loop-0/"' in page.data
    rows = [json.loads((explore_data.loop / f"round_{t:03d}" / "metrics.json").read_text())["row"] for t in range(3)]
    subs = [s for s in SUBTASKS if f"probes.{s}.accuracy" in rows[0]]
    # one bar per round: the accuracies the monitor measured
    bars = _figures(page.data)[0]["data"]
    assert [b["name"] for b in bars] == ["round 0", "round 1", "round 2"]
    for t, b in enumerate(bars):
        assert b["y"] == pytest.approx([rows[t][f"probes.{s}.accuracy"] for s in subs], abs=1e-12)
    # each round against round 0: the monitor's change and corrected p
    for t in (1, 2):
        table = _table(page.data, f"shift-{t - 1}")
        assert [r[0] for r in table] == subs
        assert [r[4] for r in table] == [f"{rows[t][f'probes.{s}.change']:+.3f}" for s in subs]
        assert [r[8] for r in table] == [f"{rows[t][f'probes.{s}.p']:.3g}" for s in subs]
    # the items with each round's choice, from the rounds' observations
    items = load_suite(explore_data.suite)
    obs = [Observation.load(explore_data.loop / f"round_{t:03d}").extras for t in range(3)]
    got = {r[0]: r for r in _table(page.data, "probe-items")}
    assert set(got) == {it.id for it in items}
    for j, it in enumerate(items):
        for t in range(3):
            assert got[it.id][6 + t].split()[:2] == ["ABCDEFGHIJ"[obs[t]["probes.predicted"][j]], "✓" if obs[t]["probes.correct"][j] else "✗"]


def test_an_older_run_file_reads_its_texts_from_its_suite(probe_runs, tmp_path):
    client = create_app(load_artefacts([probe_runs.old])).test_client()
    rows = _table(client.get("/a/probes-0/").data, "probe-items")
    items = {it.id: it for it in probe_runs.items}
    assert {r[0]: r[2] for r in rows} == {i: it.scenario for i, it in items.items()}
    # without the suite beside it: the items without their texts, and a note saying why
    lone = tmp_path / "old.json"
    lone.write_bytes(probe_runs.old.read_bytes())
    page = create_app(load_artefacts([lone])).test_client().get("/a/probes-0/")
    assert b"the suite file &#39;suite.jsonl&#39; was not found" in page.data
    assert {r[2] for r in _table(page.data, "probe-items")} == {"(text not available)"}


def test_probe_loaders_refuse_what_they_cannot_read(tmp_path, probe_runs):
    bad = tmp_path / "cmp.json"
    bad.write_text(json.dumps({"a": "a.json", "b": "b.json", "correction": "holm", "alpha": 0.05, "subtasks": {"self_concept": {"n": 3}}}))
    with pytest.raises(InputError, match=r"subtasks.self_concept is not a subtask's comparison"):
        load_artefacts([bad])
    run = json.loads(probe_runs.a.read_text())
    run["items"][0].pop("correct")
    (tmp_path / "run.json").write_text(json.dumps(run))
    with pytest.raises(InputError, match=r"items\[0\] needs id, subtask, key, predicted, correct, margin"):
        load_artefacts([tmp_path / "run.json"])
    # a comparison whose runs have moved still shows its shift table
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(dict(probe_runs.comparison, a="gone/a.json", b="gone/b.json")))
    page = create_app(load_artefacts([moved])).test_client().get("/a/probes-0/")
    assert page.status_code == 200 and len(_table(page.data, "shift-0")) == len(probe_runs.comparison["subtasks"])
    assert b"Run A (&#39;gone/a.json&#39;) was not found" in page.data and b"No per-item results" in page.data


def test_a_loop_whose_suite_moved_or_kept_no_choices_still_shows_its_probes(explore_data, tmp_path):
    import shutil

    from gradtrace.loop.monitors import Observation

    rows = [json.loads((explore_data.loop / f"round_{t:03d}" / "metrics.json").read_text())["row"] for t in range(3)]
    # an older run: the observations kept whether each item was right, not the option chosen
    older = tmp_path / "older"
    shutil.copytree(explore_data.loop, older)
    for t in range(3):
        folder = older / f"round_{t:03d}"
        obs = Observation.load(folder)
        del obs.extras["probes.predicted"]
        obs.save(folder)
    page = create_app(load_artefacts([older])).test_client().get("/a/loop-0.probes/")
    cells = [r[6:9] for r in _table(page.data, "probe-items")]
    assert cells and all(c.split()[0] == "n/a" and c.split()[1] in "✓✗" for row in cells for c in row)
    # the suite moved: accuracies and shifts from the rounds' metrics, no items, a note saying why
    moved = tmp_path / "moved"
    shutil.copytree(explore_data.loop, moved)
    config = json.loads((moved / "loop.json").read_text())
    config["monitors"]["probes"]["suite"] = str(tmp_path / "gone.jsonl")
    (moved / "loop.json").write_text(json.dumps(config))
    page = create_app(load_artefacts([moved])).test_client().get("/a/loop-0.probes/")
    assert page.status_code == 200 and b"gone.jsonl" in page.data and b"No per-item results" in page.data
    subs = [r[0] for r in _table(page.data, "shift-1")]
    assert [r[4] for r in _table(page.data, "shift-1")] == [f"{rows[2][f'probes.{s}.change']:+.3f}" for s in subs]
    assert [r[8] for r in _table(page.data, "shift-1")] == [f"{rows[2][f'probes.{s}.p']:.3g}" for s in subs]
    bars = _figures(page.data)[0]["data"]
    assert [b["y"] for b in bars] == [[rows[t][f"probes.{s}.accuracy"] for s in subs] for t in range(3)]
