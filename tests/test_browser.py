"""The search page in a real browser (Chromium driven by Playwright) against the real stack: TorchServe,
a gunicorn gateway and the sample index built through TorchServe."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect, sync_playwright

from modelserver.process import REPO
from tests.conftest import DEMO_CSV, demo_image

pytestmark = pytest.mark.integration

IMAGES = REPO / "data" / "demo" / "images"
WATCH = "Fastrack Women Denim Analogue Steel Watch"  # product 10109


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if path is None:
        message = "Chromium not found: apt-get install chromium, or set CHROMIUM=/path/to/chrome"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (.ci/run): missing there is a defect, not a skip
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def gateway(start_gateway, demo_index, torchserve):
    return start_gateway(INDEX_URI=str(demo_index), TORCHSERVE_URL=torchserve.url, ALLOW_PRIVATE_URLS="1",
                         CATALOG_DIR=str(DEMO_CSV.parent))


@pytest.fixture
def page(browser, gateway):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(gateway.url + "/")
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_choose_a_file_and_search(page):
    page.set_input_files("#file", str(IMAGES / "10109.jpg"))
    # The preview has no size until the browser has decoded the picture: wait for it, don't sample once.
    expect(page.locator("#preview")).to_be_visible()
    assert page.inner_text("#drop-text") == "10109.jpg"
    page.click("button[type=submit]")
    page.wait_for_selector(".results")
    first = page.locator(".card").first
    assert first.locator("h2").inner_text() == WATCH and first.locator(".score").inner_text() == "100%"
    assert first.locator(".badge").inner_text() == "Exact match" and page.locator(".card .badge").count() == 1
    assert "Looks like Watches" in page.inner_text(".guess")
    categories = page.locator(".card .cat").all_inner_texts()
    assert categories and categories[0] == "Watches"


def _drop_file(page, selector: str, event: str, blob: bytes, name: str) -> None:
    """Dispatch a drop or paste event carrying a file, as the browser does for a real drag or Ctrl-V."""
    page.evaluate(
        """([selector, event, data, name]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
            const target = document.querySelector(selector);
            const ev = event === 'paste' ? new ClipboardEvent('paste', {clipboardData: dt, bubbles: true})
                                         : new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true});
            target.dispatchEvent(ev);
        }""",
        [selector, event, base64.b64encode(blob).decode(), name],
    )


@pytest.mark.parametrize("event,selector", [("drop", "#drop"), ("paste", "body")])
def test_drop_or_paste_a_photo_then_search(page, event, selector):
    _drop_file(page, selector, event, demo_image("10140"), "watch.jpg")
    expect(page.locator("#preview")).to_be_visible()
    assert page.inner_text("#drop-text") == "watch.jpg"
    assert page.evaluate("document.getElementById('file').files.length") == 1
    page.click("button[type=submit]")
    page.wait_for_selector(".results")
    assert page.locator(".card h2").first.inner_text() == "Esprit Women Rocks Houston Black Silver Watches"


def test_slider_label_and_settings_carry_over(page):
    page.locator("#thr").fill("55")
    assert page.inner_text("#thr-out") == "55%"
    page.fill("input[name=top_k]", "5")
    page.set_input_files("#file", str(IMAGES / "10109.jpg"))
    page.click("button[type=submit]")
    page.wait_for_selector(".results")
    assert "at ≥ 55% similarity" in page.inner_text(".summary")
    assert page.locator(".card").count() <= 5
    assert page.input_value("#thr") == "55" and page.input_value("input[name=top_k]") == "5"


def test_untick_category_first_ranks_by_similarity_alone(page):
    page.uncheck("input[type=checkbox][name=category_first]")
    page.fill("input[name=top_k]", "30")
    page.locator("#thr").fill("0")
    page.set_input_files("#file", str(IMAGES / "10109.jpg"))
    page.click("button[type=submit]")
    page.wait_for_selector(".results")
    assert page.locator(".guess").count() == 0 and page.locator(".divider").count() == 0
    scores = [float(s.rstrip("%")) for s in page.locator(".card .score").all_inner_texts()]
    assert len(scores) == 30 and scores == sorted(scores, reverse=True)
    assert not page.is_checked("input[type=checkbox][name=category_first]")  # stays as the shopper left it


def test_more_like_this_and_back_to_similarity_alone(page):
    page.set_input_files("#file", str(IMAGES / "10109.jpg"))
    page.click("button[type=submit]")
    page.wait_for_selector(".results")
    page.locator(".card").first.get_by_text("More like this").click()
    page.wait_for_url("**/products/10109/similar")
    assert WATCH in page.inner_text(".anchor")
    assert "Watches come first, like the product" in " ".join(page.inner_text(".guess").split())
    assert WATCH not in page.locator(".card h2").all_inner_texts()
    page.get_by_text("Rank everything by similarity alone").click()
    page.wait_for_url("**category_first=0**")
    assert page.locator(".guess").count() == 0 and page.locator(".card").count() > 0


def test_image_url_search(page, http_server):
    url = http_server.add("/q/watch.jpg", demo_image("10140"))
    page.fill("input[name=image_url]", url)
    page.click("button[type=submit]")
    page.wait_for_selector(".results")
    assert page.locator(".card h2").first.inner_text() == "Esprit Women Rocks Houston Black Silver Watches"
    assert page.input_value("input[name=image_url]") == url


@pytest.mark.parametrize("name,blob,message", [
    ("notes.jpg", b"this is not an image", "not a supported image"),
    ("empty.jpg", b"", "empty"),
])
def test_a_bad_file_shows_a_clear_message(page, name, blob, message):
    page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": blob}])
    page.click("button[type=submit]")
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert message in alert.inner_text()
    assert "Traceback" not in page.content()
    assert page.locator("form#search").is_visible()  # the shopper can try again from the same page


def test_a_non_image_is_refused_before_upload_and_a_photo_can_be_removed(page):
    """The browser checks the chosen file's type before anything is sent, and "Remove photo" clears it."""
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    expect(page.locator("#file-error")).to_be_visible()
    assert "“notes.txt” is not a photo we can read" in page.inner_text("#file-error")
    assert page.evaluate("document.getElementById('file').files.length") == 0 and page.is_hidden("#preview")
    assert page.is_hidden("#clear")
    page.set_input_files("#file", str(IMAGES / "10109.jpg"))
    expect(page.locator("#preview")).to_be_visible()
    assert page.is_hidden("#file-error") and page.is_visible("#clear")
    page.click("#clear")
    assert page.evaluate("document.getElementById('file').files.length") == 0
    assert page.is_hidden("#preview") and page.is_hidden("#clear")
    assert "choose a file" in page.inner_text("#drop-text")
