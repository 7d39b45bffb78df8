"""The torchvision JPEG path (``jpeg_decoder``), exercised on the CPU: the code that decodes on a
GPU with nvjpeg when the service runs on CUDA (benchmarks/gpu* measure it there)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from benchmarks.workload import photo_like_jpeg
from models import ImageDecodeError, ModelSpec, PreprocessConfig, Task, create_classifier
from models.artifact import save_artifact
from models.preprocessing import EvalPreprocessing
from models.tensor_decode import decode_jpegs, orient, pixel_chunks, tensor_header
from serving.decoding import DecodeLimits, RequestDecoder
from serving.runtime import build_runtime
from serving.settings import ServingSettings

MIN_TOP1_AGREEMENT = 0.99
CPU = torch.device("cpu")
CONFIG = PreprocessConfig(input_size=(3, 64, 64))
LIMITS = DecodeLimits(
    max_pixels=4_000_000,
    max_aspect_ratio=32.0,
    max_images=64,
    max_request_pixels=8_000_000,
    cpu_budget_s=10.0,
)


def _decoder(**overrides) -> RequestDecoder:
    options = {"limits": LIMITS, "preprocessing": EvalPreprocessing(CONFIG), "tensor_device": CPU}
    return RequestDecoder(**{**options, **overrides})


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """timm's tiny ResNet with fixed random weights, 10 classes, 64 px input."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("artifact")
    spec = ModelSpec(
        architecture="test_resnet",
        task=Task.SINGLE_LABEL,
        labels=tuple(f"class{index}" for index in range(10)),
        preprocessing=CONFIG,
    )
    save_artifact(directory, create_classifier("test_resnet", 10), spec)
    return directory


def _served_top1(artifact, jpegs: list[bytes], *, jpeg_decoder: str) -> list[str]:
    settings = ServingSettings(device="cpu", precision="float32", jpeg_decoder=jpeg_decoder)
    runtime = build_runtime(settings, artifact, warmup=False)
    try:
        assert (runtime.decoder.tensor_device is not None) == (jpeg_decoder == "torchvision")
        images = [decoded.image for decoded in runtime.decoder.decode_uploads(jpegs)]
        results = runtime.torch_thread.call(runtime.classify_batch, images)
    finally:
        runtime.close()
    return [labels[0].label for labels in results]


def test_torchvision_path_agrees_with_the_pil_path(artifact):
    # Sizes from under the resize target to ones PIL decodes at 1/2 or 1/4 scale.
    sizes = [(120, 90), (200, 150), (320, 240), (500, 375)]
    jpegs = [photo_like_jpeg(*sizes[seed % len(sizes)], seed=seed) for seed in range(200)]
    reference = _served_top1(artifact, jpegs, jpeg_decoder="pil")
    tensors = _served_top1(artifact, jpegs, jpeg_decoder="torchvision")

    agreement = sum(a == b for a, b in zip(reference, tensors, strict=True)) / len(jpegs)
    # Random weights must still tell the images apart, or agreement would be trivial.
    most_common = max(reference.count(label) for label in set(reference))
    assert most_common <= 0.8 * len(jpegs), "the model predicts nearly one class for all"
    assert agreement >= MIN_TOP1_AGREEMENT, f"top-1 agreement {agreement:.3f}"


def test_jpegs_decode_to_tensors_and_other_formats_with_pil():
    photo = photo_like_jpeg(200, 150, seed=1)
    png = _encoded(Image.new("RGB", (90, 70), "red"), "PNG")
    decoded = _decoder().decode_uploads([photo, png, photo])

    assert [type(item.image) for item in decoded] == [torch.Tensor, Image.Image, torch.Tensor]
    assert decoded[0].image.shape == (3, 64, 64) and decoded[0].image.dtype == torch.uint8


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_a_corrupt_jpeg_gets_the_pil_paths_400_and_a_png_beside_it_still_decodes(cut):
    photo = photo_like_jpeg(200, 150, seed=2)
    broken = photo[: int(len(photo) * cut)]
    png = _encoded(Image.new("RGB", (90, 70), "blue"), "PNG")

    def files():  # uploads are read once, like a request's
        return [_Upload("ok.jpg", photo), _Upload("broken.jpg", broken)]

    with pytest.raises(ImageDecodeError) as pil_error:
        _decoder(tensor_device=None).decode_uploads(files())
    with pytest.raises(ImageDecodeError) as tensor_error:
        _decoder().decode_uploads(files())
    assert str(tensor_error.value) == str(pil_error.value)
    assert str(tensor_error.value).startswith("broken.jpg: ")

    decoded = _decoder().decode_uploads([_Upload("a.png", png), _Upload("ok.jpg", photo)])
    assert [type(item.image) for item in decoded] == [Image.Image, torch.Tensor]


def test_a_jpeg_torchvision_fails_on_falls_back_to_pil(monkeypatch):
    photo = photo_like_jpeg(200, 150, seed=3)
    monkeypatch.setattr("models.tensor_decode._decode_batch", lambda encoded, device: [None])
    [decoded] = _decoder().decode_uploads([photo])
    assert isinstance(decoded.image, Image.Image) and decoded.image.size == (64, 64)


def test_a_bad_jpeg_in_a_batched_call_leaves_the_others_decoded():
    photo = photo_like_jpeg(200, 150, seed=4)
    results = decode_jpegs(
        [photo, photo[:100], photo],
        orientations=[1, 1, 1],
        preprocessing=EvalPreprocessing(CONFIG),
        device=CPU,
    )
    assert [None if item is None else tuple(item.shape) for item in results] == [
        (3, 64, 64),
        None,
        (3, 64, 64),
    ]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encoded(Image.fromarray(pixels), "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    assert np.array_equal(orient(tensor, orientation=orientation).permute(1, 2, 0), expected)


def test_an_exif_rotated_jpeg_is_rotated_like_pil():
    photo = Image.open(io.BytesIO(photo_like_jpeg(200, 120, seed=5)))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _encoded(photo, "JPEG", exif=exif, quality=95)
    with Image.open(io.BytesIO(rotated)) as opened:
        assert tensor_header(opened).orientation == 6
    tensor_image = _decoder().decode_uploads([rotated])[0].image
    pil_image = _decoder(tensor_device=None).decode_uploads([rotated])[0].image
    difference = tensor_image.permute(1, 2, 0).float() - torch.from_numpy(np.array(pil_image))
    assert difference.abs().mean() < 3  # resize rounding; a wrong rotation differs by ~40


def test_cmyk_and_non_jpeg_images_stay_on_pil():
    cmyk = _encoded(Image.new("CMYK", (20, 20)), "JPEG")
    with Image.open(io.BytesIO(cmyk)) as opened:
        assert tensor_header(opened) is None
    with Image.open(io.BytesIO(_encoded(Image.new("RGB", (20, 20)), "PNG"))) as opened:
        assert tensor_header(opened) is None


def test_batched_decodes_are_chunked_by_full_size_pixels():
    photo = photo_like_jpeg(1024, 768, seed=6)
    with _decoder()._open(photo) as opened:
        header = tensor_header(opened)
    assert opened.size == (128, 96)  # decoded at 1/8 by PIL, ...
    assert header.full_pixels == 1024 * 768  # ... but whole by torchvision
    chunks = pixel_chunks([header] * 25, max_pixels=8_000_000)
    assert [len(chunk) for chunk in chunks] == [10, 10, 5]
    assert pixel_chunks([header], max_pixels=10) == [range(1)]  # one image always decodes


def test_a_mixed_batch_normalises_like_an_all_pil_batch():
    preprocessing = EvalPreprocessing(CONFIG)
    photos = [photo_like_jpeg(200, 150, seed=seed) for seed in (7, 8)]
    pil_images = [
        preprocessing.prepare(Image.open(io.BytesIO(data)).convert("RGB")) for data in photos
    ]
    tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in pil_images]

    reference = preprocessing.to_batch(pil_images)
    mixed = preprocessing.to_batch([pil_images[0], tensors[1]])
    assert mixed.shape == reference.shape == (2, 3, 64, 64)
    assert mixed.dtype == reference.dtype and mixed.device == reference.device
    assert mixed.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(mixed, reference)  # the same pixels normalise bit for bit
    with pytest.raises(ValueError, match="prepared uint8"):
        preprocessing.to_batch([pil_images[0], tensors[1][:, :10]])


def test_jpeg_decoder_setting_is_validated():
    assert ServingSettings().jpeg_decoder == "auto"
    assert ServingSettings.from_env({"CLASSIFIER_JPEG_DECODER": "torchvision"}).jpeg_decoder == (
        "torchvision"
    )
    with pytest.raises(ValueError, match="CLASSIFIER_JPEG_DECODER"):
        ServingSettings.from_env({"CLASSIFIER_JPEG_DECODER": "nvjpeg"})


def test_auto_keeps_pil_on_the_cpu(artifact):
    runtime = build_runtime(ServingSettings(device="cpu"), artifact, warmup=False)
    try:
        assert runtime.decoder.tensor_device is None
    finally:
        runtime.close()


def test_a_geometry_tensors_cannot_run_keeps_pil():
    border = EvalPreprocessing(CONFIG.model_copy(update={"crop_mode": "border"}))
    assert not border.supports_tensors
    with pytest.raises(ValueError, match="tensor-capable"):
        _decoder(preprocessing=border)


class _Upload:
    """A named upload as the request parser hands it over (a file object and its name)."""

    def __init__(self, filename: str, data: bytes) -> None:
        self.filename = filename
        self.file = io.BytesIO(data)


def test_decoded_tensors_pass_bentoml_request_validation():
    from serving.decoding import DecodedImage

    from .test_request_parsing import ORIGINAL_INPUT

    tensor = torch.zeros(3, 64, 64, dtype=torch.uint8)
    validated = ORIGINAL_INPUT.model_validate({"images": [DecodedImage(tensor)]})
    assert validated.images[0] is tensor
