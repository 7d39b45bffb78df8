"""Bad input, API keys, overload, time limits, shutdown and start-up faults, against a real
`bentoml serve` (docs/reliability.md lists each case and the test that checks it)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
import pytest
import requests
from PIL import Image

from models import Predictor, load_image
from registry.bento_import import artifact_dir
from serving.problems import Problem

from ..support.problems import assert_problem
from .conftest import bentoml_server, bentoml_server_process, start_bentoml

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LIMITS = {
    "CLASSIFIER_API_KEYS": f"previous-key-0123456789,{API_KEY}",
    "CLASSIFIER_MAX_REQUEST_BYTES": str(2 * 1024 * 1024),
    "CLASSIFIER_MAX_IMAGES_PER_REQUEST": "8",
    "CLASSIFIER_MAX_IMAGE_PIXELS": "4000000",
}


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _photo(size=(96, 72), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def guarded_server(single_label_bento, session_dir):
    """API keys on and small limits, so every limit can be crossed cheaply."""
    with bentoml_server(
        str(single_label_bento.tag), session_dir / "serve-guarded.log", extra_env=LIMITS
    ) as url:
        yield url


def _post(url, files, headers=AUTH, **kwargs):
    return requests.post(f"{url}/classify", files=files, headers=headers, timeout=60, **kwargs)


def _jpeg() -> bytes:
    return _encode(_photo(), "JPEG")


def _png() -> bytes:
    return _encode(_photo(), "PNG")


BAD_UPLOADS = {
    "text file": (("notes.txt", b"hello", "text/plain"), 400, "not a recognised image format"),
    "zero bytes": (("empty.jpg", b"", "image/jpeg"), 400, "empty upload: 0 bytes"),
    "truncated JPEG": (("cut.jpg", _jpeg()[:400], "image/jpeg"), 400, "corrupt or truncated"),
    "truncated PNG": (("cut.png", _png()[:300], "image/png"), 400, "corrupt or truncated"),
    "unsupported format (PPM)": (
        ("x.ppm", _encode(_photo(), "PPM"), "image/x-portable-pixmap"),
        400,
        "unsupported image format PPM",
    ),
    # ~10 kB on the wire, 100 megapixels decoded.
    "decompression bomb": (
        ("bomb.png", _encode(Image.new("L", (10_000, 10_000)), "PNG"), "image/png"),
        400,
        "over the limit of 4000000",
    ),
    "absurd aspect ratio": (
        ("line.png", _encode(Image.new("L", (65_535, 1)), "PNG"), "image/png"),
        400,
        "aspect ratio of 65535:1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_4xx_naming_the_problem(guarded_server, case):
    upload, status, message = BAD_UPLOADS[case]
    response = _post(guarded_server, {"images": upload})
    problem = assert_problem(
        response, status, Problem.INVALID_IMAGE, detail=message, field="images", file=upload[0]
    )
    assert message in problem.errors[0].reason
    assert problem.detail.startswith(upload[0])  # names the file


def test_request_level_mistakes_are_4xx(guarded_server):
    url = guarded_server
    tiny = ("a.png", _encode(_photo((8, 8)), "PNG"), "image/png")
    too_many = _post(url, [("images", tiny)] * 9)
    invalid = Problem.INVALID_REQUEST
    assert_problem(too_many, 400, invalid, detail="9 images in one request, over the limit of 8")
    wrong_field = _post(url, {"image": tiny})
    assert_problem(wrong_field, 400, invalid, detail="unexpected field `image`", field="image")
    # A text value where a file belongs: BentoML would fetch it as a URL, outside every limit.
    as_text = _post(url, {"images": (None, "http://127.0.0.1:9/cat.jpg")})
    assert_problem(as_text, 400, invalid, detail="not text (URLs are not fetched)", field="images")
    no_body = requests.post(f"{url}/classify", headers=AUTH, timeout=30)
    unsupported = Problem.UNSUPPORTED_MEDIA_TYPE
    assert_problem(no_body, 415, unsupported, detail="got no content type")
    # Not multipart: JSON naming strings instead of files, and a raw JPEG body.
    as_json = requests.post(
        f"{url}/classify", json={"images": ["cat.jpg"]}, headers=AUTH, timeout=30
    )
    assert_problem(as_json, 415, unsupported, detail="send multipart/form-data")
    raw = requests.post(
        f"{url}/classify",
        data=_jpeg(),
        headers={**AUTH, "Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert_problem(raw, 415, unsupported, detail="got `image/jpeg`")


def test_routes_methods_and_options_mistakes_are_problems(guarded_server):
    """The rest of the error kinds (docs/errors.md): an unknown route, a wrong method, options
    out of range, a threshold for this single-label model."""
    url = guarded_server
    tiny = {"images": ("a.png", _encode(_photo((8, 8)), "PNG"), "image/png")}
    assert_problem(
        requests.get(f"{url}/no/such/route", headers=AUTH, timeout=10), 404, Problem.NOT_FOUND
    )
    wrong_method = requests.get(f"{url}/classify", headers=AUTH, timeout=10)
    assert_problem(wrong_method, 405, Problem.METHOD_NOT_ALLOWED)
    assert "POST" in wrong_method.headers["allow"]
    option = Problem.INVALID_OPTION
    for data, field, reason in [
        ({"top_k": "0"}, "top_k", "must be from 1 to 5"),
        ({"top_k": "6"}, "top_k", "must be from 1 to 5"),
        ({"top_k": "many"}, "top_k", "must be a whole number"),
        ({"threshold": "0.5"}, "threshold", "multi-label models only"),
    ]:
        answer = assert_problem(_post(url, tiny, data=data), 422, option, field=field)
        assert reason in answer.errors[0].reason and reason in answer.detail
    bad_key = requests.post(f"{url}/classify", files=tiny, timeout=10)
    assert_problem(bad_key, 401, Problem.UNAUTHORIZED, detail="missing or invalid API key")


def test_oversize_bodies_get_413_before_being_parsed(guarded_server):
    # 24 MiB, far more than socket buffers hold: the client only sees the 413 (and not a
    # connection reset) because the server reads and discards the body after answering.
    big = os.urandom(24 * 1024 * 1024)
    declared = _post(guarded_server, {"images": ("big.jpg", big, "image/jpeg")})
    assert_problem(
        declared, 413, Problem.REQUEST_TOO_LARGE, detail="over the limit of 2097152 bytes"
    )
    big = big[: 3 * 1024 * 1024]

    boundary = "robustness-test-boundary-7f3a"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
        f'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + big
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunked():  # no Content-Length: counted while it streams
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    streamed = requests.post(
        f"{guarded_server}/classify",
        data=chunked(),
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    assert_problem(
        streamed,
        413,
        Problem.REQUEST_TOO_LARGE,
        detail="the request body over the limit of 2097152",
    )


def test_odd_but_valid_images_are_classified_like_in_process(guarded_server, single_label_bento):
    photo = _photo((120, 90), seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise
    wide_16bit = (np.arange(400 * 40, dtype=np.uint32).reshape(40, 400) * 4).astype(np.uint16)
    frames = [_photo((64, 64), seed=s) for s in (4, 5)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    odd = {
        "grayscale.png": _encode(photo.convert("L"), "PNG"),
        "palette.png": _encode(photo.convert("P"), "PNG"),
        "rgba.png": _encode(photo.convert("RGBA"), "PNG"),
        "16bit-wide.png": _encode(Image.fromarray(wide_16bit), "PNG"),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG"),
        "progressive.jpg": _encode(photo, "JPEG", progressive=True),
        "rotated.jpg": _encode(photo, "JPEG", exif=exif.tobytes()),
        "animated.gif": animated.getvalue(),
        "tiny.png": _encode(Image.new("RGB", (1, 1), "red"), "PNG"),
        "panorama.webp": _encode(_photo((1600, 60), seed=6), "WEBP"),
        "scan.tiff": _encode(photo, "TIFF"),
        "bitmap.bmp": _encode(photo, "BMP"),
    }
    response = _post(guarded_server, [("images", (name, data)) for name, data in odd.items()][:8])
    rest = _post(guarded_server, [("images", (name, data)) for name, data in odd.items()][8:])
    assert response.status_code == 200, response.text
    assert rest.status_code == 200, rest.text
    served = [item["labels"][0]["label"] for item in response.json() + rest.json()]

    predictor = Predictor.from_artifact(artifact_dir(single_label_bento), "cpu", "float32")
    expected = [row[0].label for row in predictor.predict([load_image(d) for d in odd.values()])]
    assert served == expected
    assert load_image(odd["rotated.jpg"]).size == (90, 120)  # orientation applied
    sixteen = np.asarray(load_image(odd["16bit-wide.png"]))
    assert 100 < sixteen.mean() < 155  # scaled to 8 bits, not clipped to white


def test_bad_requests_do_not_disturb_good_ones_batched_beside_them(
    guarded_server, single_label_bento, png_images
):
    good = png_images[:16]
    bad = [upload for upload, _, _ in BAD_UPLOADS.values()]

    def call(item):
        if isinstance(item, Path):
            return _post(guarded_server, {"images": (item.name, item.read_bytes(), "image/png")})
        return _post(guarded_server, {"images": item})

    mixed = [x for pair in zip(good, bad + [None] * len(good), strict=False) for x in pair if x]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(call, mixed))
    pairs = list(zip(mixed, responses, strict=True))
    good_responses = [r for item, r in pairs if isinstance(item, Path)]
    bad_responses = [r for item, r in pairs if not isinstance(item, Path)]
    for response in bad_responses:
        assert_problem(response, 400, Problem.INVALID_IMAGE, field="images")
    assert all(r.status_code == 200 for r in good_responses)
    predictor = Predictor.from_artifact(artifact_dir(single_label_bento), "cpu", "float32")
    expected = predictor.predict([load_image(p) for p in good])
    assert [r.json()[0]["labels"][0]["label"] for r in good_responses] == [
        row[0].label for row in expected
    ]
    assert requests.get(f"{guarded_server}/readyz", timeout=5).status_code == 200


def test_api_keys_guard_the_model_but_not_health_metrics_or_docs(guarded_server):
    url = guarded_server
    upload = {"images": ("a.png", _encode(_photo((8, 8)), "PNG"), "image/png")}
    missing = _post(url, upload, headers={})
    assert_problem(missing, 401, Problem.UNAUTHORIZED)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert _post(url, upload, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert _post(url, upload, headers={"X-API-Key": API_KEY}).status_code == 200
    assert _post(url, upload, headers={"X-API-Key": "previous-key-0123456789"}).status_code == 200
    both = {"X-API-Key": "stale", "Authorization": f"Bearer {API_KEY}"}  # any valid one will do
    assert _post(url, upload, headers=both).status_code == 200
    assert requests.post(f"{url}/metadata", timeout=10).status_code == 401
    for path in ("/livez", "/healthz", "/readyz", "/metrics", "/docs.json"):
        assert requests.get(url + path, timeout=10).status_code == 200, path
    # The BentoML SDK clients send `token` as a bearer token.
    with bentoml.SyncHTTPClient(url, token=API_KEY) as client:
        assert client.metadata()["task"] == "single_label"
    with bentoml.SyncHTTPClient(url) as client, pytest.raises(bentoml.exceptions.BentoMLException):
        client.metadata()


@pytest.fixture(scope="module")
def tight_server(single_label_bento, session_dir):
    """Two requests in flight at most, and a 1 s time limit."""
    options = (
        "services.image_classifier.traffic.max_concurrency=2 "
        "services.image_classifier.traffic.timeout=1"
    )
    with bentoml_server(
        str(single_label_bento.tag),
        session_dir / "serve-tight.log",
        # A request far over the pixel and CPU budgets, so that it meets the time limit first.
        extra_env={
            "BENTOML_CONFIG_OPTIONS": options,
            "CLASSIFIER_MAX_REQUEST_PIXELS": str(10**9),
            "CLASSIFIER_DECODE_CPU_BUDGET_S": "120",
        },
    ) as url:
        yield url


def test_concurrency_over_the_limit_is_refused_quickly(tight_server, png_images):
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in png_images[:4]]

    def call(_):
        started = time.perf_counter()
        response = requests.post(f"{tight_server}/classify", files=files, timeout=30)
        return response, time.perf_counter() - started

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(call, range(48)))
    statuses = [response.status_code for response, _ in results]
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    # Refusals say when to come back (added in front of BentoML's limiter: serving/http_front.py).
    assert all(r.headers.get("retry-after") == "1" for r, _ in results if r.status_code != 200)
    shapes = {429: Problem.TOO_MANY_REQUESTS, 503: Problem.OVERLOADED}
    for response, _ in results:
        if response.status_code in shapes:
            assert_problem(response, response.status_code, shapes[response.status_code])
    refused_in = [elapsed for response, elapsed in results if response.status_code == 429]
    # Client-side time, encoding included, on a 2-core machine shared with the server.
    assert max(refused_in) < 5.0, f"429s took up to {max(refused_in):.2f}s"
    assert requests.get(f"{tight_server}/readyz", timeout=5).status_code == 200


def test_requests_over_the_time_limit_get_504_and_never_block_the_server(tight_server):
    # 48 12-megapixel PNGs (120 kB each: smooth patterns) take ~6 s to decode here; limit 1 s.
    y, x = np.mgrid[0:3000, 0:4000]
    pattern = np.stack([(x // 16) % 256, (y // 12) % 256, ((x + y) // 20) % 256], axis=-1)
    big = _encode(Image.fromarray(pattern.astype(np.uint8)), "PNG")
    files = [("images", (f"{i}.png", big, "image/png")) for i in range(48)]
    decoded_before = _decoded_images(tight_server)
    with ThreadPoolExecutor(1) as pool:
        started = time.perf_counter()
        heavy = pool.submit(requests.post, f"{tight_server}/classify", files=files, timeout=60)
        time.sleep(0.5)
        # Decoding runs off the event loop: health checks answer meanwhile.
        probe_started = time.perf_counter()
        assert requests.get(f"{tight_server}/livez", timeout=10).status_code == 200
        probe_s = time.perf_counter() - probe_started
        response = heavy.result()
        elapsed = time.perf_counter() - started
    assert_problem(response, 504, Problem.TIMEOUT)
    assert re.search(r"in 1(\.0)? seconds", response.json()["detail"]), response.text
    assert probe_s < 2.0, f"/livez took {probe_s:.2f}s during a heavy request"
    assert elapsed < 10, f"504 after {elapsed:.1f}s"
    assert requests.get(f"{tight_server}/readyz", timeout=30).status_code == 200
    # Decoding stops at the next image once the request is abandoned: not all 48 are decoded.
    decoded = _settled_decode_count(tight_server) - decoded_before
    assert decoded < 40, f"{decoded:.0f} of 48 images decoded after the 504"


def _settled_decode_count(url: str, timeout_s: float = 60) -> float:
    """The decoded-image count once it stops moving (no new image for 2 s)."""
    deadline = time.monotonic() + timeout_s
    count = _decoded_images(url)
    while time.monotonic() < deadline:
        time.sleep(2)
        previous, count = count, _decoded_images(url)
        if count == previous:
            break
    return count


def _decoded_images(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("image_classifier_image_decode_seconds_count")
    )


def _assert_fails_at_start_up(env: dict[str, str], log_path: Path, *messages: str) -> None:
    server = start_bentoml(env, log_path)
    try:
        deadline = time.monotonic() + 120
        while server.exit_status() is None and time.monotonic() < deadline:
            assert not server.is_ready(), "a server with a broken model/configuration said ready"
            time.sleep(0.5)
        code = server.exit_status()
        assert code is not None, "server did not exit"
        assert code != 0
    finally:
        server.stop(grace_s=5)
    log = log_path.read_text(errors="replace")
    for message in messages:
        assert message in log, log[-3000:]


def test_unknown_model_fails_start_up_saying_what_to_do(session_dir):
    _assert_fails_at_start_up(
        {"CLASSIFIER_MODEL_TAG": "no-such-model:latest"},
        session_dir / "serve-missing.log",
        "no-such-model:latest is not in the BentoML store",
        "python -m registry import",
    )


def test_bad_configuration_fails_start_up_naming_the_variable(single_label_bento, session_dir):
    _assert_fails_at_start_up(
        {"CLASSIFIER_MODEL_TAG": str(single_label_bento.tag), "CLASSIFIER_PRECISION": "fp8"},
        session_dir / "serve-badconfig.log",
        "CLASSIFIER_PRECISION: Input should be",
    )


def test_corrupt_model_fails_start_up(single_label_bento, session_dir, tmp_path):
    # A copy of the store whose weights file is cut short (a disk or a copy gone wrong).
    home = tmp_path / "bentoml"
    source = Path(bentoml.models.get(single_label_bento.tag).path)
    relative = source.relative_to(Path(os.environ["BENTOML_HOME"]))
    shutil.copytree(source, home / relative)
    weights = [p for p in (home / relative).rglob("*") if p.suffix in {".pt", ".safetensors"}]
    assert weights, list((home / relative).rglob("*"))
    for path in weights:
        path.write_bytes(path.read_bytes()[:1000])
    _assert_fails_at_start_up(
        {"CLASSIFIER_MODEL_TAG": str(single_label_bento.tag), "BENTOML_HOME": str(home)},
        session_dir / "serve-corrupt.log",
        "is damaged",
        "Re-import it",
    )


def _in_progress(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("image_classifier_request_in_progress{") and "/classify" in line
    )


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(
    single_label_bento, session_dir, png_images
):
    log_path = session_dir / "serve-shutdown.log"
    extra_env = {"CLASSIFIER_REDUCED_JPEG_DECODE": "false"}  # full decodes: requests stay in flight
    with bentoml_server_process(str(single_label_bento.tag), log_path, extra_env) as server:
        url = server.url
        # Large uploads keep requests in flight for a while (decode + resize of each image).
        big = _encode(_photo((2000, 1500), seed=8), "JPEG", quality=95)
        files = [("images", (f"{i}.jpg", big, "image/jpeg")) for i in range(8)]

        def call():
            response = requests.post(f"{url}/classify", files=files, timeout=120)
            return response, time.monotonic()

        async def in_flight():
            loop = asyncio.get_running_loop()
            calls = [loop.run_in_executor(None, call) for _ in range(6)]
            # SIGTERM once the server counts all 6 in progress: connections still waiting in
            # the listen backlog would be reset, as with any server that stops accepting.
            deadline = time.monotonic() + 60
            while _in_progress(url) < 6:
                assert time.monotonic() < deadline, "6 requests never in progress together"
                await asyncio.sleep(0.05)
            killed_at = time.monotonic()
            server.signal_group(signal.SIGTERM)
            return killed_at, await asyncio.gather(*calls, return_exceptions=True)

        killed_at, results = asyncio.run(in_flight())
        assert [getattr(r[0], "status_code", r) for r in results] == [200] * 6, results
        # The drain was tested only if some requests were still running at the SIGTERM.
        assert any(finished > killed_at for _, finished in results)
        with pytest.raises(requests.ConnectionError):  # new requests are refused
            requests.post(f"{url}/classify", files=files[:1], timeout=10)
        assert server.process.wait(timeout=60) == 0, server.log_tail(chars=3000)
