import io
import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from pydantic import ConfigDict, TypeAdapter

from models import ModelSpec, Predictor, PreprocessConfig, Task, create_classifier, save_artifact
from models.image_io import ImageDecodeError, load_image
from models.preprocessing import EvalPreprocessing
from serving.decoding import DecodedImage, DecodeLimits, RequestDecoder
from serving.parsing import UploadedImage, UploadedImages
from serving.runtime import warmup_batch_sizes
from serving.settings import (
    CPU_MAX_BATCH_SIZE,
    SERVICE_NAME,
    ServingSettings,
    load_service_config,
)

from ..conftest import PROJECT_ROOT


def _fixed_output_artifact(tmp_path, task: Task, **spec_overrides):
    """A tiny ResNet (timm's test_resnet) whose logits are always [0, 1, 2], whatever the image."""
    model = create_classifier("test_resnet", 3)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    spec = ModelSpec(
        architecture="test_resnet",
        task=task,
        labels=("a", "b", "c"),
        preprocessing=PreprocessConfig(input_size=(3, 32, 32)),
        **spec_overrides,
    )
    return save_artifact(tmp_path, model, spec)


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_single_label_predictor_returns_known_top_k(tmp_path):
    predictor = Predictor.from_artifact(
        _fixed_output_artifact(tmp_path, Task.SINGLE_LABEL, top_k=2)
    )
    images = [Image.new("RGB", (50, 40), "blue"), Image.new("RGB", (20, 90), "white")]
    for prediction in predictor.predict(images):
        assert [p.label for p in prediction] == ["c", "b"]
        expected = _softmax([0, 1, 2])
        assert [p.score for p in prediction] == pytest.approx([expected[2], expected[1]], abs=1e-5)
    assert len(predictor.predict(images, top_k=3)[0]) == 3


def test_multi_label_predictor_applies_thresholds(tmp_path):
    artifact = _fixed_output_artifact(
        tmp_path, Task.MULTI_LABEL, threshold=0.7, class_thresholds={"c": 0.9}
    )
    predictor = Predictor.from_artifact(artifact, device="cpu")
    [prediction] = predictor.predict([Image.new("RGB", (32, 32))])
    # sigmoid: a 0.5, b 0.731, c 0.881 (< its own 0.9 threshold)
    assert [p.label for p in prediction] == ["b"]
    [relaxed] = predictor.predict([Image.new("RGB", (32, 32))], threshold=0.5)
    assert [p.label for p in relaxed] == ["c", "b", "a"]


def test_warmup_and_empty_batch(tmp_path):
    predictor = Predictor.from_artifact(_fixed_output_artifact(tmp_path, Task.SINGLE_LABEL))
    predictor.warmup((1, 3))
    assert predictor.predict([]) == []


def test_device_must_be_known():
    from models import choose_device

    with pytest.raises(ValueError, match="auto, cuda or cpu"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            choose_device("cuda")


def test_settings_from_environment():
    settings = ServingSettings.from_env(
        {"CLASSIFIER_MODEL_TAG": "x:1", "CLASSIFIER_MAX_BATCH_SIZE": "8", "OTHER": "ignored"}
    )
    assert settings.model_tag == "x:1" and settings.max_batch_size == 8
    # A bad value names the variable to fix, as start-up reports it.
    with pytest.raises(ValueError, match="CLASSIFIER_MAX_BATCH_SIZE: Input should be greater"):
        ServingSettings.from_env({"CLASSIFIER_MAX_BATCH_SIZE": "1"})
    with pytest.raises(ValueError, match="CLASSIFIER_PRECISION: Input should be 'auto'"):
        ServingSettings.from_env({"CLASSIFIER_PRECISION": "fp8"})


def test_api_keys_are_secret_and_split_for_rotation():
    old, new = "old-key-0123456789", "new-key-0123456789"
    settings = ServingSettings.from_env({"CLASSIFIER_API_KEYS": f" {old} , {new} "})
    assert settings.api_key_list() == [old, new]
    assert old not in repr(settings) and old not in str(settings.model_dump())
    assert ServingSettings.from_env({}).api_key_list() == []
    assert ServingSettings.from_env({"CLASSIFIER_API_KEYS": " "}).api_key_list() == []
    # A typo must not silently turn authentication off, nor allow guessable keys.
    for typo in (",", f"{old},", "short"):
        with pytest.raises(ValueError, match="CLASSIFIER_API_KEYS: .*at least 16 characters"):
            ServingSettings.from_env({"CLASSIFIER_API_KEYS": typo})


def test_configuration_yaml_is_accepted_by_bentoml():
    from _bentoml_sdk.service.config import ServiceConfig, validate

    config = load_service_config(PROJECT_ROOT / "configuration.yaml")
    assert config["metrics"]["namespace"] == SERVICE_NAME
    assert set(config) <= set(ServiceConfig.__annotations__), "unknown service config keys"
    validate(config)  # raises on wrong types or values
    with pytest.raises(Exception, match="workers|timeout"):
        validate({**config, "traffic": {"timeout": "soon"}})


def test_in_process_images_get_the_upload_treatment():
    rotated = Image.new("RGBA", (40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    rotated.convert("RGB").save(buffer, format="JPEG", exif=exif.tobytes())
    validated = TypeAdapter(
        UploadedImage, config=ConfigDict(arbitrary_types_allowed=True)
    ).validate_python
    decoded = validated(Image.open(io.BytesIO(buffer.getvalue())))
    assert decoded.mode == "RGB" and decoded.size == (20, 40)
    with pytest.raises(ValueError, match="over the limit of 50000000"):
        validated(Image.new("L", (10_000, 6_000)))
    assert validated(buffer.getvalue()).size == (20, 40)  # encoded bytes: decoded the same way
    with pytest.raises(ValueError, match="expected an uploaded image file, got int"):
        validated(12)
    images = TypeAdapter(
        UploadedImages, config=ConfigDict(arbitrary_types_allowed=True)
    ).validate_python
    with pytest.raises(ValueError, match="no images"):
        images([])
    with pytest.raises(ValueError, match="65 images in one request, over the limit of 64"):
        images([decoded] * 65)
    # What the request parser decoded passes through untouched.
    assert validated(DecodedImage(decoded)) is decoded


def _decoder(settings: ServingSettings, preprocessing=None) -> RequestDecoder:
    return RequestDecoder.from_settings(settings, preprocessing=preprocessing)


def test_decoder_accepts_uploads_and_names_the_bad_file():
    buffer = io.BytesIO()
    Image.new("L", (5, 5)).save(buffer, format="PNG")
    decoder = _decoder(ServingSettings())
    upload = SimpleNamespace(file=io.BytesIO(buffer.getvalue()), filename="ok.png")
    [decoded] = decoder.decode_uploads([upload])
    assert decoded.image.mode == "RGB"
    bad = SimpleNamespace(file=io.BytesIO(b"garbage"), filename="cat.jpg")
    with pytest.raises(ImageDecodeError, match="cat.jpg: not a recognised image format"):
        decoder.decode_uploads([bad])
    with pytest.raises(ImageDecodeError, match="expected an image file upload"):
        decoder.decode_uploads([12])
    with pytest.raises(ImageDecodeError, match="no images"):
        decoder.check_count([])
    with pytest.raises(ImageDecodeError, match="65 images in one request, over the limit of 64"):
        decoder.check_count([upload] * 65)


def test_precision_choices():
    from models import choose_device
    from models.device import cpu_has_native_bf16

    assert choose_device("cpu", "float32").autocast_dtype is None
    assert choose_device("cpu", "bfloat16").autocast_dtype is torch.bfloat16
    auto = choose_device("cpu", "auto").autocast_dtype
    assert auto is (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_device("cpu", "int8")
    with pytest.raises(ValueError, match="CLASSIFIER_PRECISION"):
        ServingSettings.from_env({"CLASSIFIER_PRECISION": "fp8"})


def test_batch_size_defaults_and_warmup_shapes():
    assert ServingSettings.from_env({"CLASSIFIER_DEVICE": "cpu"}).batch_size_limit() == (
        CPU_MAX_BATCH_SIZE
    )
    assert ServingSettings(max_batch_size=12).batch_size_limit() == 12
    assert warmup_batch_sizes(8) == (1, 2, 4, 8)
    assert warmup_batch_sizes(12) == (1, 2, 4, 8, 12)
    assert warmup_batch_sizes(2) == (1, 2)


def test_decoder_prepares_uploads_for_the_model():
    """A decoder built for a model decodes large JPEGs at reduced size and resizes/crops to the
    model's input; the batch then only stacks and normalises."""
    photo = Image.effect_noise((1024, 768), 40).convert("RGB")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    config = PreprocessConfig(input_size=(3, 224, 224), crop_pct=0.875)
    steps = EvalPreprocessing(config)
    assert _decoder(ServingSettings()).decode_one(buffer.getvalue()).size == (1024, 768)

    prepared = _decoder(ServingSettings(), steps).decode_one(buffer.getvalue())
    assert prepared.size == (224, 224) and steps.is_prepared(prepared)
    # It went through the reduced decode (512x384: 384 >= the resize target 256), not a full one.
    assert config.resize_size == 256
    reduced = load_image(buffer.getvalue(), min_size=256)
    assert reduced.size == (512, 384)
    assert torch.equal(steps.to_batch([prepared]), steps.to_batch([reduced]))
    full_decode = steps.to_batch([Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")])
    assert not torch.equal(steps.to_batch([prepared]), full_decode)

    exact = _decoder(ServingSettings(reduced_jpeg_decode=False), steps)
    full = steps.to_batch([exact.decode_one(buffer.getvalue())])
    decoded_in_full = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    assert torch.equal(full, steps.to_batch([decoded_in_full]))


def test_decode_limits_come_from_the_settings():
    settings = ServingSettings(max_image_pixels=1000, max_images_per_request=2)
    limits = DecodeLimits.from_settings(settings)
    assert (limits.max_pixels, limits.max_images) == (1000, 2)
    assert limits.cpu_budget_s == settings.decode_cpu_budget_s
