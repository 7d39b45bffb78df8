"""The request parser (serving/parsing.py) in-process: a tiny real BentoML service whose API takes
``UploadedImages``, with ``install_request_parsing`` on it and a ``RequestDecoder`` of its own,
served by its ASGI app through Starlette's test client. No model, no server process."""

from __future__ import annotations

import io
from typing import Any

import bentoml
import pytest
from PIL import Image
from starlette.testclient import TestClient

from serving.decoding import DecodeLimits, RequestDecoder
from serving.options import OptionRules, Threshold, TopK
from serving.parsing import (
    MULTIPART,
    UploadedImages,
    fix_response_media_type,
    install_request_parsing,
)
from serving.problem_answers import ProblemAnswers
from serving.problems import PROBLEM_JSON, TYPE_BASE, ProblemDetails

MAX_IMAGES = 3
RULES = OptionRules(num_labels=4, multi_label=True)
LIMITS = DecodeLimits(
    max_pixels=1_000_000,
    max_aspect_ratio=20.0,
    max_images=MAX_IMAGES,
    max_request_pixels=2_000_000,
    cpu_budget_s=10.0,
)


@bentoml.service(name="parsing_probe")
class ParsingProbe:
    """What the parser hands an API: decoded PIL images, each with its request's options, here
    answered as (size, mode, options)."""

    @bentoml.api
    async def classify(
        self, images: UploadedImages, top_k: TopK = None, threshold: Threshold = None
    ) -> list[dict[str, Any]]:
        return [
            {
                "size": list(item.image.size),
                "mode": item.image.mode,
                "options": [item.options.top_k, item.options.threshold],
            }
            for item in images
        ]


ORIGINAL_INPUT = ParsingProbe.apis["classify"].input_spec


@pytest.fixture(scope="module")
def client():
    decoder = RequestDecoder(limits=LIMITS, reduced_jpeg_decode=False)
    install_request_parsing(
        ParsingProbe.apis["classify"], decoder_of=lambda: decoder, rules_of=lambda: RULES
    )
    try:
        with TestClient(ProblemAnswers(ParsingProbe.to_asgi())) as test_client:
            yield test_client
    finally:
        ParsingProbe.apis["classify"].input_spec = ORIGINAL_INPUT
        decoder.close()


def _encoded(size=(20, 10), image_format="PNG", color="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, image_format)
    return buffer.getvalue()


def _upload(name="a.png", data=None, field="images") -> tuple[str, tuple[str, bytes, str]]:
    return field, (name, _encoded() if data is None else data, "image/png")


def _error(response, slug: str | None = None) -> str:
    """The detail of a problem answer (RFC 9457), checked for its shape (and type)."""
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = ProblemDetails.model_validate_json(response.content)
    assert problem.status == response.status_code
    assert problem.type.startswith(TYPE_BASE)
    if slug is not None:
        assert problem.type == TYPE_BASE + slug
    return problem.detail


def test_a_good_request_is_decoded_into_images(client):
    files = [
        _upload("wide.png", _encoded((40, 10))),
        _upload("tall.jpg", _encoded((12, 30), "JPEG", "blue")),
    ]
    response = client.post("/classify", files=files)
    assert response.status_code == 200, response.text
    assert response.json() == [
        {"size": [40, 10], "mode": "RGB", "options": [None, None]},
        {"size": [12, 30], "mode": "RGB", "options": [None, None]},
    ]


def test_the_api_keeps_its_input_model_name_and_schema(client):
    parsed = ParsingProbe.apis["classify"].input_spec
    assert parsed is not ORIGINAL_INPUT and issubclass(parsed, ORIGINAL_INPUT)
    assert parsed.__name__ == ORIGINAL_INPUT.__name__
    assert parsed.model_json_schema() == ORIGINAL_INPUT.model_json_schema()


@pytest.mark.parametrize(
    ("request_args", "got"),
    [
        (
            {"data": {"images": "http://169.254.169.254/latest"}},
            "`application/x-www-form-urlencoded`",
        ),
        ({"content": b"cat.jpg", "headers": {"content-type": "text/plain"}}, "`text/plain`"),
        ({"json": {"images": ["http://example.com/cat.jpg"]}}, "`application/json`"),
        ({"content": b"x"}, "no content type"),
    ],
    ids=["urlencoded", "text", "json", "none"],
)
def test_anything_but_multipart_is_415_naming_multipart(client, request_args, got):
    response = client.post("/classify", **request_args)
    assert response.status_code == 415
    message = _error(response)
    assert MULTIPART in message and "`images`" in message
    assert f"got {got}" in message


def test_an_unexpected_field_is_refused(client):
    response = client.post("/classify", files=[_upload(), _upload("b.png", field="image")])
    assert response.status_code == 400
    assert _error(response).startswith("unexpected field `image`: send the images as files")


def test_a_text_value_in_the_file_field_is_refused(client):
    response = client.post("/classify", files={"images": (None, "https://example.com/cat.jpg")})
    assert response.status_code == 400
    assert _error(response) == "`images` must hold uploaded files, not text (URLs are not fetched)"


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        (MULTIPART, b"--b\r\n", "Missing boundary in multipart."),
        (
            f"{MULTIPART}; boundary=b",
            b"--b\r\nContent-Type: image/png\r\n\r\nxx\r\n--b--\r\n",
            'The Content-Disposition header field "name" must be provided.',
        ),
    ],
    ids=["no-boundary", "no-content-disposition"],
)
def test_a_malformed_multipart_body_is_400(client, content_type, body, reason):
    response = client.post("/classify", content=body, headers={"content-type": content_type})
    assert response.status_code == 400
    assert _error(response) == f"malformed request: {reason}"


@pytest.mark.parametrize("body", [b"", b"--b--\r\n"], ids=["empty-body", "no-parts"])
def test_a_request_without_images_is_400(client, body):
    headers = {"content-type": f"{MULTIPART}; boundary=b"}
    response = client.post("/classify", content=body, headers=headers)
    assert response.status_code == 400
    assert _error(response).startswith("no images: send at least one file")


def test_too_many_images_are_refused_before_decoding(client):
    # Not images at all: the count is checked before any upload is decoded.
    files = [_upload(f"{i}.png", b"not an image") for i in range(MAX_IMAGES + 1)]
    response = client.post("/classify", files=files)
    assert response.status_code == 400
    assert _error(response) == (
        f"{MAX_IMAGES + 1} images in one request, over the limit of {MAX_IMAGES}"
    )


def test_a_bad_image_is_named_in_the_400(client):
    files = [_upload("good.png"), _upload("notes.txt", b"just some text, not an image")]
    response = client.post("/classify", files=files)
    assert response.status_code == 400
    assert _error(response).startswith("notes.txt: not a recognised image format")


def test_the_request_limits_of_the_decoder_apply(client):
    too_big = _encoded((1001, 1000))  # over max_pixels
    response = client.post("/classify", files=[_upload("big.png", too_big)])
    assert response.status_code == 400
    assert _error(response).startswith("big.png: ") and "over the limit" in _error(response)


def test_responses_do_not_rebuild_the_output_schema(client, monkeypatch):
    """BentoML resolves a response's media type from the output's JSON schema on every response
    unless the type is declared; ``fix_response_media_type`` declares what it resolves to."""
    method = ParsingProbe.apis["classify"]
    monkeypatch.setattr(method.output_spec, "media_type", None)
    fix_response_media_type(method)
    assert method.output_spec.media_type == "application/json"

    def no_schema_per_response(*args, **kwargs):
        raise AssertionError("the output's JSON schema was built for a response")

    monkeypatch.setattr(method.output_spec, "model_json_schema", no_schema_per_response)
    response = client.post("/classify", files=[_upload()])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
