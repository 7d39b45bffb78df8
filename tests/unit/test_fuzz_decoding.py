"""Property-based tests of upload decoding and preprocessing: whatever bytes arrive, the result
is an RGB image of the model's input size or an ``ImageDecodeError`` (a 400), never another
exception (a 500) and never an image the model cannot take."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from models.image_io import ImageDecodeError, load_image
from models.preprocessing import EvalPreprocessing, PreprocessConfig

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
PREPROCESSING = EvalPreprocessing(PreprocessConfig(input_size=(3, 64, 64)))


def _seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    pixels = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    seeds = {}
    for fmt, kwargs in [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {}),
        ("BMP", {}),
        ("TIFF", {}),
    ]:
        buffer = io.BytesIO()
        pixels.save(buffer, format=fmt, **kwargs)
        seeds[f"{fmt}{kwargs}"] = buffer.getvalue()
    return seeds


SEEDS = _seed_images()


def _decode_and_prepare(data: bytes) -> Image.Image | None:
    try:
        image = load_image(data, min_size=73)
    except ImageDecodeError:
        return None
    assert image.mode == "RGB"
    prepared = PREPROCESSING.prepare(image)
    assert prepared.size == (64, 64)
    return prepared


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_fail_cleanly(data):
    _decode_and_prepare(data)


@FUZZ
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_damaged_real_images_decode_or_fail_cleanly(seed, flips, cut):
    data = bytearray(SEEDS[seed])
    for position, value in flips:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    _decode_and_prepare(bytes(data))


@FUZZ
@given(
    width=st.integers(1, 1500),
    height=st.integers(1, 1500),
    mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "CMYK"]),
    fmt=st.sampled_from(["PNG", "JPEG", "TIFF"]),
)
def test_any_valid_geometry_and_mode_reaches_the_model_size(width, height, mode, fmt):
    if fmt == "JPEG" and mode not in {"L", "RGB", "CMYK"}:
        mode = "RGB"
    if fmt == "PNG" and mode == "CMYK":
        mode = "RGB"
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format=fmt)
    ratio = max(width, height) / min(width, height)
    if ratio > 32:
        with pytest.raises(ImageDecodeError, match="aspect ratio"):
            load_image(buffer.getvalue())
    else:
        assert _decode_and_prepare(buffer.getvalue()) is not None
