"""The request path against hostile clients (issue 10), on a real `bentoml serve` with the
default limits: no server-side fetches, no upload that freezes the event loop, per-request
budgets. docs/reliability.md lists each case."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.problems import Problem

from ..support import hostile_images
from ..support.problems import assert_problem
from .conftest import bentoml_server

# The bound: health checks answer within 100 ms whatever is being decoded.
LIVEZ_BOUND_S = 0.1


@pytest.fixture(scope="module")
def default_server(single_label_bento, session_dir):
    """Every limit at its default, keys off: what `make serve` runs."""
    with bentoml_server(str(single_label_bento.tag), session_dir / "serve-defaults.log") as url:
        yield url


class _Listener:
    """A loopback TCP listener that records every connection made to it."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


@pytest.fixture
def listener():
    listening = _Listener()
    yield listening
    listening.close()


def test_only_multipart_is_accepted_and_nothing_is_fetched(default_server, listener):
    target = f"http://127.0.0.1:{listener.port}/cat.jpg"
    url = f"{default_server}/classify"
    attempts = {
        "urlencoded URL": {"data": {"images": target}},
        "urlencoded text": {"data": {"images": "notaurl"}},
        "text/plain": {"data": target, "headers": {"Content-Type": "text/plain"}},
        "multipart/mixed": {
            "data": f"--b\r\n\r\n{target}\r\n--b--\r\n",
            "headers": {"Content-Type": "multipart/mixed; boundary=b"},
        },
        "no content type": {"data": target.encode(), "headers": {"Content-Type": ""}},
        "JSON strings": {"json": {"images": [target, "notaurl"]}},
    }
    for what, kwargs in attempts.items():
        response = requests.post(url, timeout=30, **kwargs)
        assert response.status_code == 415, (what, response.status_code, response.text)
        assert_problem(
            response,
            415,
            Problem.UNSUPPORTED_MEDIA_TYPE,
            detail="send multipart/form-data with the images as files in `images`",
        )
    time.sleep(1.0)  # a fetch, if any were started, would have connected by now
    assert listener.connections == 0, "the server opened a connection for a request"
    assert requests.get(f"{default_server}/readyz", timeout=10).status_code == 200


HOSTILE = {
    # The reproduction at 4 MiB: Pillow's EPS parser read it byte by byte (~2.3 s here).
    "EPS header then megabytes of text": (
        ("x.eps", hostile_images.eps_bomb(lines=1 << 18), "application/postscript"),
        400,
        "unsupported image format EPS",
    ),
    # 2000x2000 (4 MP, decoded inline before) repeating a 12-byte scan: ~5 s of CPU.
    "progressive JPEG of repeated scans": (
        ("scans.jpg", hostile_images.progressive_scan_bomb(), "image/jpeg"),
        400,
        "JPEG with more than 64 scans",
    ),
    # 1x1 FLI to the old header probe (decoded inline), 7000x7000 TIFF to the decoder.
    "TIFF/FLI polyglot": (
        ("poly.tif", hostile_images.tiff_fli_polyglot(), "image/tiff"),
        200,
        "labels",
    ),
}


def _livez_latencies_while(url: str, post) -> tuple[requests.Response, list[float]]:
    """Poll /livez (keep-alive) for as long as ``post`` runs; its response and the latencies."""
    session = requests.Session()
    assert session.get(f"{url}/livez", timeout=10).status_code == 200  # connected
    latencies = []
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post)
        while not pending.done():
            started = time.perf_counter()
            assert session.get(f"{url}/livez", timeout=30).status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        return pending.result(), latencies


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_upload_never_freezes_the_event_loop(default_server, case):
    upload, status, message = HOSTILE[case]

    def post():
        return requests.post(f"{default_server}/classify", files={"images": upload}, timeout=60)

    # A loop blocked by the decode is slow on every try; the shared 2-core CI machines have
    # stalled a single /livez poll past the bound with the decode on its thread (114 ms, once),
    # so a case gets a second try before it fails.
    slowest = []
    for _ in range(2):
        response, latencies = _livez_latencies_while(default_server, post)
        assert response.status_code == status, response.text[:300]
        assert message in response.text
        if status == 400:
            assert_problem(response, 400, Problem.INVALID_IMAGE, field="images", file=upload[0])
        assert latencies, "the request finished before /livez could be asked"
        slowest.append(max(latencies))
        if slowest[-1] < LIVEZ_BOUND_S:
            break
    tries = ", ".join(f"{seconds * 1000:.0f} ms" for seconds in slowest)
    assert min(slowest) < LIVEZ_BOUND_S, f"/livez took up to {tries} (one figure per try)"


def test_request_pixel_budget_refuses_before_decoding(default_server):
    # 3 x 48 megapixels in ~180 kB: over the default 100-megapixel budget per request.
    large = hostile_images.large_png(8000, 6000)
    files = [("images", (f"{i}.png", large, "image/png")) for i in range(3)]
    started = time.perf_counter()
    response = requests.post(f"{default_server}/classify", files=files, timeout=60)
    assert_problem(
        response,
        400,
        Problem.INVALID_REQUEST,
        detail="3 images of 144000000 pixels in all, over the limit of 100000000",
        field="images",
    )
    assert time.perf_counter() - started < 5.0  # refused from the headers
