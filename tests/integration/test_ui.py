"""The /ui page in a real headless browser (Debian's chromium, driven by Playwright) against a
real `bentoml serve` with API keys on: what the page shows is what /classify and /metadata
answer, errors are shown per file, a wrong key says so, and nothing leaves the origin."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import bentoml
import httpx
import pytest

from devtools.ui_screenshot import (
    classify_files,
    launch_chromium,
    open_ui,
    screenshot,
    shown_errors,
    shown_labels,
)
from serving.ui import CONTENT_SECURITY_POLICY

from ..support.tools import chromium
from .conftest import bentoml_server

API_KEY = "ui-test-key-0123456789abcdef"
NOT_AN_IMAGE = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just some notes\n"}


@pytest.fixture(scope="module")
def ui_server(single_label_bento, session_dir) -> Iterator[str]:
    with bentoml_server(
        str(single_label_bento.tag),
        session_dir / "logs" / "ui-server.log",
        extra_env={"CLASSIFIER_API_KEYS": API_KEY},
    ) as url:
        yield url


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return chromium()


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable=chromium_path)
        yield browser
        browser.close()


class Recorded:
    """What a page did: every request's URL and every console message."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.console: list[str] = []

    def foreign(self, origin: str) -> list[str]:
        """Requests to anything but ``origin`` (blob:/data: URLs are the page's own)."""
        return [
            url
            for url in self.requests
            if not url.startswith(("blob:", "data:")) and _origin(url) != origin
        ]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture
def page(browser, ui_server):
    """A fresh browser context (empty sessionStorage) that records requests and the console; at
    the end, no request may have gone to another origin and no CSP violation may be logged."""
    context = browser.new_context()
    page = context.new_page()
    recorded = Recorded()
    page.on("request", lambda request: recorded.requests.append(request.url))
    page.on("console", lambda message: recorded.console.append(message.text))
    page.recorded = recorded
    yield page
    context.close()
    assert recorded.requests, "the page made no request at all"
    assert recorded.foreign(_origin(ui_server)) == []
    assert not [m for m in recorded.console if "Content Security Policy" in m], recorded.console


def _classify(url: str, path) -> list[dict]:
    with bentoml.SyncHTTPClient(url, token=API_KEY) as client:
        return client.classify(images=[path])


def test_the_page_loads_without_a_key_with_its_security_headers(ui_server):
    for path in ("/ui/", "/ui/ui.js", "/ui/ui.css"):
        response = httpx.get(ui_server + path, timeout=10)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.post(ui_server + "/metadata", timeout=10).status_code == 401


def test_two_images_show_the_labels_classify_answers(page, ui_server, png_images):
    files = [png_images[0], png_images[-1]]  # two different classes
    open_ui(page, url=ui_server, key=API_KEY)
    classify_files(page, files)
    shown = shown_labels(page)
    assert set(shown) == {p.name for p in files}
    for path in files:
        [expected] = _classify(ui_server, path)
        labels = [(item["label"], item["score"]) for item in expected["labels"]]
        assert [label for label, _ in shown[path.name]] == [label for label, _ in labels]
        assert [score for _, score in shown[path.name]] == pytest.approx(
            [score for _, score in labels], abs=1e-5
        )
    assert page.is_hidden("#banner")


def test_the_lineage_shown_is_the_metadata(page, ui_server, single_label_bento):
    open_ui(page, url=ui_server, key=API_KEY)
    with bentoml.SyncHTTPClient(ui_server, token=API_KEY) as client:
        metadata = client.metadata()
    shown = page.eval_on_selector_all(
        "#lineage-fields [data-field]",
        "fields => Object.fromEntries(fields.map(f => [f.dataset.field, f.textContent]))",
    )
    expected = {**metadata["model"], "task": metadata["task"]}
    expected["architecture"] = metadata["architecture"]
    assert shown == expected
    assert shown["tag"] == str(single_label_bento.tag)
    assert shown["mlflow_version"] and shown["mlflow_run_id"]


def test_a_bad_file_shows_its_error_and_the_good_one_its_labels(page, ui_server, png_images):
    open_ui(page, url=ui_server, key=API_KEY)
    good = {
        "name": png_images[1].name,
        "mimeType": "image/png",
        "buffer": png_images[1].read_bytes(),
    }
    classify_files(page, [good, NOT_AN_IMAGE])  # Playwright takes paths or payloads, not both
    problem = httpx.post(
        ui_server + "/classify",
        headers={"Authorization": f"Bearer {API_KEY}"},
        files={"images": (NOT_AN_IMAGE["name"], NOT_AN_IMAGE["buffer"], "text/plain")},
        timeout=30,
    ).json()
    errors = shown_errors(page)
    assert list(errors) == ["notes.txt"]
    assert problem["title"] in errors["notes.txt"]
    assert problem["errors"][0]["reason"] in errors["notes.txt"]
    assert shown_labels(page)[png_images[1].name]  # the good file still got its labels


def test_a_wrong_key_says_so(page, ui_server, png_images):
    open_ui(page, url=ui_server, key="not-the-key-0123456789")
    assert "API key missing or wrong" in page.inner_text("#lineage-status")
    classify_files(page, [png_images[2]])
    assert "API key missing or wrong" in shown_errors(page)[png_images[2].name]
    assert "401" in page.inner_text("#banner")


def test_the_key_is_kept_for_the_session_only(page, ui_server):
    open_ui(page, url=ui_server, key=API_KEY)
    page.reload()
    assert page.input_value("#api-key") == API_KEY
    assert page.evaluate("() => Object.keys(localStorage).length") == 0  # nothing persistent


def test_the_screenshot_script_captures_the_page(browser, ui_server, png_images, tmp_path):
    # make ui-screenshot runs the same in a chromium of its own (capture)
    out = screenshot(
        browser, url=ui_server, images=png_images[:3], out=tmp_path / "ui.png", key=API_KEY
    )
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert out.stat().st_size > 10_000
