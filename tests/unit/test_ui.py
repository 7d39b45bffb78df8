"""The /ui page in-process: its static files behind the real RequestGuard, the security headers
on every file, nothing loaded from another origin, and the guard's open-path rule (the page is
open, the API it calls is not)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from serving.guard import RequestGuard, is_open_path
from serving.ui import CONTENT_SECURITY_POLICY, UI_DIR, UI_PATH, UIFiles

KEY = "unit-test-key-0123456789"
PAGE_FILES = {"index.html": "text/html", "ui.js": "javascript", "ui.css": "text/css"}
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def classify(request) -> JSONResponse:
    return JSONResponse([{"labels": []}])


@pytest.fixture
def app() -> RequestGuard:
    """The page mounted as service.py mounts it, beside a stand-in API, behind the guard."""
    inner = Starlette(
        routes=[Route("/classify", classify, methods=["POST"]), Mount(UI_PATH, UIFiles())]
    )
    return RequestGuard(inner, api_keys=[KEY], max_body_bytes=1 << 20)


async def _request(app, method: str, path: str, **kwargs) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kwargs)


async def _raw_get(app, raw_path: str) -> int:
    """GET a path exactly as given (httpx would normalise `..` away); the status answered."""
    path = raw_path.replace("%2f", "/").replace("%2e", ".")  # what uvicorn decodes
    scope = {
        "type": "http", "method": "GET", "path": path, "raw_path": raw_path.encode(),
        "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http",
        "server": ("test", 80), "client": ("127.0.0.1", 1), "root_path": "",
    }  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


@pytest.mark.parametrize(("name", "media_type"), PAGE_FILES.items())
async def test_every_file_is_served_without_a_key_with_csp_and_nosniff(app, name, media_type):
    response = await _request(app, "GET", f"{UI_PATH}/{name}")
    assert response.status_code == 200
    assert media_type in response.headers["content-type"]
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (UI_DIR / name).read_bytes()


async def test_the_page_is_index_html_at_ui_slash_and_ui_redirects_there(app):
    page = await _request(app, "GET", f"{UI_PATH}/")
    assert page.status_code == 200
    assert page.content == (UI_DIR / "index.html").read_bytes()
    assert "default-src 'self'" in page.headers["content-security-policy"]
    redirect = await _request(app, "GET", UI_PATH)
    assert redirect.status_code in (307, 308)
    assert redirect.headers["location"].endswith(f"{UI_PATH}/")


def test_the_policy_allows_this_origin_only_plus_local_images():
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["img-src"] == "'self' blob: data:"  # thumbnails of the user's own files
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "unsafe-eval" not in CONTENT_SECURITY_POLICY


async def test_the_api_still_needs_the_key(app):
    files = {"images": ("a.png", b"\x89PNG", "image/png")}
    refused = await _request(app, "POST", "/classify", files=files)
    assert refused.status_code == 401
    allowed = await _request(
        app, "POST", "/classify", files=files, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert allowed.status_code == 200


def test_the_open_path_rule_covers_the_page_and_nothing_beside_it():
    assert is_open_path(UI_PATH)
    assert is_open_path(f"{UI_PATH}/")
    assert is_open_path(f"{UI_PATH}/ui.js")
    for path in ("/classify", "/metadata", f"{UI_PATH}x", f"{UI_PATH}-admin/", "/v2/models/x"):
        assert not is_open_path(path), path


@pytest.mark.parametrize(
    "raw_path",
    [
        f"{UI_PATH}/../service.py",
        f"{UI_PATH}/%2e%2e%2fservice.py",
        f"{UI_PATH}/../../etc/passwd",
        f"{UI_PATH}/../classify",  # open by prefix, but routed to the page's files, never the API
        f"{UI_PATH}/nope.js",
    ],
)
async def test_paths_outside_the_page_are_not_found(app, raw_path):
    assert await _raw_get(app, raw_path) == 404


class _References(HTMLParser):
    """Every URL-valued attribute of the page, and whatever makes a policy need unsafe-inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "formaction", "poster", "srcset"):
                self.urls.append(value or "")
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("<script> with inline code")


def test_the_page_references_only_its_own_files_and_no_inline_code():
    parser = _References()
    parser.feed((UI_DIR / "index.html").read_text())
    assert parser.inline == []
    local = [url for url in parser.urls if url != "data:,"]  # the empty favicon
    assert sorted(local) == ["ui.css", "ui.js"]


@pytest.mark.parametrize("name", PAGE_FILES)
def test_no_file_names_another_origin(name):
    text = (UI_DIR / name).read_text()
    # Absolute URLs, protocol-relative URLs in strings or url(), CSS imports.
    assert not re.findall(r"https?://|[\"'(]//|@import", text, flags=re.IGNORECASE)


def test_the_script_calls_this_origin_s_api_only():
    script = (UI_DIR / "ui.js").read_text()
    targets = re.findall(r"fetch\(\s*([^,)]+)", script)
    assert sorted(targets) == ['"/classify"', '"/metadata"']
    assert "innerHTML" not in script  # server text is shown as text, never parsed as markup
