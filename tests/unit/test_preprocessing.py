import io

import pytest
import torch
from PIL import Image

from models import PreprocessConfig, create_eval_transform, load_image
from models.image_io import ImageDecodeError
from models.labels import LabelSet, Task
from models.preprocessing import EvalPreprocessing
from serving.decoding import RequestDecoder
from serving.settings import ServingSettings
from training.data import ImageDataset, Sample


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = load_image(_encode(Image.new(mode, (9, 7)), fmt))
    assert image.mode == "RGB"
    assert image.size == (9, 7)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    decoded = load_image(_encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty upload"),
        (b"definitely not an image", "not a recognised image format"),
    ],
)
def test_undecodable_input_is_rejected_with_a_reason(payload, message):
    with pytest.raises(ImageDecodeError, match=message):
        load_image(payload)


def test_truncated_jpeg_is_rejected():
    data = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_pixel_limit():
    with pytest.raises(ImageDecodeError, match="over the limit of 100"):
        load_image(_encode(Image.new("RGB", (11, 10)), "PNG"), max_pixels=100)


def test_config_resolved_from_timm_with_size_override():
    from models import create_classifier

    model = create_classifier("test_resnet", 3)  # its timm config: bilinear, mean 0.5
    config = PreprocessConfig.for_model(model, image_size=64)
    assert config.input_size == (3, 64, 64)
    assert config.interpolation == "bilinear"
    assert config.mean == pytest.approx((0.5, 0.5, 0.5))


def test_training_evaluation_and_serving_produce_identical_tensors(tmp_path):
    """The validation dataset path and the service's upload path give the same tensor."""
    config = PreprocessConfig(input_size=(3, 48, 48), crop_pct=0.9)
    transform = create_eval_transform(config)
    image = Image.effect_noise((83, 61), 60).convert("RGB")
    path = tmp_path / "x.jpg"
    image.save(path, quality=90)

    dataset = ImageDataset(
        [Sample(path, ("a",), str(path))], LabelSet.from_names(["a"]), Task.SINGLE_LABEL, transform
    )
    from_training, _ = dataset[0]
    decoder = RequestDecoder.from_settings(ServingSettings())
    from_service = transform(decoder.decode_one(path.read_bytes()))

    assert from_training.shape == (3, 48, 48)
    assert torch.equal(from_training, from_service)


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (30, 200), (1, 1)])
def test_split_preprocessing_is_bit_identical_to_the_eval_transform(crop_mode, size):
    """The service prepares images at request time and assembles batches in one step; the
    result must equal what training evaluation computes image by image."""
    config = PreprocessConfig(input_size=(3, 224, 224), crop_mode=crop_mode, crop_pct=0.95)
    images = [Image.effect_noise(size, 50).convert("RGB"), Image.new("RGB", size, (200, 10, 90))]
    expected = torch.stack([create_eval_transform(config)(image) for image in images])
    steps = EvalPreprocessing(config)
    prepared = [steps.prepare(image) for image in images]
    for batch in (steps.to_batch(images), steps.to_batch(prepared)):
        assert torch.equal(batch, expected)
        assert batch.is_contiguous(memory_format=torch.channels_last)
    assert all(steps.is_prepared(image) and image.size == (224, 224) for image in prepared)
    # Prepared for another model: refused, not cropped a second time.
    other = EvalPreprocessing(config.model_copy(update={"input_size": (3, 64, 64)}))
    with pytest.raises(ValueError, match="different model"):
        other.to_batch(prepared)


def test_uploads_cannot_claim_to_be_prepared():
    """File metadata must not mark an upload as already resized and cropped."""
    from PIL import PngImagePlugin

    config = PreprocessConfig(input_size=(3, 32, 32))
    steps = EvalPreprocessing(config)
    text = PngImagePlugin.PngInfo()
    for key in ("image_classifier.prepared_for", "_image_classifier_prepared_for"):
        text.add_text(key, config.model_dump_json())
    upload = _encode(Image.new("RGB", (500, 375)), "PNG", pnginfo=text)
    decoded = load_image(upload)
    assert not steps.is_prepared(decoded)
    assert steps.to_batch([decoded]).shape == (1, 3, 32, 32)


def test_to_batch_converts_other_modes_to_rgb():
    config = PreprocessConfig(input_size=(3, 32, 32))
    gray = Image.effect_noise((40, 40), 30)
    expected = create_eval_transform(config)(gray.convert("RGB"))
    assert torch.equal(EvalPreprocessing(config).to_batch([gray])[0], expected)


def test_large_jpegs_decode_at_reduced_size_but_never_below_the_resize_target():
    photo = Image.effect_noise((1024, 768), 40).convert("RGB")
    data = _encode(photo, "JPEG", quality=90)
    assert load_image(data).size == (1024, 768)
    assert load_image(data, min_size=256).size == (512, 384)  # 1/2: 1/4 would give 192 < 256
    assert load_image(data, min_size=100).size == (256, 192)  # 1/4: 1/8 would give 96 < 100
    assert load_image(data, min_size=600).size == (1024, 768)  # no reduction fits
    # Orientation still applies; other formats are always decoded in full.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = load_image(_encode(photo, "JPEG", exif=exif.tobytes()), min_size=256)
    assert rotated.size == (384, 512)
    assert load_image(_encode(photo, "PNG"), min_size=100).size == (1024, 768)
