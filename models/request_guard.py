"""ASGI middleware in front of the classifier's endpoints: API keys and the request-body limit.

Both checks run before the body is read, so a client without a key or with a 2 GB upload costs
the server a few header comparisons, not memory. Health, metrics and the API docs stay open:
orchestrators and Prometheus call them without credentials, and the spec holds no secrets.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# /schema.json: what the BentoML SDK clients read before their first call.
OPEN_PATHS = frozenset(
    {"/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/docs", "/schema.json", "/"}
)
OPEN_PREFIXES = ("/static_content/",)


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class RequestGuard:
    """Refuse requests without a valid API key (401) and bodies over ``max_body_bytes`` (413).

    ``api_keys`` empty: no authentication. Keys are accepted as ``Authorization: Bearer <key>``
    (what BentoML's clients send for ``token=``) or ``X-API-Key: <key>``; several keys allow
    rotation without downtime.
    """

    def __init__(self, app: ASGIApp, api_keys: Sequence[str], max_body_bytes: int) -> None:
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or is_open_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["type"] != "http":  # websockets: no such routes today; never unauthenticated
            if self.api_keys and not self._has_valid_key(headers):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        refuse = _Refusal(receive, send, headers, drain_limit=2 * self.max_body_bytes)
        # CORS preflights carry no credentials by design; they reach no endpoint.
        if self.api_keys and scope["method"] != "OPTIONS" and not self._has_valid_key(headers):
            await refuse(
                401,
                "missing or invalid API key: send `Authorization: Bearer <key>` or `X-API-Key`",
                extra_headers=[(b"www-authenticate", b'Bearer realm="image-classifier"')],
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                declared_bytes = int(declared)
            except ValueError:
                await refuse(400, "invalid Content-Length header")
                return
            if declared_bytes > self.max_body_bytes:
                await refuse(413, self._too_large_message(declared_bytes))
                return
        too_large = self._too_large_message(None)
        await _BodyLimit(self.app, self.max_body_bytes, too_large, refuse)(scope, receive, send)

    def _has_valid_key(self, headers: dict[bytes, bytes]) -> bool:
        offered = [headers.get(b"x-api-key", b"").strip()]
        scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer":
            offered.append(credentials.strip())
        # Every offered value against every key, in constant time: no early exit that times
        # the match.
        matches = [
            hmac.compare_digest(value, key) for value in offered if value for key in self.api_keys
        ]
        return any(matches)

    def _too_large_message(self, size: int | None) -> str:
        what = f"{size} bytes" if size is not None else "the request body"
        limit = f"{self.max_body_bytes} bytes (CLASSIFIER_MAX_REQUEST_BYTES)"
        return f"{what} over the limit of {limit}"


class _BodyLimit:
    """Count the body as it streams (chunked uploads declare no length); past the limit, tell the
    app the client left and answer 413 in place of whatever the app then sends."""

    def __init__(self, app: ASGIApp, limit: int, message: str, refuse: _Refusal) -> None:
        self.app, self.limit, self.message, self.refuse = app, limit, message, refuse
        self.received = 0
        self.exceeded = False
        self.response_started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        try:
            await self.app(scope, self._limited_receive, self._guarded_send)
        except Exception:
            if not self.exceeded:
                raise
        if self.exceeded and not self.response_started:
            await self._send_too_large()

    async def _limited_receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                return {"type": "http.disconnect"}
        return message

    async def _guarded_send(self, message: Message) -> None:
        if self.exceeded:
            if not self.response_started:
                await self._send_too_large()
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _send_too_large(self) -> None:
        self.response_started = True
        await self.refuse(413, self.message)


class _Refusal:
    """Send an error response, then read and discard the rest of the request body (up to
    ``drain_limit`` bytes or ``drain_s`` seconds). Clients that upload the whole body before
    reading the answer (most HTTP libraries) would otherwise see a connection reset, not the
    error. Not when the client waits for ``100 Continue``: it never sends the body."""

    drain_s = 10.0

    def __init__(self, receive: Receive, send: Send, headers: dict, drain_limit: int) -> None:
        self.receive, self.send, self.drain_limit = receive, send, drain_limit
        self.expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"

    async def __call__(
        self, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await _send_error(
            self.send, status, message, [(b"connection", b"close"), *(extra_headers or [])]
        )
        if not self.expects_continue:
            await self._drain()

    async def _drain(self) -> None:
        drained = 0
        deadline = asyncio.get_running_loop().time() + self.drain_s
        while drained <= self.drain_limit:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            try:
                message = await asyncio.wait_for(self.receive(), remaining)
            except (TimeoutError, OSError):
                return
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


async def _send_error(
    send: Send, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
