"""The review page in a real browser (Debian's chromium + chromium-driver, driven by Selenium),
against a database written by a real `edge-app run` over real images, with two samples.

Screenshots go to $LEUKEDGE_SCREENSHOT_DIR (docs/images when the docs are refreshed), else to the
test's temporary folder.
"""

from __future__ import annotations

import csv
import http.cookiejar
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, REPO, run_cli

# A real edge-app run, a review server and chromium per module: the slow lane.
pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MODEL = REPO / "models" / "model_int8.tflite"
SAMPLES = {"S-ALPHA": "Pre", "S-BRAVO": "Benign"}  # sample -> class folder of its fields
STATEMENT = "not a diagnostic device"


def text_after_submit(browser, element_id: str, expected: str | None = None) -> str:
    """The element's text on the page a form POST leads to.

    Right after click() the old page can still be current: an element found there goes stale
    when the new page loads. Wait (10 s at most) for the new page's element: one that holds
    `expected`, or, without it, one found after the old page was replaced.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def current_text(driver):
        text = driver.find_element(By.ID, element_id).text
        return text if expected is None or text == expected else False

    wait = WebDriverWait(browser, 10, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(current_text)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`edge-app serve` in a subprocess, on a free loopback port."""

    def __init__(self, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(BIN / "edge-app"), "serve", "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"edge-app serve exited: {self.process.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("edge-app serve did not start within 60 s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def clinic(tmp_path_factory, data_dir) -> dict:
    """A real `edge-app run` per sample (real images, the released model, frames saved)."""
    root = tmp_path_factory.mktemp("clinic")
    db, frames = root / "results.sqlite", root / "frames"
    for sample_id, folder in SAMPLES.items():
        slides = root / f"slides-{sample_id}"
        slides.mkdir()
        for path in sorted((data_dir / "Original" / folder).glob("*.jpg"))[:5]:
            shutil.copy(path, slides / path.name)
        run_cli(
            "edge-app",
            "run",
            "--model",
            MODEL,
            "--source",
            slides,
            "--headless",
            "--db",
            db,
            "--save-dir",
            frames,
            "--sample-id",
            sample_id,
            "--operator",
            "tech-1",
            "--site",
            "Clinic-North",
            timeout=180,
        )
    secret = root / "secret.txt"  # a file outside the save folder that must never be served
    secret.write_text("PATIENT-SECRET\n")
    return {"root": root, "db": db, "frames": frames, "secret": secret}


@pytest.fixture(scope="module")
def server(clinic):
    running = Server("--db", str(clinic["db"]), "--save-dir", str(clinic["frames"]))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM and CHROMEDRIVER, "install Debian's chromium and chromium-driver (see .ci/run)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="leukedge-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(
        os.environ.get("LEUKEDGE_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots")
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def reviews(db: Path) -> list[tuple]:
    connection = sqlite3.connect(db)
    rows = connection.execute(
        "SELECT sample_id, reviewer, action, reason, after FROM reviews ORDER BY id"
    ).fetchall()
    connection.close()
    return rows


def fetch(url: str, data: dict | None = None, opener=None) -> tuple[int, bytes, dict]:
    opener = opener or urllib.request.build_opener()
    body = None if data is None else urllib.parse.urlencode(data).encode()
    try:
        with opener.open(urllib.request.Request(url, data=body), timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def test_list_review_history_and_report_in_a_real_browser(clinic, server, browser, shots):
    from pypdf import PdfReader
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server.url + "/")
    listed = [
        row.get_attribute("data-sample")
        for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-sample]")
    ]
    assert sorted(listed) == sorted(SAMPLES)
    assert (
        browser.find_element(By.CSS_SELECTOR, "link[rel=stylesheet]")
        .get_attribute("href")
        .startswith(server.url)
    )
    browser.save_screenshot(str(shots / "review-list.png"))
    # The queue of what waits for an expert: both samples, before any review.
    browser.find_element(By.ID, "show-to-review").click()
    assert text_after_submit(browser, "show-to-review", "To review (2)") == "To review (2)"
    queued = browser.find_elements(By.CSS_SELECTOR, "tr[data-sample]")
    assert sorted(row.get_attribute("data-sample") for row in queued) == sorted(SAMPLES)
    browser.get(server.url + "/")

    # Confirm S-BRAVO through the page.
    browser.find_element(By.LINK_TEXT, "S-BRAVO").click()
    # click() may return before the sample page has replaced the list, and thumbnails load after
    # the page: wait (10 s at most) for both rather than racing them.
    wait = WebDriverWait(browser, 10, ignored_exceptions=[StaleElementReferenceException])
    assert wait.until(lambda driver: driver.find_elements(By.ID, "no-history"))

    def thumbnails_loaded(driver):
        images = driver.find_elements(By.CSS_SELECTOR, ".frame img")
        loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
        return images if images and all(driver.execute_script(loaded, i) for i in images) else False

    thumbs = wait.until(thumbnails_loaded)
    assert len(thumbs) == 5
    # Each field's OOD score beside the limit the released model judged it by.
    limit = json.loads((MODEL.parent / "manifest.json").read_text())["variants"]["int8"]["trust"]
    limit = f"/ limit {limit['ood']['threshold']:.0f}"
    fields = [f.text for f in browser.find_elements(By.CSS_SELECTOR, ".frame")]
    assert len(fields) == 5 and all(re.search(rf"OOD \d+ {limit}", text) for text in fields)
    browser.set_window_size(1280, 1900)  # the whole page: result, review form, history, fields
    browser.save_screenshot(str(shots / "review-sample.png"))
    browser.set_window_size(1280, 1000)
    browser.find_element(By.ID, "reviewer").send_keys("Dr Vega")
    browser.find_element(By.ID, "reason").send_keys("Benign morphology on every field")
    browser.find_element(By.ID, "confirm").click()
    notice = text_after_submit(browser, "notice")
    assert "Review saved" in notice and "Next to review: S-ALPHA" in notice
    assert browser.find_element(By.ID, "status").text == "confirmed"

    # Override S-ALPHA through the page, reached by the notice's link to the next in the queue.
    browser.find_element(By.ID, "next-to-review").click()
    assert wait.until(lambda driver: driver.current_url.endswith("/samples/S-ALPHA"))
    machine = browser.find_element(By.ID, "machine-result").text
    browser.find_element(By.ID, "reviewer").send_keys("Dr Okafor")
    Select(browser.find_element(By.ID, "override_label")).select_by_value("Pro-B")
    browser.find_element(By.ID, "reason").send_keys("Blasts look Pro-B at higher magnification")
    browser.find_element(By.ID, "override").click()
    assert text_after_submit(browser, "status", "overridden") == "overridden"
    assert "Nothing else waits for a review" in browser.find_element(By.ID, "notice").text

    # Both reviews in the history after a reload; the machine result itself is unchanged.
    browser.refresh()
    history = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#history .review-row")]
    assert len(history) == 1 and "Dr Okafor" in history[0] and "Pro-B" in history[0]
    assert browser.find_element(By.ID, "machine-result").text == machine
    browser.get(server.url + "/samples/S-BRAVO")
    history = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#history .review-row")]
    assert len(history) == 1 and "Dr Vega" in history[0] and "confirm" in history[0]
    browser.set_window_size(1280, 1900)
    browser.save_screenshot(str(shots / "review-history.png"))
    browser.set_window_size(1280, 1000)
    stored = reviews(clinic["db"])
    assert [(r[0], r[1], r[2]) for r in stored] == [
        ("S-BRAVO", "Dr Vega", "confirm"),
        ("S-ALPHA", "Dr Okafor", "override"),
    ]
    assert json.loads(stored[1][4])["label"] == "Pro-B"
    # Finding one sample by part of its ID, on the list page.
    browser.get(server.url + "/")
    browser.find_element(By.ID, "q").send_keys("alp")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda driver: "q=alp" in driver.current_url)
    found = browser.find_elements(By.CSS_SELECTOR, "tr[data-sample]")
    assert [row.get_attribute("data-sample") for row in found] == ["S-ALPHA"]
    browser.get(server.url + "/")
    statuses = {
        row.get_attribute("data-sample"): row.find_element(By.CSS_SELECTOR, ".status").text
        for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-sample]")
    }
    assert statuses == {"S-ALPHA": "overridden", "S-BRAVO": "confirmed"}
    assert browser.find_element(By.ID, "show-to-review").text == "To review (0)"
    browser.get(server.url + "/?show=to-review")
    assert not browser.find_elements(By.CSS_SELECTOR, "tr[data-sample]")
    assert "Nothing waits for a review" in browser.find_element(By.TAG_NAME, "main").text

    # Phone-sized screen: the same page, readable without sideways scrolling.
    browser.set_window_size(390, 844)
    browser.get(server.url + "/samples/S-ALPHA")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 400
    browser.save_screenshot(str(shots / "review-phone.png"))
    browser.set_window_size(1280, 1000)

    # The report linked from the sample page: PDF text names the sample, the model sha256 and
    # the statement.
    link = browser.find_element(By.ID, "report-pdf").get_attribute("href")
    status, body, headers = fetch(link)
    assert status == 200 and headers["Content-Type"] == "application/pdf"
    pdf = clinic["root"] / "S-ALPHA.pdf"
    pdf.write_bytes(body)
    text = " ".join(page.extract_text() for page in PdfReader(pdf).pages)
    sha256 = (
        sqlite3.connect(clinic["db"])
        .execute("SELECT DISTINCT model_sha256 FROM results")
        .fetchone()[0]
    )
    for expected in (
        "S-ALPHA",
        sha256,
        STATEMENT,
        "Clinic-North",
        "tech-1",
        "Dr Okafor",
        "Blasts look Pro-B",
        "Recorded review: overridden to Pro-B",
        "Signature",
    ):
        assert expected in text.replace("\n", " "), expected


def test_api_lists_samples_with_frames_and_decisions(server):
    status, body, headers = fetch(server.url + "/api/samples")
    assert status == 200 and headers["Content-Type"] == "application/json"
    items = {item["sample_id"]: item for item in json.loads(body)}
    assert set(items) == set(SAMPLES)
    assert all(
        item["n_frames"] == 5 and item["decision"] in ("label", "uncertain", "unknown")
        for item in items.values()
    )
    status, body, _ = fetch(server.url + "/api/frames?sample_id=S-ALPHA")
    assert status == 200 and len(json.loads(body)) == 5
    status, body, _ = fetch(server.url + "/api/samples/NOPE")
    assert status == 404 and "NOPE" in json.loads(body)["error"]


def test_samples_csv_download_is_the_export_file(clinic, server, tmp_path):
    status, page, _ = fetch(server.url + "/")
    assert status == 200 and b'href="/export/samples.csv"' in page
    status, body, headers = fetch(server.url + "/export/samples.csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"].startswith('attachment; filename="leukedge-samples-')
    exported = tmp_path / "samples.csv"
    run_cli("edge-app", "export", "--db", clinic["db"], "--samples-csv", exported, timeout=60)
    assert body == exported.read_bytes()
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert {row["sample_id"] for row in rows} == set(SAMPLES)
    assert all(row["n_frames"] == "5" and row["site"] == "Clinic-North" for row in rows)


def test_post_without_csrf_token_and_override_without_reason_are_rejected(clinic, server):
    before = reviews(clinic["db"])
    status, body, _ = fetch(
        server.url + "/review/S-ALPHA",
        {"action": "confirm", "reason": "no token", "reviewer": "mallory"},
    )
    assert status == 403 and b"CSRF" in body
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    status, page, headers = fetch(server.url + "/samples/S-ALPHA", opener=opener)
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    token = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
    status, _, _ = fetch(
        server.url + "/review/S-ALPHA",
        {"action": "confirm", "reason": "x", "reviewer": "mallory", "csrf_token": "forged"},
        opener=opener,
    )
    assert status == 403
    status, body, _ = fetch(
        server.url + "/review/S-ALPHA",
        {
            "action": "override",
            "reason": "  ",
            "override_label": "Benign",
            "reviewer": "dr",
            "csrf_token": token,
        },
        opener=opener,
    )
    assert status == 400 and b"reason is required" in body
    assert reviews(clinic["db"]) == before  # nothing written by any of them


def test_no_file_outside_the_save_folder_is_served(clinic, server):
    from leukedge.edge_app.storage import COLUMN_NAMES, ResultStore

    store = ResultStore(clinic["db"])  # a frame whose recorded path lies outside --save-dir
    row = {name: None for name in COLUMN_NAMES[1:]}
    row.update(
        timestamp_utc="2026-01-01T00:00:00Z",
        mode="live",
        source="x",
        decision="unfit",
        quality_ok=0,
        model_file="m",
        model_sha256="0" * 64,
        model_verified=0,
        runtime="r",
        app_version="0",
        image_path=str(clinic["secret"]),
    )
    outside = store.add(row)
    store.close()
    secret = clinic["secret"]
    for path in (
        f"/frames/{outside}/image",
        f"/frames/{outside}/thumb",
        "/frames/99999/image",
        f"/static/../{os.path.relpath(secret, Path(__file__).parent)}",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        f"/frames/..%2f..%2f{secret.name}/image",
        "/frames/" + urllib.parse.quote(str(secret), safe="") + "/image",
        "/samples/NOPE",
    ):
        status, body, headers = fetch(server.url + path)
        assert status == 404, path
        assert b"PATIENT-SECRET" not in body and b"root:" not in body
        assert headers["Content-Type"].startswith("text/html") and b"Back to the samples" in body, (
            path
        )


def test_read_only_server_shows_but_accepts_no_review(clinic, browser):
    from selenium.webdriver.common.by import By

    running = Server("--db", str(clinic["db"]), "--read-only")
    try:
        browser.get(running.url + "/samples/S-ALPHA")
        assert not browser.find_elements(By.ID, "confirm")
        assert browser.find_elements(By.CSS_SELECTOR, "#history .review-row")
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        _, page, _ = fetch(running.url + "/samples/S-ALPHA", opener=opener)
        token = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
        status, body, _ = fetch(
            running.url + "/review/S-ALPHA",
            {"action": "confirm", "reason": "r", "reviewer": "x", "csrf_token": token},
            opener=opener,
        )
        assert status == 403 and b"read-only" in body
    finally:
        running.stop()


def test_accounts_login_and_rate_limit(clinic, browser):
    from selenium.webdriver.common.by import By

    users = clinic["root"] / "users.json"
    run_cli(
        "edge-app",
        "users",
        "add",
        "dr-vega",
        "--users",
        users,
        input="a long passphrase\n",
        timeout=60,
    )
    running = Server("--db", str(clinic["db"]), "--users", str(users))
    try:
        status, body, _ = fetch(running.url + "/api/samples")
        assert status == 401
        # The spreadsheet export is patient data too: no file without a login.
        status, body, headers = fetch(running.url + "/export/samples.csv")
        assert b"sample_id" not in body and "attachment" not in headers.get(
            "Content-Disposition", ""
        )
        browser.delete_all_cookies()
        browser.get(running.url + "/samples/S-BRAVO")
        assert "/login" in browser.current_url
        browser.find_element(By.ID, "name").send_keys("dr-vega")
        browser.find_element(By.ID, "password").send_keys("a long passphrase")
        browser.find_element(By.ID, "login").click()
        assert browser.current_url.endswith("/samples/S-BRAVO")
        assert not browser.find_elements(By.ID, "reviewer")  # the logged-in name is the reviewer
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        _, page, _ = fetch(running.url + "/login", opener=opener)
        token = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
        codes = [
            fetch(
                running.url + "/login",
                {"name": "dr-vega", "password": f"guess {n}", "csrf_token": token},
                opener=opener,
            )[0]
            for n in range(6)
        ]
        assert codes == [401] * 5 + [429]
        status, _, _ = fetch(
            running.url + "/login",
            {"name": "dr-vega", "password": "a long passphrase", "csrf_token": token},
            opener=opener,
        )
        assert status == 429  # still locked out, even with the right password
    finally:
        running.stop()
