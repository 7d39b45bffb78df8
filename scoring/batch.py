"""The local batch loop: decode on threads, score in batches through the service's
:class:`models.Predictor`, append each batch's rows to the results file.

Images are decoded and prepared (resized, cropped) as the service decodes an upload
(``serving.decoding.RequestDecoder.decode_one``): the same size limits, EXIF orientation and,
unless ``full_decode``, the reduced-size decode of large JPEGs. The next batch decodes while the
current one runs through the model. A file that cannot be read or decoded, or a batch the model
fails on, becomes an error in its own rows: the run always goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from models.image_io import ImageDecodeError, load_image
from models.predictor import Predictor

from .model_source import LoadedModel
from .outputs import ResultRow, ResultsFile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSummary:
    """What a run did; ``skipped`` rows were already in the results file."""

    scored: int
    failed: int
    skipped: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return (self.scored + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return (
            f"{self.scored} scored, {self.failed} failed, {self.skipped} skipped (already done) "
            f"in {self.seconds:.1f} s: {self.images_per_second:.1f} images/s"
        )


@dataclass(frozen=True)
class ScoringOptions:
    """How to score: batch size, decode threads, the decoder's choice and the predictions'."""

    batch_size: int = 32
    decode_threads: int = 2
    full_decode: bool = False
    top_k: int | None = None
    threshold: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.decode_threads < 1:
            raise ValueError("batch_size and decode_threads must be at least 1")


def score_paths(
    paths: Sequence[str],
    *,
    model: LoadedModel,
    results: ResultsFile,
    options: ScoringOptions | None = None,
) -> BatchSummary:
    """Score every path not yet in ``results`` and append a row for each."""
    options = options or ScoringOptions()
    pending = [path for path in paths if path not in results.done]
    skipped = len(paths) - len(pending)
    if skipped:
        logger.info("%d of %d images are already in the results: skipping them",
                    skipped, len(paths))  # fmt: skip
    started = time.perf_counter()
    size = options.batch_size
    batches = [pending[i : i + size] for i in range(0, len(pending), size)]
    scored = failed = 0
    with (
        ThreadPoolExecutor(options.decode_threads, thread_name_prefix="decode") as pool,
        tqdm(total=len(pending), unit="img", disable=not options.progress) as bar,
    ):
        upcoming = _submit(pool, batches[0], model.predictor, options) if batches else []
        for index, batch in enumerate(batches):
            decoded = [future.result() for future in upcoming]
            if index + 1 < len(batches):  # decodes while this batch is in the model
                upcoming = _submit(pool, batches[index + 1], model.predictor, options)
            rows = _score_batch(batch, decoded, model=model, options=options)
            results.write(rows)
            failed += sum(row.error is not None for row in rows)
            scored += sum(row.error is None for row in rows)
            bar.update(len(batch))
    return BatchSummary(scored, failed, skipped, time.perf_counter() - started)


def _submit(
    pool: ThreadPoolExecutor, batch: list[str], predictor: Predictor, options: ScoringOptions
) -> list[Future[Image.Image | str]]:
    return [pool.submit(decode_file, path, predictor=predictor, options=options) for path in batch]


def decode_file(path: str, *, predictor: Predictor, options: ScoringOptions) -> Image.Image | str:
    """The prepared image for ``path``, or the reason it cannot be scored."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    min_size = None if options.full_decode else predictor.preprocessing.config.resize_size
    try:
        image = load_image(data, min_size=min_size)
        return predictor.preprocessing.prepare(image)
    except ImageDecodeError as exc:
        return f"not a decodable image: {exc}"
    except Exception as exc:  # anything else one file does must not stop the run
        return f"could not be prepared: {type(exc).__name__}: {exc}"


def _score_batch(
    batch: list[str],
    decoded: list[Image.Image | str],
    *,
    model: LoadedModel,
    options: ScoringOptions,
) -> list[ResultRow]:
    images = [image for image in decoded if not isinstance(image, str)]
    try:
        predictions = iter(_predict(model.predictor, images, options))
    except Exception:
        # Something in this batch broke the model itself: score its images one by one, so
        # only the image responsible gets the error.
        logger.exception("a batch of %d failed in the model; retrying image by image", len(images))
        predictions = iter([_predict_one(model.predictor, image, options) for image in images])
    lineage = model.lineage
    rows = []
    for path, image in zip(batch, decoded, strict=True):
        outcome = image if isinstance(image, str) else next(predictions)
        common = {"path": path, "model": lineage.model, "model_version": lineage.model_version,
                  "run_id": lineage.run_id}  # fmt: skip
        if isinstance(outcome, str):
            rows.append(ResultRow(**common, error=outcome))
        else:
            labels, scores = [p.label for p in outcome], [p.score for p in outcome]
            rows.append(ResultRow(**common, labels=labels, scores=scores))
    return rows


def _predict(predictor: Predictor, images: list[Image.Image], options: ScoringOptions):
    return predictor.predict(images, top_k=options.top_k, threshold=options.threshold)


def _predict_one(predictor: Predictor, image: Image.Image, options: ScoringOptions):
    try:
        [prediction] = _predict(predictor, [image], options)
    except Exception as exc:
        return f"the model failed on this image: {exc}"
    return prediction
