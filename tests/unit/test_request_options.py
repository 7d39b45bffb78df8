"""Per-request options (``top_k``, ``threshold``) through adaptive batching, in-process.

Two tiers: BentoML's real batcher (a tiny batchable service behind the real request parser,
requests sent concurrently so they share batches), and the runtime's batch call on a real tiny
model, where each image's answer under its own options must be the answer it gets alone."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import bentoml
import httpx
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from models import ModelSpec, PreprocessConfig, Task, create_classifier
from models.artifact import save_artifact
from serving.decoding import DecodeLimits, RequestDecoder
from serving.options import ClassifyOptions, OptionError, OptionRules, Threshold, TopK
from serving.parsing import UploadedImages, install_request_parsing
from serving.problem_answers import ProblemAnswers
from serving.problems import PROBLEM_JSON, Problem
from serving.runtime import build_runtime
from serving.settings import ServingSettings

LIMITS = DecodeLimits(
    max_pixels=1_000_000,
    max_aspect_ratio=20.0,
    max_images=4,
    max_request_pixels=2_000_000,
    cpu_budget_s=10.0,
)
LABELS = tuple(f"class{index}" for index in range(6))
CONFIG = PreprocessConfig(input_size=(3, 32, 32))


@bentoml.service(name="batching_probe", metrics={"enabled": False})  # one registry per process
class BatchingProbe:
    """A batchable API that answers, per image, the options it carried and its batch's size."""

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=60_000)
    async def classify(
        self, images: UploadedImages, top_k: TopK = None, threshold: Threshold = None
    ) -> list[dict[str, Any]]:
        await asyncio.sleep(0.05)  # long enough for the next requests to queue into one batch
        return [
            {"options": [item.options.top_k, item.options.threshold], "batch": len(images)}
            for item in images
        ]


def _png(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def probe_client():
    decoder = RequestDecoder(limits=LIMITS, reduced_jpeg_decode=False)
    rules = OptionRules(num_labels=len(LABELS), multi_label=True)
    method = BatchingProbe.apis["classify"]
    original = method.input_spec
    install_request_parsing(method, decoder_of=lambda: decoder, rules_of=lambda: rules)
    try:
        with TestClient(ProblemAnswers(BatchingProbe.to_asgi())) as client:
            yield client
    finally:
        method.input_spec = original
        decoder.close()


def _concurrently(client: TestClient, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send ``requests`` at once, on the event loop the app runs on: they meet in the batcher."""

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
            return await asyncio.gather(
                *(http.post("/classify", timeout=60, **request) for request in requests)
            )

    return client.portal.call(send_all)


def test_requests_batched_together_keep_their_own_options(probe_client):
    asked = [(None, None), (1, None), (3, 0.25), (None, 0.9), (6, 0.0), (2, 1.0)] * 4
    requests = [
        {
            "files": [("images", ("a.png", _png(), "image/png"))] * (1 + index % 2),
            "data": {
                **({"top_k": str(top_k)} if top_k is not None else {}),
                # What BentoML's clients send for an unset option: JSON null.
                "threshold": "null" if threshold is None else str(threshold),
            },
        }
        for index, (top_k, threshold) in enumerate(asked)
    ]
    responses = _concurrently(probe_client, requests)
    batches = set()
    for (top_k, threshold), request, response in zip(asked, requests, responses, strict=True):
        assert response.status_code == 200, response.text
        answers = response.json()
        assert len(answers) == len(request["files"])
        assert all(answer["options"] == [top_k, threshold] for answer in answers)
        batches.update(answer["batch"] for answer in answers)
    # Requests with different options shared batches: the batcher did merge them.
    assert max(batches) > 3, batches


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"top_k": "0"}, "top_k", "must be from 1 to 6"),
        ({"top_k": "7"}, "top_k", "must be from 1 to 6"),
        ({"top_k": "two"}, "top_k", "must be a whole number"),
        ({"threshold": "1.5"}, "threshold", "must be from 0 to 1"),
        ({"threshold": "-0.1"}, "threshold", "must be from 0 to 1"),
        ({"threshold": "nan"}, "threshold", "must be a number from 0 to 1"),
    ],
)
def test_options_out_of_range_are_a_422_naming_the_field(probe_client, data, field, reason):
    files = [("images", ("a.png", _png(), "image/png"))]
    response = probe_client.post("/classify", files=files, data=data)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["type"] == Problem.INVALID_OPTION.type_uri and problem["status"] == 422
    [error] = problem["errors"]
    assert error["field"] == field and reason in error["reason"]
    assert field in problem["detail"]


def test_both_options_wrong_name_both_fields(probe_client):
    files = [("images", ("a.png", _png(), "image/png"))]
    response = probe_client.post("/classify", files=files, data={"top_k": "0", "threshold": "2"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["top_k", "threshold"]


def test_an_option_given_twice_or_as_a_file_is_refused(probe_client):
    image = ("images", ("a.png", _png(), "image/png"))
    twice = probe_client.post(
        "/classify", files=[image, ("top_k", (None, "1")), ("top_k", (None, "2"))]
    )
    as_file = probe_client.post(
        "/classify", files=[image, ("top_k", ("k.txt", b"1", "text/plain"))]
    )
    for response in (twice, as_file):
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "top_k"


def test_threshold_is_refused_for_a_single_label_model():
    rules = OptionRules(num_labels=3, multi_label=False)
    assert rules.check(ClassifyOptions(top_k=3)) == ClassifyOptions(top_k=3)
    with pytest.raises(OptionError) as refused:
        rules.check(ClassifyOptions(threshold=0.5))
    [error] = refused.value.errors
    assert error.field == "threshold" and "multi-label models only" in error.reason


@pytest.fixture(scope="module", params=[Task.MULTI_LABEL, Task.SINGLE_LABEL], ids=str)
def runtime(request, tmp_path_factory):
    """timm's tiny ResNet with fixed random weights; the multi-label one with per-class
    thresholds, which a request's ``threshold`` replaces."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("artifact")
    multi = request.param is Task.MULTI_LABEL
    spec = ModelSpec(
        architecture="test_resnet",
        task=request.param,
        labels=LABELS,
        preprocessing=CONFIG,
        top_k=2,
        threshold=0.5,
        class_thresholds={"class0": 0.1, "class1": 0.9} if multi else {},
    )
    save_artifact(directory, create_classifier("test_resnet", len(LABELS)), spec)
    built = build_runtime(
        ServingSettings(device="cpu", precision="float32"), directory, warmup=False
    )
    yield built
    built.close()


def _images() -> list[Image.Image]:
    colors = ["red", "green", "blue", "white", "black", "yellow"]
    return [Image.new("RGB", (32, 32), color) for color in colors]


def test_each_image_of_a_batch_is_answered_under_its_own_options(runtime):
    multi = runtime.predictor.spec.task is Task.MULTI_LABEL
    options = [
        ClassifyOptions(),
        ClassifyOptions(top_k=1),
        ClassifyOptions(top_k=6),
        ClassifyOptions(threshold=0.0) if multi else ClassifyOptions(top_k=3),
        ClassifyOptions(top_k=2, threshold=0.0) if multi else ClassifyOptions(top_k=5),
        ClassifyOptions(threshold=1.0) if multi else ClassifyOptions(),
    ]
    images = _images()
    together = runtime.torch_thread.call(runtime.classify_batch, images, options)
    for image, chosen, answer in zip(images, options, together, strict=True):
        alone = runtime.torch_thread.call(runtime.classify_batch, [image], [chosen])
        _assert_same(answer, alone[0])
    defaults = runtime.torch_thread.call(runtime.classify_batch, images)
    _assert_same(together[0], defaults[0])  # no options: the model's defaults, as before
    if multi:
        assert len(together[3]) == len(LABELS)  # threshold 0 replaces the per-class ones
        assert len(together[4]) == 2  # top_k caps a multi-label answer
        assert together[5] == [] or all(s.score >= 1.0 for s in together[5])
        assert len(together[1]) <= 1
    else:
        assert [len(answer) for answer in together] == [2, 1, 6, 3, 5, 2]


def _assert_same(answer, expected) -> None:
    assert [s.label for s in answer] == [s.label for s in expected]
    assert [s.score for s in answer] == pytest.approx([s.score for s in expected], abs=1e-5)
