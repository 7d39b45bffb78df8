"""RequestGuard in-process: API keys (401), body limits (413) and the body read timeout (408),
around a tiny ASGI app, driven through httpx's ASGI transport or raw ASGI messages."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware

from serving.guard import RequestGuard
from serving.problems import PROBLEM_JSON, Problem

KEY = "unit-test-key-0123456789"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # what uvicorn runs BentoML on


async def echo_length(scope, receive, send) -> None:
    """Reads the whole body and answers 200 with its length."""
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise OSError("client disconnected")  # what a real app does: it cannot answer
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = json.dumps({"received": received}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _guard(app=echo_length, keys=(KEY,), max_body_bytes=1024, body_read_timeout_s=5.0):
    return RequestGuard(
        app, api_keys=list(keys), max_body_bytes=max_body_bytes,
        body_read_timeout_s=body_read_timeout_s,
    )  # fmt: skip


async def _post(app, path="/classify", headers=None, content=b"x" * 10) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, headers=headers or {}, content=content)


def _http_scope(path="/classify", headers=()) -> dict:
    return {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": list(headers), "http_version": "1.1",
        "scheme": "http", "server": ("test", 80), "client": ("127.0.0.1", 1), "root_path": "",
    }  # fmt: skip


class RawClient:
    """An ASGI client that sends the body chunks it is given, then stalls (never disconnects),
    and records what the app sends."""

    def __init__(self, chunks: list[bytes], stall: bool = True) -> None:
        self.chunks = list(chunks)
        self.stall = stall
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if self.chunks:
            body = self.chunks.pop(0)
            return {
                "type": "http.request",
                "body": body,
                "more_body": bool(self.chunks) or self.stall,
            }
        await asyncio.Event().wait()  # a client that stopped sending
        raise AssertionError("unreachable")

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) <= 1, starts
        return starts[0]["status"] if starts else None

    @property
    def body(self) -> dict:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


async def test_key_is_required_and_either_header_works():
    guard = _guard()
    missing = await _post(guard)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.headers["content-type"] == PROBLEM_JSON
    assert missing.json()["type"] == Problem.UNAUTHORIZED.type_uri
    assert "missing or invalid API key" in missing.json()["detail"]
    assert (await _post(guard, headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (await _post(guard, headers={"Authorization": f"Bearer {KEY}"})).status_code == 200
    assert (await _post(guard, headers={"X-API-Key": KEY})).status_code == 200


async def test_open_paths_and_keyless_mode_need_no_key():
    assert (await _post(_guard(), path="/readyz")).status_code == 200
    assert (await _post(_guard(keys=()))).status_code == 200


async def test_declared_oversize_body_is_refused_before_the_app_reads_it():
    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await echo_length(scope, receive, send)

    response = await _post(_guard(app), headers={"X-API-Key": KEY}, content=b"x" * 2048)
    assert response.status_code == 413
    assert response.json()["type"] == Problem.REQUEST_TOO_LARGE.type_uri
    assert "2048 bytes over the limit of 1024 bytes" in response.json()["detail"]
    assert reached == []


async def test_streamed_oversize_body_is_refused_while_it_streams():
    client = RawClient([b"x" * 600, b"x" * 600, b"x" * 600], stall=False)
    scope = _http_scope(headers=[(b"x-api-key", KEY.encode())])  # no Content-Length
    await _guard()(scope, client.receive, client.send)
    assert client.status == 413
    assert "the request body over the limit of 1024 bytes" in client.body["detail"]


async def test_a_stalled_body_gets_408_after_the_read_timeout():
    client = RawClient([b"x" * 100])  # then nothing, connection open
    started = time.perf_counter()
    await asyncio.wait_for(
        _guard(keys=(), body_read_timeout_s=0.3)(_http_scope(), client.receive, client.send), 5
    )
    elapsed = time.perf_counter() - started
    assert client.status == 408
    assert "100 bytes in 0.3 s; a body must not pause for 0.3 s" in client.body["detail"]
    assert 0.25 < elapsed < 2.0


async def test_a_slow_but_steady_body_is_not_timed_out():
    async def slow_receive(chunks=[b"a" * 2048] * 5):  # 20 KiB/s, over the minimum rate
        await asyncio.sleep(0.1)
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    client = RawClient([])
    guard = _guard(keys=(), max_body_bytes=1 << 20, body_read_timeout_s=0.3)
    await guard(_http_scope(), slow_receive, client.send)
    assert client.status == 200 and client.body == {"received": 10240}


async def test_a_trickled_body_gets_408_once_below_the_minimum_rate():
    # A byte every 0.1 s never pauses for the read timeout, but must not keep its slot.
    async def trickle(chunks=[b"a"] * 100):
        await asyncio.sleep(0.1)
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    client = RawClient([])
    started = time.perf_counter()
    await _guard(keys=(), body_read_timeout_s=0.3)(_http_scope(), trickle, client.send)
    assert client.status == 408 and "too slow" in client.body["detail"]
    assert time.perf_counter() - started < 2.0  # not the 10 s the whole trickle takes


async def test_waiting_for_a_disconnect_after_the_body_is_not_a_stall():
    async def app(scope, receive, send):  # reads the body, then listens for a disconnect
        await receive()
        disconnect = asyncio.create_task(receive())
        await asyncio.sleep(0.5)  # "computing", longer than the read timeout
        assert not disconnect.done()
        disconnect.cancel()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    client = RawClient([b"complete"], stall=False)
    await _guard(app, keys=(), body_read_timeout_s=0.1)(_http_scope(), client.receive, client.send)
    assert client.status == 200


async def test_refused_and_stalled_requests_give_their_concurrency_slot_back():
    # BentoML's own limiter, one slot, around the guard: a 401 must not keep the slot while the
    # client stalls, and a stalled upload keeps it only for the read timeout.
    limited = MaxConcurrencyMiddleware(_guard(body_read_timeout_s=0.3), max_concurrency=1)
    unauthenticated = RawClient([b"x" * 10])
    await asyncio.wait_for(limited(_http_scope(), unauthenticated.receive, unauthenticated.send), 1)
    assert unauthenticated.status == 401

    stalled = RawClient([b"x" * 10])
    keyed = [(b"x-api-key", KEY.encode())]
    stalled_task = asyncio.create_task(
        limited(_http_scope(headers=keyed), stalled.receive, stalled.send)
    )
    await asyncio.sleep(0.05)
    meanwhile = RawClient([b"y"], stall=False)
    await limited(_http_scope(headers=keyed), meanwhile.receive, meanwhile.send)
    assert meanwhile.status == 429  # the stalled upload holds the only slot ...
    await asyncio.wait_for(stalled_task, 2)
    assert stalled.status == 408  # ... until the read timeout
    after = RawClient([b"y"], stall=False)
    await limited(_http_scope(headers=keyed), after.receive, after.send)
    assert after.status == 200


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_body_bytes": 0}, "max_body_bytes must be >= 1"),
        ({"body_read_timeout_s": 0}, "body_read_timeout_s must be > 0"),
    ],
)
def test_bad_settings_fail_fast(options, message, anyio_backend):
    with pytest.raises(ValueError, match=message):
        _guard(**options)
