"""The search page in a real browser: a headless Chromium (selenium) against a real ``hce-serve http`` process.

On an index folder: type a query and see the hits, open a document from the keyboard and close it with
Escape, apply metadata filters, and check that a title holding ``<script>`` stays text. On a Milvus collection:
the same page searches and filters. Throughout, the page sends only reads (GET and POST /search), never the
write token, and never breaks its own Content-Security-Policy.

Skipped outside CI when Chromium is not installed; under CI (``CI=true``) that is a failure, since
scripts/setup-env.sh installs it (tests/ci_skips.py).
"""

from __future__ import annotations

import json
import shutil
import urllib.parse

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("hnswlib")
pytest.importorskip("uvicorn")
pytest.importorskip("selenium")

from browser import Server, browser_missing, chromium_driver, requests_sent  # noqa: E402
from ci_skips import skip_or_fail_in_ci  # noqa: E402
from page_fixtures import SLASH_ID, XSS_ID, XSS_TEXT, XSS_TITLE, page_corpus, page_index  # noqa: E402,F401
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

TOKEN = "browser-test-write-token"
WAIT = 30  # seconds for any one thing to appear on the page
# Every CSP violation the page causes, recorded before its own scripts run (a DevTools script is exempt).
WATCH_CSP = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
             "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if why := browser_missing():
        skip_or_fail_in_ci(why, "apt-get install chromium chromium-driver")
    driver = chromium_driver(tmp_path_factory.mktemp("chromium-profile"))
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_CSP})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def folder_server(page_index, tmp_path_factory):
    """A writable server with a write token: the page must neither write nor learn the token."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(page_index, root / "idx")
    with Server(["--index", root / "idx"], root / "server.log", env={"HCE_TOKEN": TOKEN}) as srv:
        yield srv


def wait(driver, what, timeout: float = WAIT):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: what(d))


def open_page(driver, server) -> None:
    driver.get(server.url + "/")
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")


def hits(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#hits .hit")


def hit_ids(driver) -> list[str]:
    return [h.find_element(By.CSS_SELECTOR, ".hit-id").text.removeprefix("id ") for h in hits(driver)]


def search(driver, text: str, mode: str | None = None) -> None:
    """Replace the query (typed key by key, as a person does) and wait for its answer."""
    if mode:
        driver.find_element(By.CSS_SELECTOR, f'#modes input[value="{mode}"]').click()
    q = driver.find_element(By.ID, "q")
    q.send_keys(Keys.CONTROL, "a")
    q.send_keys(Keys.DELETE)
    q.send_keys(text)
    wait(driver, lambda d: f"for “{text}”" in d.find_element(By.ID, "status").text)


def filter_select(driver, key: str) -> Select:
    label = driver.find_element(By.XPATH, f'//div[@id="filters"]//label[text()="{key}"]')
    return Select(driver.find_element(By.ID, label.get_attribute("for")))


def metadata_chips(hit) -> set[str]:
    return {c.text for c in hit.find_elements(By.CSS_SELECTOR, ".chip")}


def searches_sent(reqs: list[dict]) -> list[dict]:
    return [json.loads(r["postData"]) for r in reqs if r["method"] == "POST" and r["url"].endswith("/search")]


def check_only_reads(driver, reqs: list[dict], server) -> None:
    for r in reqs:
        url = urllib.parse.urlsplit(r["url"])
        assert f"{url.scheme}://{url.netloc}" == server.url, r["url"]  # nothing from another origin
        assert r["method"] == "GET" or (r["method"] == "POST" and url.path == "/search"), (r["method"], r["url"])
        assert not {h.lower() for h in r["headers"]} & {"authorization", "cookie"}, r["headers"]
    assert TOKEN not in driver.page_source
    assert driver.execute_script("return window.__csp") == []


def test_search_open_filter_and_markup_stays_text(browser, folder_server, tmp_path):
    d, srv = browser, folder_server
    open_page(d, srv)
    reqs = requests_sent(d, srv.url)
    # the index as the page shows it: every mode served, filters from its fields, its statistics
    assert [m.is_enabled() for m in d.find_elements(By.CSS_SELECTOR, "#modes input")] == [True, True, True]
    assert [lab.text for lab in d.find_elements(By.CSS_SELECTOR, "#filters label")] == ["lang", "topic", "year"]
    assert "66" in d.find_element(By.ID, "stats").text and "66 documents" in d.find_element(By.ID, "summary").text
    assert d.switch_to.active_element == d.find_element(By.ID, "q")  # ready to type

    # 1. type a query: hits appear once typing pauses (one search or two, not one per key)
    search(d, "protein enzyme", mode="dense")
    reqs += requests_sent(d, srv.url)
    assert 1 <= len(searches_sent(reqs)) <= 3, searches_sent(reqs)
    assert searches_sent(reqs)[-1] == {"query": "protein enzyme", "k": 10, "fields": ["title", "text", "metadata"],
                                       "mode": "dense"}
    assert len(hits(d)) == 10 and "10 results" in d.find_element(By.ID, "status").text
    first = hits(d)[0]
    assert first.find_element(By.CSS_SELECTOR, ".score").text.startswith("score ")
    assert len(set(hit_ids(d))) == 10
    marks = {m.text.lower() for m in d.find_elements(By.CSS_SELECTOR, "#hits mark")}
    assert marks and all(m.startswith(("protein", "enzyme")) for m in marks), marks
    shot = tmp_path / "results.png"
    assert d.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    # 2. open a document from the keyboard (ArrowDown to a hit, Enter); Escape closes it, focus returns
    rank = next(i for i, h in enumerate(hit_ids(d), 1) if "/" not in h)  # one GET /documents/{id} can carry
    for _ in range(rank):
        d.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    link = d.switch_to.active_element
    assert link.get_attribute("data-rank") == str(rank)
    doc_id = hit_ids(d)[rank - 1]
    link.send_keys(Keys.ENTER)
    wait(d, lambda d: d.execute_script("return document.getElementById('doc').open")
         and d.find_element(By.ID, "doc").get_attribute("aria-busy") is None)
    stored = srv.get(f"/documents/{urllib.parse.quote(doc_id, safe='')}")
    assert d.find_element(By.ID, "doc-title").text == stored["title"]
    assert d.find_element(By.ID, "doc-id").text == doc_id
    assert d.find_element(By.ID, "doc-text").text == stored["text"]
    assert "topic" in d.find_element(By.ID, "doc-meta").text and not d.find_element(By.ID, "doc-error").is_displayed()
    assert d.switch_to.active_element == d.find_element(By.ID, "doc-close")
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait(d, lambda d: not d.execute_script("return document.getElementById('doc').open"))
    assert d.switch_to.active_element.get_attribute("data-rank") == str(rank)
    # and with the mouse: a click opens, the close button closes
    hits(d)[1].find_element(By.CSS_SELECTOR, ".hit-title a").click()
    wait(d, lambda d: d.find_element(By.ID, "doc-id").text == hit_ids(d)[1])
    d.find_element(By.ID, "doc-close").click()
    wait(d, lambda d: not d.execute_script("return document.getElementById('doc').open"))

    # 3. filters: a topic, then a year too (sent as the number the index holds); clearing them widens again
    filter_select(d, "topic").select_by_value('"climate"')
    wait(d, lambda d: "1 filter" in d.find_element(By.ID, "status").text)
    assert hits(d) and all("topic: climate" in metadata_chips(h) for h in hits(d))
    filter_select(d, "year").select_by_value("2021")
    wait(d, lambda d: "2 filters" in d.find_element(By.ID, "status").text)
    assert hits(d) and all({"topic: climate", "year: 2021"} <= metadata_chips(h) for h in hits(d))
    reqs += requests_sent(d, srv.url)
    assert searches_sent(reqs)[-1]["filter"] == {"topic": "climate", "year": 2021}
    assert "filter=" in d.current_url  # the state is in the URL: a reload or a shared link keeps it
    d.find_element(By.ID, "clear-filters").click()
    wait(d, lambda d: "filter" not in d.find_element(By.ID, "status").text and len(hits(d)) == 10)

    # 4. a title holding <script> stays text, in the hit and in the opened document; its text's <img> too
    search(d, "script window xss", mode="lexical")
    assert hit_ids(d)[0] == XSS_ID
    title = hits(d)[0].find_element(By.CSS_SELECTOR, ".hit-title a")
    assert title.text == XSS_TITLE
    assert d.find_elements(By.CSS_SELECTOR, "#hits script, #hits img") == []
    title.click()
    wait(d, lambda d: d.find_element(By.ID, "doc-id").text == XSS_ID
         and d.find_element(By.ID, "doc").get_attribute("aria-busy") is None)
    assert d.find_element(By.ID, "doc-title").text == XSS_TITLE and d.find_element(By.ID, "doc-text").text == XSS_TEXT
    assert d.find_elements(By.CSS_SELECTOR, "#doc script, #doc img") == []
    assert d.execute_script("return window.__xss") is None
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait(d, lambda d: not d.execute_script("return document.getElementById('doc').open"))

    # an id that GET /documents/{id} cannot carry ("/"): the view says so and shows the hit's own fields
    search(d, "rotation", mode="lexical")
    assert hit_ids(d)[0] == SLASH_ID
    hits(d)[0].find_element(By.CSS_SELECTOR, ".hit-title a").click()
    wait(d, lambda d: d.find_element(By.ID, "doc-error").is_displayed())
    assert d.find_element(By.ID, "doc-title").text == "soil crop rotation"
    d.switch_to.active_element.send_keys(Keys.ESCAPE)

    reqs += requests_sent(d, srv.url)
    check_only_reads(d, reqs, srv)
    assert d.execute_script("return window.__xss") is None
    assert srv.get("/stats")["pending_log_records"] == 0  # nothing was written


def test_the_page_on_a_milvus_collection(browser, page_index, tiny_export, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from click.testing import CliRunner

    from hce_serve.cli import main

    db = tmp_path / "page.db"
    res = CliRunner().invoke(main, ["index", "export-milvus", "--index", str(page_index), "--uri", str(db),
                                    "--collection", "docs"])
    assert res.exit_code == 0, res.output
    args = ["--milvus", db, "--collection", "docs", "--model", tiny_export, "--read-only"]
    with Server(args, tmp_path / "server.log") as srv:
        d = browser
        open_page(d, srv)
        served = srv.get("/search/options")["modes"]
        assert [m.get_attribute("value") for m in d.find_elements(By.CSS_SELECTOR, "#modes input")
                if m.is_enabled()] == served
        assert "Milvus" in d.find_element(By.ID, "summary").text
        assert [lab.text for lab in d.find_elements(By.CSS_SELECTOR, "#filters label")] == ["lang", "topic", "year"]
        search(d, "vaccine immune antibody", mode="dense")
        assert len(hits(d)) == 10
        filter_select(d, "lang").select_by_value('"de"')
        wait(d, lambda d: "1 filter" in d.find_element(By.ID, "status").text)
        assert hits(d) and all("lang: de" in metadata_chips(h) for h in hits(d))
        hits(d)[0].find_element(By.CSS_SELECTOR, ".hit-title a").click()
        wait(d, lambda d: d.find_element(By.ID, "doc").get_attribute("aria-busy") is None
             and d.execute_script("return document.getElementById('doc').open"))
        assert d.find_element(By.ID, "doc-id").text == hit_ids(d)[0] and d.find_element(By.ID, "doc-text").text
        d.switch_to.active_element.send_keys(Keys.ESCAPE)
        check_only_reads(d, requests_sent(d, srv.url), srv)
