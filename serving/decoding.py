"""Decoding one request's uploads under its budgets, on a thread of its own.

A :class:`RequestDecoder` is built for one loaded model (``serving.runtime.build_runtime``) and
handed to the request parser: nothing here reads the environment or keeps module state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from models.image_io import ImageDecodeError, finish_decode, load_image, open_image
from models.preprocessing import EvalPreprocessing
from models.tensor_decode import JpegHeader, decode_jpegs, pixel_chunks, tensor_header

from .settings import ServingSettings
from .telemetry import NO_METRICS, ServiceMetrics


@dataclass(frozen=True)
class DecodeLimits:
    """What one request may ask of the decoder."""

    max_pixels: int
    max_aspect_ratio: float
    max_images: int
    max_request_pixels: int
    cpu_budget_s: float

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> DecodeLimits:
        return cls(
            max_pixels=settings.max_image_pixels,
            max_aspect_ratio=settings.max_aspect_ratio,
            max_images=settings.max_images_per_request,
            max_request_pixels=settings.max_request_pixels,
            cpu_budget_s=settings.decode_cpu_budget_s,
        )


def check_image_count(count: int, *, limit: int) -> None:
    """Refuse a request with no images or more than ``limit``, before decoding any."""
    if not count:
        raise ImageDecodeError("no images: send at least one file in the `images` field")
    if count > limit:
        raise ImageDecodeError(f"{count} images in one request, over the limit of {limit}")


class RequestAbandonedError(Exception):
    """The request timed out (504) while its images were being decoded."""


@dataclass(frozen=True)
class DecodedImage:
    """An upload already decoded (and prepared) by a :class:`RequestDecoder`. Only server code
    builds one, so request validation passes it through instead of decoding it again.

    ``image`` is a PIL image, or with the torchvision JPEG decoder a prepared uint8 ``(3, H, W)``
    tensor on the model's device (``EvalPreprocessing.to_batch`` takes both)."""

    image: Image.Image | torch.Tensor


class RequestDecoder:
    """Decodes uploads for one model: limits checked from the headers, large JPEGs decoded at
    reduced size (``reduced_jpeg_decode``) and each image resized and cropped to the model's
    input (``preprocessing``), so that work is done before a batch forms.

    Every request is decoded on one of this decoder's ``threads``, never on the event loop:
    no upload, however its header misleads, can stall health checks, 429s or the 504 timer
    while it decodes (Pillow's codecs release the GIL). One thread (the default) keeps decoding
    serial, so it does not crowd out the forward pass on small CPUs (docs/reliability.md);
    more let several requests decode at once on hosts with cores to spare.

    With a ``tensor_device`` (``jpeg_decoder``), a request's JPEGs decode in one batched
    torchvision call on that device (nvjpeg on CUDA) instead, prepared there; other formats,
    and JPEGs torchvision fails on, still decode with PIL.
    """

    def __init__(
        self,
        *,
        limits: DecodeLimits,
        preprocessing: EvalPreprocessing | None = None,
        reduced_jpeg_decode: bool = True,
        threads: int = 1,
        metrics: ServiceMetrics = NO_METRICS,
        tensor_device: torch.device | None = None,
    ) -> None:
        if tensor_device is not None and not (preprocessing and preprocessing.supports_tensors):
            raise ValueError("the torchvision JPEG decoder needs a tensor-capable preprocessing")
        self.limits = limits
        self.preprocessing = preprocessing
        self.tensor_device = tensor_device
        reduced = preprocessing is not None and reduced_jpeg_decode
        self.min_size = preprocessing.config.resize_size if reduced else None
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    @classmethod
    def from_settings(
        cls,
        settings: ServingSettings,
        *,
        preprocessing: EvalPreprocessing | None = None,
        metrics: ServiceMetrics = NO_METRICS,
        tensor_device: torch.device | None = None,
    ) -> RequestDecoder:
        return cls(
            limits=DecodeLimits.from_settings(settings),
            preprocessing=preprocessing,
            reduced_jpeg_decode=settings.reduced_jpeg_decode,
            threads=settings.decode_threads,
            metrics=metrics,
            tensor_device=tensor_device,
        )

    def check_count(self, uploads: list[Any]) -> None:
        """Refuse an empty request, or one with more images than allowed, before decoding."""
        check_image_count(len(uploads), limit=self.limits.max_images)

    async def decode_off_the_loop(self, uploads: list[Any]) -> list[DecodedImage]:
        """:meth:`decode_uploads` on the decoder's thread; a cancelled (timed-out) request stops
        before its next image."""
        abandoned = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(self.decode_uploads, uploads, abandoned)
            )
        except asyncio.CancelledError:
            abandoned.set()
            raise

    def decode_uploads(
        self, uploads: list[Any], abandoned: threading.Event | None = None
    ) -> list[DecodedImage]:
        """Decode one request's uploads under its budgets, or raise ``ImageDecodeError`` (400).

        Two passes, one image open at a time. First every header is read (accepted formats
        only), each image checked against the per-image limits and all of them against
        ``max_request_pixels``, so a request over budget costs no decoding. Then each image is
        opened again, decoded, resized and closed; with a ``tensor_device`` the JPEGs first
        decode together (in chunks of at most ``_chunk_pixels``). Before each open or chunk the
        request's CPU time (``cpu_budget_s``) and ``abandoned`` (set when the request timed out)
        are checked. CPU time is the calling thread's.
        """
        started = time.thread_time()
        files = [(_safe_name(upload), _upload_bytes(upload)) for upload in uploads]
        pixels, headers = 0, []
        for name, data in files:
            self._check_budget(started, abandoned)
            with _named(name), self._open(data) as image:
                pixels += image.width * image.height
                headers.append(tensor_header(image) if self.tensor_device else None)
        self._check_request_pixels(len(files), pixels)
        decoded: list[Image.Image | torch.Tensor | None] = [None] * len(files)
        on_tensors = [index for index, header in enumerate(headers) if header is not None]
        for chunk in pixel_chunks([headers[i] for i in on_tensors], max_pixels=self._chunk_pixels):
            self._check_budget(started, abandoned)
            indices = [on_tensors[i] for i in chunk]
            self._decode_tensors(indices, files=files, headers=headers, into=decoded)
        for index, (name, data) in enumerate(files):
            if decoded[index] is None:  # not a JPEG for torchvision, or one it failed on
                self._check_budget(started, abandoned)
                decoded[index] = self._decode_pil(name, data)
        return [DecodedImage(image) for image in decoded if image is not None]

    def _decode_pil(self, name: str | None, data: bytes) -> Image.Image:
        with self.metrics.time_decode(), _named(name), self._open(data) as image:
            result = finish_decode(image)
            return self.preprocessing.prepare(result) if self.preprocessing else result

    def _decode_tensors(
        self,
        indices: list[int],
        *,
        files: list[tuple[str | None, bytes]],
        headers: list[JpegHeader | None],
        into: list[Image.Image | torch.Tensor | None],
    ) -> None:
        """Decode the JPEGs at ``indices`` in one batched call; failures stay None (PIL's)."""
        assert self.preprocessing is not None and self.tensor_device is not None
        began = time.perf_counter()
        images = decode_jpegs(
            [files[index][1] for index in indices],
            orientations=[headers[index].orientation for index in indices],  # type: ignore[union-attr]
            preprocessing=self.preprocessing,
            device=self.tensor_device,
        )
        # The histogram is per image: each gets its share of the batched call.
        if self.metrics.decode_seconds is not None:
            share = (time.perf_counter() - began) / len(indices)
            for _ in indices:
                self.metrics.decode_seconds.observe(share)
        for index, image in zip(indices, images, strict=True):
            into[index] = image

    @property
    def _chunk_pixels(self) -> int:
        """Full-size pixels one batched decode may hold: the request's budget (whose count, for
        reduced JPEG decodes, is smaller than what torchvision decodes), at least one image."""
        return max(self.limits.max_request_pixels, self.limits.max_pixels)

    def decode_one(self, data: bytes) -> Image.Image:
        """One encoded image, decoded and prepared as a request's would be (in-process use:
        the benchmark's ceiling and the agreement tests)."""
        with self.metrics.time_decode():
            image = load_image(
                data,
                max_pixels=self.limits.max_pixels,
                min_size=self.min_size,
                max_aspect_ratio=self.limits.max_aspect_ratio,
            )
            return self.preprocessing.prepare(image) if self.preprocessing else image

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _open(self, data: bytes) -> Image.Image:
        return open_image(
            data,
            max_pixels=self.limits.max_pixels,
            min_size=self.min_size,
            max_aspect_ratio=self.limits.max_aspect_ratio,
        )

    def _check_request_pixels(self, images: int, pixels: int) -> None:
        limit = self.limits.max_request_pixels
        if pixels > limit:
            raise ImageDecodeError(
                f"{images} images of {pixels} pixels in all, over the limit of {limit} per "
                "request (CLASSIFIER_MAX_REQUEST_PIXELS): send fewer or smaller images per request"
            )

    def _check_budget(self, started: float, abandoned: threading.Event | None) -> None:
        if abandoned is not None and abandoned.is_set():
            raise RequestAbandonedError("request abandoned while its images were being decoded")
        used = time.thread_time() - started
        if used > self.limits.cpu_budget_s:
            raise ImageDecodeError(
                f"decoding this request's images took {used:.1f} s of CPU, over the budget of "
                f"{self.limits.cpu_budget_s:g} s (CLASSIFIER_DECODE_CPU_BUDGET_S): send fewer "
                "or smaller images"
            )


def _safe_name(upload: Any) -> str | None:
    """The upload's file name, with control characters escaped: it goes into errors and logs."""
    name = getattr(upload, "filename", None)
    if name is None:
        return None
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(name))


def _upload_bytes(upload: Any) -> bytes:
    raw = upload.file.read() if hasattr(upload, "file") else upload
    if hasattr(raw, "read"):
        raw = raw.read()
    if not isinstance(raw, bytes | bytearray):
        raise ImageDecodeError(f"expected an image file upload, got {type(upload).__name__}")
    return bytes(raw)


@contextlib.contextmanager
def _named(name: str | None) -> Iterator[None]:
    """Prefix decoding errors with the file's name, so the client knows which one failed."""
    try:
        yield
    except ImageDecodeError as exc:
        named = ImageDecodeError(f"{name}: {exc}" if name else str(exc))
        # For the error answer's field errors (serving/problems.py): which file, and why.
        named.file, named.reason = name, str(exc)  # type: ignore[attr-defined]
        raise named from None
