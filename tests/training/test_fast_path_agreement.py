"""The service's fast path (bf16 autocast, reduced-size JPEG decode) must predict what the exact
path (fp32, full decode) predicts: the rule for keeping an optimisation on is >= 99% top-1
agreement on a fixed image set (docs/performance.md)."""

import io

import pytest
import torch
from PIL import Image

from models import Predictor, load_image
from serving.runtime import build_runtime
from serving.settings import ServingSettings
from training.synthetic import SHAPES

MIN_TOP1_AGREEMENT = 0.99


def _photo_sized_jpegs(holdout_data) -> list[bytes]:
    """Held-out images upscaled to photo sizes, so the reduced decode actually kicks in."""
    jpegs = []
    for shape in SHAPES:
        for index, path in enumerate(sorted((holdout_data["single_label"] / shape).glob("*.jpg"))):
            side = 768 if index % 2 else 384
            buffer = io.BytesIO()
            load_image(path).resize((side, side), Image.Resampling.BICUBIC).save(
                buffer, format="JPEG", quality=90
            )
            jpegs.append(buffer.getvalue())
    return jpegs


def _top1(predictor, images) -> list[str]:
    return [row[0].label for row in predictor.predict(images, top_k=1)]


@pytest.mark.parametrize("reduced_decode", [True, False])
def test_bf16_and_reduced_decode_agree_with_fp32_full_decode(
    single_label_run, holdout_data, reduced_decode
):
    jpegs = _photo_sized_jpegs(holdout_data)
    exact = Predictor.from_artifact(single_label_run.artifact_dir, "cpu", "float32")
    # What the service serves: the runtime it builds, with the fast path forced on.
    settings = ServingSettings(
        device="cpu", precision="bfloat16", reduced_jpeg_decode=reduced_decode
    )
    fast = build_runtime(settings, single_label_run.artifact_dir, warmup=False)
    try:
        assert fast.predictor.plan.autocast_dtype is torch.bfloat16
        if reduced_decode:  # the photo-sized inputs really take the reduced path
            assert fast.decoder.min_size == fast.predictor.spec.preprocessing.resize_size
            assert max(load_image(jpegs[1], min_size=fast.decoder.min_size).size) < 768
        reference = _top1(exact, [load_image(data) for data in jpegs])
        images = [fast.decoder.decode_one(data) for data in jpegs]
        served = [row[0].label for row in fast.torch_thread.call(fast.classify_batch, images)]
    finally:
        fast.close()

    agreement = sum(a == b for a, b in zip(reference, served, strict=True)) / len(jpegs)
    assert len(jpegs) >= 200
    assert agreement >= MIN_TOP1_AGREEMENT, f"top-1 agreement {agreement:.3f}"
