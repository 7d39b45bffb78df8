"""The benchmark's inputs: photo-like JPEGs of realistic sizes and request bodies carrying them.

No photo collection can be downloaded here, so the images are synthesised: smooth colour fields,
a few soft shapes and sensor-like noise, saved as baseline JPEG at quality 90. That gives file
sizes and decode costs typical of camera photos (tens to hundreds of kB), unlike flat test images.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# (width, height): a typical web photo and a larger camera-style upload.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((500, 375), (1024, 768))
FIELD_NAME = "images"  # the multipart field every server under test reads


def photo_like_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    # Low-frequency colour field: a coarse random grid upsampled bicubically.
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        size = int(rng.integers(min(width, height) // 8, min(width, height) // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.ellipse((x0, y0, x0 + size, y0 + size), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=2))
    noise = rng.normal(0.0, 6.0, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


@dataclass(frozen=True)
class Upload:
    """One image as a ready-to-send multipart body (built once, so the client stays cheap)."""

    name: str
    width: int
    height: int
    jpeg: bytes
    body: bytes
    content_type: str
    images: int = 1  # images in ``body``; ``name``, ``width``, ``height``, ``jpeg``: the first


def bundle(uploads: list[Upload], per_request: int) -> list[Upload]:
    """Requests of ``per_request`` images each (``len(uploads)`` of them, each starting at the
    next upload, so every image leads once): the multi-image workload."""
    if per_request <= 1:
        return uploads
    requests = []
    for start in range(len(uploads)):
        members = [uploads[(start + i) % len(uploads)] for i in range(per_request)]
        body, content_type = multipart_body([(m.name, m.jpeg) for m in members])
        requests.append(
            replace(members[0], body=body, content_type=content_type, images=per_request)
        )
    return requests


def multipart_body(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """One multipart body with every ``(filename, jpeg)`` under the ``images`` field."""
    boundary = uuid.uuid4().hex
    parts = [
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{FIELD_NAME}"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + b"\r\n"
        for filename, jpeg in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def make_uploads(
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES, per_size: int = 8
) -> list[Upload]:
    """``per_size`` distinct images of each size, interleaved so every size is always in play."""
    uploads = []
    for index in range(per_size):
        for width, height in sizes:
            name = f"photo-{width}x{height}-{index}.jpg"
            jpeg = photo_like_jpeg(width, height, seed=1000 * index + width)
            body, content_type = multipart_body([(name, jpeg)])
            uploads.append(Upload(name, width, height, jpeg, body, content_type))
    return uploads
