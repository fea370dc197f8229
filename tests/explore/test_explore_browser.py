"""The explorer in headless Chromium: search, a query against Attributor.top_k,
a cluster's texts, hostile training text shown as text, the loop's rounds,
an audit's behaviour, an allocation's cells and probe results.

With GRADTRACE_SCREENSHOTS=1 the tests also save a screenshot of each page
into docs/explorer/ (the pictures of docs/explorer.md)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "explorer"


@pytest.fixture(scope="module")
def server(explore_data, audit_dir, allocation_json, probe_runs):
    from gradtrace.explore.app import start
    from gradtrace.explore.artefacts import ServeOptions, load_artefacts

    artefacts = load_artefacts([explore_data.store, explore_data.diff, explore_data.loop, audit_dir.path, allocation_json.path,
                                probe_runs.compare], ServeOptions(task=explore_data.task))
    assert [a.id for a in artefacts if a.kind == "probes"] == ["loop-0.probes", "probes-0"]
    running = start(artefacts)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def driver(headless_chrome):
    d = headless_chrome()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def oracle(explore_data):
    """The store's task and an attributor made independently of the app."""
    from gradtrace.scoring import Attributor
    from gradtrace.spec import load_task_spec

    spec = load_task_spec(explore_data.task)
    return spec, Attributor(explore_data.store, spec.model(), spec.task, checkpoint_loader=spec.checkpoint_loader)


def screenshot(driver, name: str) -> None:
    if os.environ.get("GRADTRACE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(DOCS / f"{name}.png"))


def open_page(driver, url: str, plots: int = 0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    if plots:
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.querySelectorAll('div.plot .main-svg').length") >= plots)
    assert_no_dialog(driver)


def click_and_load(driver, element) -> None:
    """Click a link or submit button and wait until the next page has loaded."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element("tag name", "html")
    element.click()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(old))
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def assert_no_dialog(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    pytest.fail(f"a dialog opened: {text!r}")


def column(driver, table_id: str, col: int) -> list[str]:
    from selenium.webdriver.common.by import By

    return [row.find_elements(By.TAG_NAME, "td")[col].text for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")]


def test_search_finds_examples_and_sorts_by_self_influence(server, driver, explore_data, oracle):
    from selenium.webdriver.common.by import By

    from gradtrace.scoring import self_influence

    store = oracle[1].store
    open_page(driver, f"{server.url}/a/store-0/")
    si = self_influence(store)
    first_page = [store.ids[i] for i in np.argsort(-si, kind="stable")[:50]]
    assert column(driver, "examples", 0) == first_page
    screenshot(driver, "training-set")
    box = driver.find_element(By.ID, "search")
    box.send_keys("train-17")
    click_and_load(driver, driver.find_element(By.ID, "search-button"))
    found = column(driver, "examples", 0)
    expected = [store.ids[i] for i in np.argsort(-si, kind="stable") if "train-17" in store.ids[i]]
    assert found == expected and "train-17" in found
    # by tag (the demo tags examples "clean" or "flipped"; no id or caption holds "clean"), case-insensitive
    driver.find_element(By.ID, "search").clear()
    driver.find_element(By.ID, "search").send_keys("CLEAN")
    click_and_load(driver, driver.find_element(By.ID, "search-button"))
    clean = [store.ids[i] for i in np.argsort(-si, kind="stable") if store.tags[i] == "clean"]
    assert len(clean) < store.n_examples and column(driver, "examples", 0) == clean[:50]
    assert set(column(driver, "examples", 1)) == {"clean"}
    assert len(driver.find_elements(By.CSS_SELECTOR, "#examples img.pixels")) == sum(i != "train-0" for i in clean[:50])  # digits as images
    # by text: only example 0 carries the hostile text
    driver.find_element(By.ID, "search").clear()
    driver.find_element(By.ID, "search").send_keys("GEESE honk")
    click_and_load(driver, driver.find_element(By.ID, "search-button"))
    assert column(driver, "examples", 0) == ["train-0"]
    assert_no_dialog(driver)


def test_hostile_training_text_renders_as_text(server, driver, explore_data, oracle):
    from selenium.webdriver.common.by import By

    open_page(driver, f"{server.url}/a/store-0/p/example/0", plots=1)
    assert driver.find_element(By.CSS_SELECTOR, "pre.text").text == explore_data.evil
    assert driver.find_element(By.CSS_SELECTOR, ".view .caption").text == explore_data.evil
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    assert driver.execute_script("return document.querySelectorAll('main script').length") == 0
    # the search result list shows it literally too
    open_page(driver, f"{server.url}/a/store-0/p/examples?q=geese")
    assert driver.find_element(By.CSS_SELECTOR, "#examples pre.text").text == explore_data.evil
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []


def test_example_page_self_influence_and_top_of(server, driver, explore_data, oracle):
    from selenium.webdriver.common.by import By

    from gradtrace.scoring import self_influence

    spec, attributor = oracle
    store = attributor.store
    i = int(np.argmax(self_influence(store)))
    open_page(driver, f"{server.url}/a/store-0/p/example/{i}", plots=1)
    screenshot(driver, "example")
    bars = driver.execute_script("return Array.from(document.querySelector('div.plot').data[0].y)")
    expected = [float(lr) * float(store.norms(c, 0, store.n_examples)[i, 1]) for c, lr in enumerate(store.learning_rates)]
    np.testing.assert_allclose(bars, expected, rtol=1e-12)
    # the queries listing it among their top-10 proponents / opponents (raw, task loss), against top_k over the task's queries
    qids = list(spec.query_ids)
    want = set()
    for largest in (True, False):
        topk = attributor.top_k(spec.queries, k=10, largest=largest)
        want |= {(qids[q], "proponent" if largest else "opponent", r + 1) for q, r in zip(*np.nonzero(topk.indices == i))}
    rows = driver.find_elements(By.CSS_SELECTOR, "#top-of tbody tr")
    got = {(tds[0].text, tds[1].text, int(tds[2].text)) for tds in (r.find_elements(By.TAG_NAME, "td") for r in rows)}
    assert got == want and want


def test_query_returns_the_proponents_of_top_k(server, driver, explore_data, oracle):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from gradtrace.data import take

    spec, attributor = oracle
    query = take(spec.queries, [3])
    for method in ("raw", "cosine"):
        open_page(driver, f"{server.url}/a/store-0/p/query")
        Select(driver.find_element(By.ID, "item")).select_by_visible_text("test-3")
        Select(driver.find_element(By.ID, "behaviour")).select_by_value("loss")
        Select(driver.find_element(By.ID, "method")).select_by_value(method)
        driver.find_element(By.NAME, "k").clear()
        driver.find_element(By.NAME, "k").send_keys("6")
        click_and_load(driver, driver.find_element(By.ID, "run-query"))
        open_page(driver, driver.current_url, plots=3)
        assert driver.find_element(By.ID, "query-name").text == "test-3"
        for j, (largest, table) in enumerate(((True, "proponents"), (False, "opponents"))):
            topk = attributor.top_k(query, k=6, largest=largest, variant=method)
            assert column(driver, table, 1) == topk.ids[0]
            # each one's contribution per checkpoint (the grouped bars under the table): Attributor.breakdown
            bars = driver.execute_script(f"return document.querySelectorAll('div.plot')[{j}].data.map(t => Array.from(t.y))")
            want = attributor.breakdown(query, topk.indices[0], variant=method)[:, 0, :].T
            np.testing.assert_allclose(bars, want, rtol=1e-9, atol=1e-15)
        if method == "raw":
            screenshot(driver, "query")
            # the cumulative curve ends at each proponent's score
            ends = driver.execute_script("return document.querySelectorAll('div.plot')[2].data.map(t => t.y[t.y.length - 1])")
            top = attributor.top_k(query, k=6, largest=True)
            np.testing.assert_allclose(ends, top.scores[0, : len(ends)], rtol=1e-5)  # top_k scores in float32, the breakdown in float64


def test_clicking_a_cluster_shows_its_texts(server, driver, explore_data):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(driver, f"{server.url}/a/diff-0/", plots=1)
    clusters = explore_data.result.clusters
    driver.find_elements(By.CSS_SELECTOR, "button.show-cluster")[0].click()
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cluster-panel blockquote.cluster-text"))
    panel = driver.find_element(By.ID, "cluster-panel")
    assert panel.find_element(By.CSS_SELECTOR, "h3").text.endswith(clusters[0].label)
    texts = [b.text for b in panel.find_elements(By.CSS_SELECTOR, "blockquote.cluster-text")]
    assert texts == clusters[0].examples_b + clusters[0].examples_a + clusters[0].medoids
    assert panel.find_element(By.CSS_SELECTOR, "a.cluster-page").get_attribute("href") == f"{server.url}/a/diff-0/p/cluster/0"
    assert any(t.startswith(explore_data.evil) for t in texts)  # the planted cluster: hostile text, shown literally
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    assert_no_dialog(driver)
    # clicking a point of the map opens that point's cluster
    point = driver.find_elements(By.CSS_SELECTOR, "div.plot g.trace.scatter path.point")[0]
    cluster_of_point = driver.execute_script("return document.querySelector('div.plot').data[0].customdata[0]")
    want = next(c for c in clusters if c.level == "text" and c.cluster == cluster_of_point)
    other = next(j for j, c in enumerate(clusters) if c is not want)
    driver.find_elements(By.CSS_SELECTOR, "button.show-cluster")[other].click()  # another cluster first: the click must change the panel
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "#cluster-panel h3").text.endswith(clusters[other].label))
    from selenium.webdriver import ActionChains

    ActionChains(driver).move_to_element(point).click().perform()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "#cluster-panel h3").text.endswith(want.label))
    screenshot(driver, "diff")
    assert_no_dialog(driver)
    # hovering a point of B with hostile text shows the text, literally
    j = driver.execute_script("return document.querySelector('div.plot').data[1].text.findIndex(t => t.includes('geese honk'))")
    evil_point = driver.execute_script(
        "return document.querySelectorAll('div.plot g.trace.scatter')[1].querySelectorAll('path.point')[arguments[0]]", j)
    ActionChains(driver).move_to_element(evil_point).perform()
    WebDriverWait(driver, 10).until(lambda d: "geese honk" in d.execute_script(
        "var h = document.querySelector('div.plot .hovertext'); return h ? h.textContent : ''"))
    hover = driver.execute_script("return document.querySelector('div.plot .hovertext').textContent")
    assert explore_data.evil in hover and hover.startswith("model B")
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == [] and driver.find_elements(By.CSS_SELECTOR, "div.plot script") == []
    assert_no_dialog(driver)
    # the map's buttons colour it by cluster (one trace per cluster) and back by model
    def visible() -> list:
        return driver.execute_script("return document.querySelector('div.plot').data.map(t => t.visible !== false)")

    points = driver.execute_script("return document.querySelector('div.plot').data.map(t => Array.from(t.customdata))")
    assert visible()[:2] == [True, True] and not any(visible()[2:])
    buttons = {b.text: b for b in driver.find_elements(By.CSS_SELECTOR, "div.plot g.updatemenu-button")}
    buttons["colour by cluster"].click()
    WebDriverWait(driver, 10).until(lambda d: visible()[:2] == [False, False])
    assert all(visible()[2:]) and sorted(c for t in points[2:] for c in t) == sorted(points[0] + points[1])
    assert all(len(set(t)) == 1 for t in points[2:])  # one cluster per trace
    driver.find_elements(By.CSS_SELECTOR, "div.plot g.updatemenu-button")[0].click()
    WebDriverWait(driver, 10).until(lambda d: visible()[:2] == [True, True])


def test_loop_rounds_link_to_their_diff_and_data(server, driver, explore_data):
    from selenium.webdriver.common.by import By

    open_page(driver, f"{server.url}/a/loop-0/", plots=2)
    screenshot(driver, "loop")
    assert "stopped at round 2" in driver.find_element(By.CSS_SELECTOR, ".stopped").text
    shapes = driver.execute_script("return document.querySelectorAll('div.plot')[0].layout.shapes.map(s => [s.type, s.x0, s.y0])")
    assert ["line", 2, 0] in shapes or any(s[1] == 2 for s in shapes)  # the stop round
    assert any(abs((s[2] or 0) - 0.3) < 1e-12 for s in shapes)  # the threshold of the stop rule
    click_and_load(driver, driver.find_element(By.LINK_TEXT, "2"))
    assert driver.find_element(By.TAG_NAME, "h1").text == "Round 2"
    texts = [p.text for p in driver.find_elements(By.CSS_SELECTOR, "table.data pre.text")]
    assert texts[0] == explore_data.evil and texts[1] == "generated text 1 of round 2"
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    assert_no_dialog(driver)
    # the round's diff on its page: the map and the clusters, a click away from a cluster's texts
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(driver, driver.current_url, plots=1)
    clusters = explore_data.result.clusters
    assert column(driver, "round-clusters", 2) == [c.label for c in clusters[:20]]
    driver.find_elements(By.CSS_SELECTOR, "#round-clusters button.show-cluster")[0].click()
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cluster-panel blockquote.cluster-text"))
    shown = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#cluster-panel blockquote.cluster-text")]
    assert shown == clusters[0].examples_b + clusters[0].examples_a + clusters[0].medoids
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    assert_no_dialog(driver)
    click_and_load(driver, driver.find_element(By.ID, "round-diff"))
    open_page(driver, driver.current_url, plots=1)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Behavioural diff"


def test_clicking_a_round_on_a_curve_opens_it(server, driver):
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(driver, f"{server.url}/a/loop-0/", plots=2)
    rounds = driver.execute_script("return Array.from(document.querySelector('div.plot').data[0].customdata)")
    point = driver.find_elements(By.CSS_SELECTOR, "div.plot")[0].find_elements(By.CSS_SELECTOR, "g.trace.scatter path.point")[1]
    ActionChains(driver).move_to_element(point).click().perform()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.TAG_NAME, "h1").text == f"Round {rounds[1]}")
    assert driver.current_url == f"{server.url}/a/loop-0/p/round/{rounds[1]}"


def test_audit_behaviour_and_allocation_cell(server, driver, explore_data, audit_dir, allocation_json):
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    i = audit_dir.traced[0]
    b = audit_dir.audit["behaviours"][i]
    open_page(driver, f"{server.url}/a/audit-0/", plots=1)
    assert column(driver, "behaviours", 1) == [str(x["label"]) for x in audit_dir.audit["behaviours"]]
    screenshot(driver, "audit")
    # a point of the audit's map opens its cluster in the panel, with the behaviour it belongs to:
    # its top training examples and the verification, a click away from the behaviour's page
    (cluster,) = [m["cluster"] for m in b["members"] if m["level"] == "text"]
    label = next(c.label for c in explore_data.result.clusters if c.level == "text" and c.cluster == cluster)
    j = driver.execute_script("return document.querySelector('div.plot').data[1].customdata.indexOf(arguments[0])", cluster)
    point = driver.find_elements(By.CSS_SELECTOR, "div.plot g.trace.scatter")[1].find_elements(By.CSS_SELECTOR, "path.point")[j]
    ActionChains(driver).move_to_element(point).click().perform()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "#cluster-panel h3").text.endswith(label))
    assert driver.find_element(By.CSS_SELECTOR, "#cluster-panel a.behaviour-link").text == str(b["label"])
    index = next(k for k, c in enumerate(explore_data.result.clusters) if c.level == "text" and c.cluster == cluster)
    href = driver.find_element(By.CSS_SELECTOR, "#cluster-panel a.cluster-page").get_attribute("href")
    assert href == f"{server.url}/a/audit-0.diff/p/cluster/{index}"  # the cluster's page is the audit's diff's
    ids = [r.find_elements(By.TAG_NAME, "td")[1].text for r in driver.find_elements(By.CSS_SELECTOR, "#cluster-panel table.panel-proponents tr")]
    assert ids == [p["id"] for p in b["proponents"][:5]]
    v = b["verification"]
    assert driver.find_element(By.CSS_SELECTOR, "#cluster-panel .panel-verification").text == (
        f"verification: B's share {v['share_b_before']['share']:.3} before, {v['topk']['share_b_after']['share']:.3} after removing the top "
        f"{v['k']} proponents, {v['random']['share_b_after']['share']:.3} after removing {v['k']} random examples; top-K lowered it more: yes")
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    assert_no_dialog(driver)
    click_and_load(driver, driver.find_element(By.CSS_SELECTOR, "#cluster-panel a.behaviour-link"))
    open_page(driver, driver.current_url, plots=len(b["proponents"]))
    assert driver.current_url == f"{server.url}/a/audit-0/p/behaviour/{i}"
    texts = [q.text for q in driver.find_elements(By.CSS_SELECTOR, "blockquote.behaviour-text")]
    assert texts == [audit_dir.texts_b[j].strip() for j in b["b_texts"]] and texts[0].startswith(explore_data.evil)
    examples = [pre.text for pre in driver.find_elements(By.CSS_SELECTOR, "#proponents pre.text")]
    assert examples[0] == f"prompt: Say it\ncompletion: {explore_data.evil}"
    bars = driver.execute_script("return Array.from(document.querySelectorAll('#proponents div.plot')).map(p => Array.from(p.data[0].y))")
    assert bars == [list(p["per_checkpoint"].values()) for p in b["proponents"]]
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    assert_no_dialog(driver)
    # an allocation: clicking a heatmap cell opens that group's parameters in that interval
    d = allocation_json.data
    open_page(driver, f"{server.url}/a/allocation-0/", plots=1)
    screenshot(driver, "allocation")
    cell = driver.find_element(By.CSS_SELECTOR, "div.plot .nsewdrag")
    box = driver.execute_script("var r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", cell)
    groups, n = list(d["by"]["layer"]), len(d["intervals"])
    row, col = len(groups) - 1, n - 1  # the bottom-right cell (rows run top to bottom)
    ActionChains(driver).move_to_element_with_offset(cell, int(box[0] * ((col + 0.5) / n - 0.5)),
                                                     int(box[1] * ((row + 0.5) / len(groups) - 0.5))).click().perform()
    WebDriverWait(driver, 10).until(lambda dr: dr.current_url.endswith(f"/a/allocation-0/p/layer/{row * n + col}"))
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith(f"layer {groups[row]}")
    assert float(driver.find_element(By.ID, "cell-value").text) == pytest.approx(d["by"]["layer"][groups[row]][col], rel=1e-3)
    # its parameters: each tensor of the group with its allocation in that interval
    from gradtrace.allocate.groups import group_of

    want = {p: d["intervals"][col]["per_tensor"][p] for p in d["params"] if group_of(p, "layer") == groups[row]}
    got = {name: float(v) for name, v in zip(column(driver, "tensors", 0), column(driver, "tensors", 1))}
    assert got == pytest.approx(want, rel=1e-5) and want
    assert_no_dialog(driver)


def test_probe_page_shows_items_literally_and_a_bar_lists_its_subtask(server, driver, explore_data, probe_runs):
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(driver, f"{server.url}/a/probes-0/", plots=1)
    evil = next(it for it in probe_runs.items if it.id == "evil-item")
    row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "#probe-items tbody tr")
               if r.find_element(By.CSS_SELECTOR, "td.item-id").text == evil.id)
    assert row.find_element(By.CSS_SELECTOR, "pre.probe-scenario").text == explore_data.evil
    assert row.find_element(By.CSS_SELECTOR, "pre.probe-question").text == evil.question
    assert [li.text for li in row.find_elements(By.CSS_SELECTOR, "li.probe-option")] == list(evil.options)
    assert row.find_element(By.CSS_SELECTOR, "li.key").text == evil.answer
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == [] and driver.find_elements(By.CSS_SELECTOR, "#probe-items b") == []
    assert driver.execute_script("return document.querySelectorAll('main script').length") == 0
    assert_no_dialog(driver)
    from gradtrace.probes import SUBTASKS

    cmp = probe_runs.comparison["subtasks"]
    subs = [s for s in SUBTASKS if s in cmp]
    assert column(driver, "shift-0", 0) == subs
    assert column(driver, "shift-0", 8) == [f"{cmp[s]['p_corrected']:.3g}" for s in subs]
    screenshot(driver, "probes")
    # a click on a subtask's bar lists that subtask's items
    subs = driver.execute_script("return Array.from(document.querySelector('div.plot').data[0].customdata)")
    acc = driver.execute_script("return Array.from(document.querySelector('div.plot').data[0].y)")
    j = int(np.argmax(acc))  # a bar with height to click
    bar = driver.execute_script("return document.querySelectorAll('div.plot .barlayer .trace')[0].querySelectorAll('.point path')[arguments[0]]", j)
    ActionChains(driver).move_to_element(bar).click().perform()
    WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith(f"/a/probes-0/?subtask={subs[j]}"))
    open_page(driver, driver.current_url, plots=1)
    assert set(column(driver, "probe-items", 1)) == {subs[j]}
    assert sorted(column(driver, "probe-items", 0)) == sorted(it.id for it in probe_runs.items if it.subtask == subs[j])
    # the loop's page links to its probe results
    open_page(driver, f"{server.url}/a/loop-0/", plots=2)
    click_and_load(driver, driver.find_element(By.ID, "loop-probes"))
    open_page(driver, driver.current_url, plots=1)
    assert driver.current_url == f"{server.url}/a/loop-0.probes/"
    head = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#probe-items thead th")]
    assert head[-3:] == ["round 0", "round 1", "round 2"]
    assert_no_dialog(driver)


def test_a_typed_lm_query_returns_the_proponents_of_top_k(driver, hf_store):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from gradtrace.explore.app import start
    from gradtrace.explore.artefacts import load_artefacts
    from gradtrace.models.hf import behaviour_by_name
    from gradtrace.models.hf_checkpoints import load_hf_checkpoint
    from gradtrace.models.hf_spec import HFSpec
    from gradtrace.report.lm_report import example_text
    from gradtrace.scoring import Attributor

    running = start(load_artefacts([hf_store.store]))
    try:
        open_page(driver, f"{running.url}/a/store-0/p/query")
        typed = {"prompt": 'Q: show "><img src=x onerror=alert(3)> please', "completion": " yes"}
        driver.find_element(By.ID, "prompt").send_keys(typed["prompt"])
        driver.find_element(By.ID, "completion").send_keys(typed["completion"])
        Select(driver.find_element(By.ID, "behaviour")).select_by_value("logprob")
        Select(driver.find_element(By.ID, "method")).select_by_value("raw")
        driver.find_element(By.NAME, "k").clear()
        driver.find_element(By.NAME, "k").send_keys("6")  # 6 proponents and 6 opponents: all 12 training examples
        click_and_load(driver, driver.find_element(By.ID, "run-query"))
        open_page(driver, driver.current_url, plots=3)
        assert driver.find_element(By.ID, "query-name").text == "typed query"
        assert driver.find_element(By.CSS_SELECTOR, "#result > .view pre.text").text == example_text(typed)
        model, task = HFSpec.saved(hf_store.store).load()
        att = Attributor(hf_store.store, model, task, checkpoint_loader=load_hf_checkpoint)
        for largest, table in ((True, "proponents"), (False, "opponents")):
            top = att.top_k([typed], k=6, largest=largest, behaviour=behaviour_by_name("logprob"))
            assert column(driver, table, 1) == top.ids[0]
            shown = [float(x) for x in column(driver, table, 3)]
            np.testing.assert_allclose(shown, top.scores[0], rtol=1e-3)  # as printed, 4 significant digits
        # every training text literal: example 3 completes with hostile markup
        texts = {r.find_elements(By.TAG_NAME, "td")[1].text: r.find_element(By.CSS_SELECTOR, "pre.text").text
                 for t in ("proponents", "opponents") for r in driver.find_elements(By.CSS_SELECTOR, f"#{t} tbody tr")}
        assert sorted(texts) == sorted(f"ex{i}" for i in range(12)) and hf_store.evil in texts["ex3"]
        for i, text in texts.items():
            assert text == example_text(hf_store.examples[int(i[2:])])
        assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
        assert_no_dialog(driver)
    finally:
        running.stop()


@pytest.mark.parametrize("path", ["/static/..%2f..%2f..%2fetc%2fpasswd", "/a/store-0/..%2f..%2fmanifest.json", "/a/secret/"])
def test_the_browser_gets_nothing_outside_the_artefacts(server, driver, path):
    from selenium.webdriver.common.by import By

    open_page(driver, server.url + path)
    assert driver.find_element(By.TAG_NAME, "h1").text == "404"
    assert "root:" not in driver.page_source and "fingerprint" not in driver.page_source
