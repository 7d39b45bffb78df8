"""Uploads that cost far more than their size (issue 10): refused cheaply, or decoded within the
request's budgets. In-process: the request decoder the service runs on its decode thread."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from models.image_io import (
    ACCEPTED_FORMATS,
    ImageDecodeError,
    load_image,
    open_image,
    to_rgb,
)
from serving.decoding import DecodeLimits, RequestAbandonedError, RequestDecoder

from ..support import hostile_images


def _forbid_other_plugins(monkeypatch):
    """From now on, any Pillow plugin outside the accepted formats fails the test if it is
    asked to parse."""
    Image.init()
    for name, (_factory, accept) in list(Image.OPEN.items()):
        if name in ACCEPTED_FORMATS:
            continue

        def refuse(*args, _name=name, **kwargs):
            raise AssertionError(f"the {_name} parser was run on an upload")

        monkeypatch.setitem(Image.OPEN, name, (refuse, accept))


def test_eps_upload_is_refused_by_name_without_running_its_parser(monkeypatch):
    _forbid_other_plugins(monkeypatch)
    started = time.process_time()
    with pytest.raises(ImageDecodeError, match="unsupported image format EPS"):
        load_image(hostile_images.eps_bomb(lines=1 << 18))  # 4 MiB
    # Before: Pillow's EPS parser read it byte by byte, twice: ~2.3 s of CPU here.
    assert time.process_time() - started < 0.5


def test_tiff_fli_polyglot_is_seen_as_what_the_decoder_decodes(monkeypatch):
    data = hostile_images.tiff_fli_polyglot(side=7000)
    with Image.open(io.BytesIO(data)) as any_plugin:  # what the old header probe saw
        assert (any_plugin.format, any_plugin.size) == ("FLI", (1, 1))
    _forbid_other_plugins(monkeypatch)
    with open_image(data, max_pixels=50_000_000) as opened:
        assert (opened.format, opened.size) == ("TIFF", (7000, 7000))
    with pytest.raises(ImageDecodeError, match="7000x7000 = 49000000 pixels"):
        open_image(data, max_pixels=4_000_000)


def test_jpeg_repeating_tiny_scans_is_refused_before_decoding():
    data = hostile_images.progressive_scan_bomb(size=2000, copies=22_000)
    started = time.process_time()
    with pytest.raises(ImageDecodeError, match="JPEG with more than 64 scans"):
        load_image(data, min_size=256)
    # Before: 4.9 s of CPU to decode these 320 kB.
    assert time.process_time() - started < 0.5


def test_data_after_the_jpeg_is_not_counted_as_scans():
    # A "motion photo": the video after the image holds ~15 scan-marker byte pairs per MB.
    data = hostile_images.motion_photo(trailer_bytes=5 << 20)
    assert data.count(b"\xff\xda") > 64
    assert load_image(data).size == (640, 480)


def test_tiff_tile_far_larger_than_the_image_is_refused():
    data = hostile_images.tiff_with_huge_tile(side=16, tile=4096)
    with pytest.raises(ImageDecodeError, match="TIFF tiles of 4096x4096 for a 16x16 image"):
        load_image(data)
    tiled = io.BytesIO()
    Image.new("L", (300, 200), 9).save(tiled, "TIFF", tile=(256, 256))  # normal tiling
    assert load_image(tiled.getvalue()).size == (300, 200)


def test_normal_progressive_jpeg_still_decodes():
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), "teal").save(buffer, "JPEG", progressive=True, optimize=True)
    assert load_image(buffer.getvalue()).size == (640, 480)


def test_sixteen_bit_conversion_needs_no_wide_temporaries():
    side = 3000
    data = hostile_images.wide_png(width=side, height=side)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.mode == "I;16"
        tracemalloc.start()
        try:
            rgb = to_rgb(image)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Before: int64 temporaries, > 16 bytes a pixel (0.8 GB for a 50-megapixel upload).
    assert peak < 6 * side * side, f"{peak / side / side:.1f} bytes a pixel"
    row = np.asarray(rgb)[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row.astype(int)) >= 0)


def _decoder(min_size: int | None = None, **overrides) -> RequestDecoder:
    values = {
        "max_pixels": 50_000_000,
        "max_aspect_ratio": 32.0,
        "max_images": 64,
        "max_request_pixels": 100_000_000,
        "cpu_budget_s": 10.0,
    }
    decoder = RequestDecoder(limits=DecodeLimits(**{**values, **overrides}))
    decoder.min_size = min_size  # what a model's preprocessing sets: reduced JPEG decode
    return decoder


class _Upload:
    """What the multipart parser hands over: a named file."""

    def __init__(self, name: str, data: bytes) -> None:
        self.filename, self.file = name, io.BytesIO(data)


def _png(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "orange").save(buffer, "PNG")
    return buffer.getvalue()


def test_request_pixel_budget_counts_all_images_before_decoding_any():
    large = hostile_images.large_png(8000, 6000)  # 48 megapixels in ~60 kB
    uploads = [_Upload(f"{i}.png", large) for i in range(3)]
    with pytest.raises(ImageDecodeError, match="3 images of 144000000 pixels in all, over the"):
        _decoder(max_request_pixels=100_000_000).decode_uploads(uploads)
    two = [_Upload(f"{i}.png", _png()) for i in range(2)]
    assert [d.image.size for d in _decoder().decode_uploads(two)] == [(64, 48)] * 2


def test_reduced_jpeg_decode_counts_at_its_reduced_size():
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), "navy").save(buffer, "JPEG")
    uploads = [_Upload("big.jpg", buffer.getvalue())]
    with pytest.raises(ImageDecodeError, match="over the limit"):
        _decoder(max_request_pixels=1_000_000).decode_uploads(uploads)
    uploads[0].file.seek(0)
    # Decoded at 1/8 (500x375) for a 256-pixel resize target: within a 1-megapixel budget.
    [decoded] = _decoder(max_request_pixels=1_000_000, min_size=256).decode_uploads(uploads)
    assert decoded.image.size == (500, 375)


def test_cpu_budget_is_checked_between_images():
    uploads = [_Upload(f"{i}.png", _png((2000, 1500))) for i in range(3)]
    with pytest.raises(ImageDecodeError, match=r"CPU, over the budget of 1e-06 s"):
        _decoder(cpu_budget_s=1e-6).decode_uploads(uploads)


def test_abandoned_request_stops_decoding():
    abandoned = threading.Event()
    abandoned.set()
    with pytest.raises(RequestAbandonedError):
        _decoder().decode_uploads([_Upload("a.png", _png())], abandoned)


def test_bad_upload_among_good_ones_is_named():
    uploads = [_Upload("good.png", _png()), _Upload("notes.txt", b"hello")]
    with pytest.raises(ImageDecodeError, match="notes.txt: not a recognised image format"):
        _decoder().decode_uploads(uploads)


def test_file_names_cannot_forge_lines_in_errors_or_logs():
    uploads = [_Upload("evil.txt\nWARNING forged line", b"hello")]
    with pytest.raises(ImageDecodeError) as raised:
        _decoder().decode_uploads(uploads)
    assert "\n" not in str(raised.value) and "evil.txt\\nWARNING" in str(raised.value)


def test_images_are_opened_and_decoded_one_at_a_time(monkeypatch):
    open_images = []
    real_open = Image.open

    def counting_open(*args, **kwargs):
        image = real_open(*args, **kwargs)
        open_images.append(image)
        return image

    monkeypatch.setattr(Image, "open", counting_open)
    uploads = [_Upload(f"{i}.png", _png((200, 100))) for i in range(4)]
    _decoder().decode_uploads(uploads)
    assert len(open_images) == 8  # headers, then decodes
    assert all(image.fp is None for image in open_images)  # every one closed


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_threads_let_requests_decode_at_once(monkeypatch, threads):
    """With `decode_threads` N, N requests decode at the same time, each off the event loop."""
    decoder = RequestDecoder(limits=_decoder().limits, threads=threads)
    barrier = threading.Barrier(2, timeout=2)
    seen = []

    def decode_meeting_another(uploads, abandoned=None):
        seen.append(threading.get_ident())
        try:
            barrier.wait()  # only passes when two requests are decoding at once
            return "together"
        except threading.BrokenBarrierError:
            return "alone"

    monkeypatch.setattr(decoder, "decode_uploads", decode_meeting_another)

    async def two_requests():
        return await asyncio.gather(
            decoder.decode_off_the_loop([]), decoder.decode_off_the_loop([])
        )

    try:
        results = asyncio.run(two_requests())
    finally:
        decoder.close()
    assert threading.get_ident() not in seen
    assert results == (["together"] * 2 if threads == 2 else ["alone"] * 2)
