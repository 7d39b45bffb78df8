"""ASGI middleware in front of the classifier's endpoints: API keys, the request-body limit and
the body read timeout.

The key and declared-size checks run before the body is read, so a client without a key or with
a 2 GB upload costs the server a few header comparisons, not memory. A body that stops arriving
for ``body_read_timeout_s`` gets 408, so a slow or stalled client cannot hold a concurrency slot
for the whole request time limit. Health, metrics and the API docs stay open: orchestrators and
Prometheus call them without credentials, and the spec holds no secrets. So does the page to
try the model (``/ui``, static files): a browser loads it without a key, and the calls it makes
carry the key the user enters.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from .problems import PROBLEM_JSON, Problem, problem_body, problem_details
from .ui import UI_PATH

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger(__name__)

# /schema.json: what the BentoML SDK clients read before their first call; /v2/health/*: the
# Open Inference Protocol's probes (serving/oip.py), open like /livez and /readyz. UI_PATH
# (redirected to UI_PATH/) and the files under it: the page to try the model.
OPEN_PATHS = frozenset(
    {"/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/docs", "/schema.json", "/"}
    | {"/v2/health/live", "/v2/health/ready", UI_PATH}
)
OPEN_PREFIXES = ("/static_content/", f"{UI_PATH}/")


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class RequestGuard:
    """Refuse requests without a valid API key (401), bodies over ``max_body_bytes`` (413) and
    bodies that stall for ``body_read_timeout_s`` seconds (408).

    ``api_keys`` empty: no authentication. Keys are accepted as ``Authorization: Bearer <key>``
    (what BentoML's clients send for ``token=``) or ``X-API-Key: <key>``; several keys allow
    rotation without downtime.
    """

    def __init__(
        self,
        app: ASGIApp,
        api_keys: Sequence[str],
        max_body_bytes: int,
        body_read_timeout_s: float = 10.0,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        if body_read_timeout_s <= 0:
            raise ValueError(f"body_read_timeout_s must be > 0, got {body_read_timeout_s}")
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]
        self.max_body_bytes = max_body_bytes
        self.body_read_timeout_s = body_read_timeout_s

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
        refuse = _Refusal(send)
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
        watch = _BodyWatch(
            self.app,
            limit=self.max_body_bytes,
            too_large=self._too_large_message(None),
            read_timeout_s=self.body_read_timeout_s,
            refuse=refuse,
        )
        await watch(scope, receive, send)

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


# The slowest body accepted, on average after the first read timeout: 64 kbit/s, a poor mobile
# uplink. Slower clients belong behind a buffering proxy (the `proxy` service in compose).
MIN_BODY_BYTES_PER_S = 8 * 1024


class _BodyWatch:
    """Watch the body as it streams: count it (chunked uploads declare no length) and time each
    read. Past the limit (413) or after ``read_timeout_s`` without a byte (408), tell the app the
    client left and answer with that refusal in place of whatever the app then sends."""

    def __init__(
        self, app: ASGIApp, limit: int, too_large: str, read_timeout_s: float, refuse: _Refusal
    ) -> None:
        self.app, self.limit, self.too_large, self.refuse = app, limit, too_large, refuse
        self.read_timeout_s = read_timeout_s
        self.started = asyncio.get_running_loop().time()
        self.received = 0
        self.body_complete = False
        self.refusal: tuple[int, str] | None = None
        self.response_started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        try:
            await self.app(scope, self._watched_receive, self._guarded_send)
        except Exception:
            if self.refusal is None:
                raise
        if self.refusal is not None and not self.response_started:
            await self._send_refusal()

    async def _watched_receive(self) -> Message:
        if self.refusal is not None:
            return {"type": "http.disconnect"}
        if self.body_complete:
            # The app waiting for a disconnect after the body: not a stalled upload.
            return await self._receive()
        wait_s = min(self.read_timeout_s, self._rate_deadline() - asyncio.get_running_loop().time())
        try:
            message = await asyncio.wait_for(self._receive(), max(wait_s, 0.0))
        except TimeoutError:
            return self._refuse(408, self._stalled_message())
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.body_complete = not message.get("more_body", False)
            if self.received > self.limit:
                return self._refuse(413, self.too_large)
        return message

    def _refuse(self, status: int, message: str) -> Message:
        self.refusal = (status, message)
        return {"type": "http.disconnect"}

    def _rate_deadline(self) -> float:
        """When the body falls below :data:`MIN_BODY_BYTES_PER_S` on average (after a grace of
        one read timeout): a client trickling a byte now and then never stalls a single read,
        but must not keep its slot until the request's time limit."""
        return self.started + self.read_timeout_s + self.received / MIN_BODY_BYTES_PER_S

    def _stalled_message(self) -> str:
        elapsed = asyncio.get_running_loop().time() - self.started
        return (
            f"request body stalled or too slow: {self.received} bytes in {elapsed:.1f} s; "
            f"a body must not pause for {self.read_timeout_s:g} s "
            f"(CLASSIFIER_BODY_READ_TIMEOUT_S) nor arrive slower than "
            f"{MIN_BODY_BYTES_PER_S // 1024} KiB/s after that"
        )

    async def _guarded_send(self, message: Message) -> None:
        if self.refusal is not None:
            if not self.response_started:
                await self._send_refusal()
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _send_refusal(self) -> None:
        assert self.refusal is not None
        self.response_started = True
        status, message = self.refusal
        logger.warning("refused a request: %d %s", status, message)
        await self.refuse(status, message)


class _Refusal:
    """Send an error response that closes the connection.

    The rest of the body is not read: waiting for it would keep the request, and its
    concurrency slot, for as long as the client cares to send (uvicorn, which BentoML runs on,
    reads no more of a request once its answer is complete, and closes the connection)."""

    def __init__(self, send: Send) -> None:
        self.send = send

    async def __call__(
        self, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await _send_error(
            self.send, status, message, [(b"connection", b"close"), *(extra_headers or [])]
        )


async def _send_error(
    send: Send, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    problem = problem_details(Problem.for_status(status), message, status=status)
    body = problem_body(problem)
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
