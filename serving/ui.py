"""The page to try the model, at :data:`UI_PATH`: three static files (``serving/ui/``) that call
``/metadata`` and ``/classify`` from the browser, on the same origin.

Mounted on the service with ``@bentoml.asgi_app`` (BentoML's way to serve an ASGI app beside the
APIs). The files load nothing from any other origin, and every answer carries a Content Security
Policy that keeps it that way: scripts, styles and requests go to this server only; thumbnails are
``blob:`` URLs of the files the user chose. The page itself is open (the guard lets it through);
the API calls it makes need a key when keys are on.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_PATH = "/ui"
UI_DIR = Path(__file__).with_name("ui")
# Everything from this origin only; images may also be the user's own files (blob:) and inline
# icons (data:). No inline script or style, no plugins, no framing, no <base> rewriting.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class UIFiles(StaticFiles):
    """The page's files (``index.html`` at ``/ui/``), each answer with :data:`SECURITY_HEADERS`.

    A static-files app (not a router around one) so that the service's unknown-path folding
    counts only real files as served. Paths that leave the directory are refused by StaticFiles
    itself (404)."""

    def __init__(self, directory: Path = UI_DIR) -> None:
        super().__init__(directory=directory, html=True)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response
