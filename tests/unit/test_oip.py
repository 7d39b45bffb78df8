"""The Open Inference Protocol (serving/oip.py, serving/oip_tensors.py) in-process: a tiny real
BentoML service (``FrontedService``, a batchable ``classify``) with the protocol's routes, the
request guard and the error middlewares, served through Starlette's test client. Request bodies
are built and responses read by Triton's own client library (``tritonclient.http``)."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace
from typing import Any

import bentoml
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from starlette.testclient import TestClient

from models.labels import LabelScore
from serving.decoding import DecodeLimits, RequestDecoder
from serving.guard import RequestGuard
from serving.http_front import FrontedService
from serving.oip import OipErrors, install_oip
from serving.oip_outputs import ImageResult, encode_outputs
from serving.oip_tensors import (
    OutputChoice,
    TensorError,
    deserialize_bytes,
    serialize_bytes,
)
from serving.options import OptionRules
from serving.problem_answers import ProblemAnswers
from serving.problems import PROBLEM_JSON, Problem
from serving.schemas import Classification, ModelRef

MODEL = "probe-model"
VERSION = "v123"
LABELS = ["red", "green", "blue"]
API_KEY = "oip-unit-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
INFER = f"/v2/models/{MODEL}/infer"
MAX_IMAGES = 4
LIMITS = DecodeLimits(
    max_pixels=1_000_000,
    max_aspect_ratio=20.0,
    max_images=MAX_IMAGES,
    max_request_pixels=2_000_000,
    cpu_budget_s=10.0,
)


# Metrics off: one registry per process (the probe counts its batches itself).
@bentoml.service(name="oip_probe", service_class=FrontedService, metrics={"enabled": False})
class OipProbe:
    """Scores an image's mean colour channels: a known answer for every input."""

    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=5000)
    async def classify(self, images: list[Any]) -> list[Classification]:
        self.batches.append(len(images))
        return [_classify(item) for item in images]

    def __init__(self) -> None:
        self.batches: list[int] = []


def _classify(item: Any) -> Classification:
    means = np.asarray(item.image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
    scores = means / max(float(means.sum()), 1.0)
    ranked = sorted(zip(LABELS, scores.tolist(), strict=True), key=lambda pair: -pair[1])
    top_k = item.options.top_k or len(LABELS)
    return Classification(
        labels=[LabelScore(label=label, score=score) for label, score in ranked[:top_k]],
        model=ModelRef(tag=f"{MODEL}:{VERSION}"),
    )


@pytest.fixture(scope="module")
def client():
    decoder = RequestDecoder(limits=LIMITS, reduced_jpeg_decode=False)
    served = SimpleNamespace(
        decoder=decoder,
        option_rules=OptionRules(num_labels=len(LABELS), multi_label=False),
        model=ModelRef(tag=f"{MODEL}:{VERSION}"),
        runtime=SimpleNamespace(predictor=SimpleNamespace(spec=SimpleNamespace(labels=LABELS))),
    )
    OipProbe.add_front_middleware(OipErrors, model_name=MODEL)
    OipProbe.add_front_middleware(ProblemAnswers)
    OipProbe.add_asgi_middleware(
        RequestGuard, api_keys=[API_KEY], max_body_bytes=200_000, body_read_timeout_s=5
    )
    install_oip(OipProbe, model_name=MODEL, served_of=lambda: served)
    try:
        with TestClient(OipProbe.to_asgi()) as test_client:
            yield test_client
    finally:
        decoder.close()


def _png(color: str, size=(16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = [_png("red"), _png("blue")]


def _infer(client, elements, *, binary: bool, outputs=None, parameters=None, headers=AUTH):
    """POST an inference request as tritonclient builds it; the response as it reads it."""
    tensor = triton.InferInput("images", [len(elements)], "BYTES")
    values = elements if binary else [base64.b64encode(e).decode() for e in elements]
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id="req-1", parameters=parameters
    )
    extra = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    return client.post(INFER, content=body, headers={**headers, **extra})


def _result(response) -> triton.InferResult:
    assert response.status_code == 200, response.text
    return triton.InferenceServerClient.parse_response_body(
        response.content, header_length=response.headers.get("inference-header-content-length")
    )


def _texts(array: np.ndarray) -> list[list[str]]:
    return [[v.decode() if isinstance(v, bytes) else v for v in row] for row in array.tolist()]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_answers_labels_and_scores_in_both_encodings(client, binary):
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in LABELS_SCORES]
    result = _result(_infer(client, IMAGES, binary=binary, outputs=outputs))
    labels, scores = result.as_numpy("labels"), result.as_numpy("scores")
    assert labels.shape == scores.shape == (2, 3)
    assert [row[0] for row in _texts(labels)] == ["red", "blue"]
    assert scores.dtype == np.float32
    assert scores[0, 0] == pytest.approx(1.0) and scores[1, 0] == pytest.approx(1.0)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        MODEL,
        VERSION,
        "req-1",
    )


LABELS_SCORES = ("labels", "scores")


def test_no_outputs_named_means_both_in_binary(client):
    response = _infer(client, IMAGES, binary=True)  # tritonclient: binary_data_output
    assert response.headers["content-type"] == "application/octet-stream"
    result = _result(response)
    assert {o["name"] for o in result.get_response()["outputs"]} == set(LABELS_SCORES)
    assert _texts(result.as_numpy("labels"))[1][0] == "blue"


def test_one_request_is_one_batch_through_the_batcher(client):
    instance = bentoml.get_current_service()
    count = len(instance.batches)
    _result(_infer(client, [_png("red"), _png("green"), _png("blue")], binary=True))
    assert instance.batches[count:] == [3]


def test_classification_extension_answers_triton_strings(client):
    outputs = [triton.InferRequestedOutput("scores", binary_data=False, class_count=2)]
    result = _result(_infer(client, IMAGES, binary=False, outputs=outputs))
    classes = _texts(result.as_numpy("scores"))
    assert len(classes) == 2 and all(len(row) == 2 for row in classes)
    score, index, label = classes[0][0].split(":")
    assert (float(score), int(index), label) == (pytest.approx(1.0, abs=1e-5), 0, "red")
    assert classes[1][0].endswith(":2:blue")


def test_top_k_is_a_request_parameter(client):
    result = _result(_infer(client, IMAGES, binary=False, parameters={"top_k": 1}))
    assert result.as_numpy("labels").shape == (2, 1)


def _problem(response, status: int, problem: Problem) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert (body["type"], body["status"]) == (problem.type_uri, status)
    assert body["error"] == body["detail"]  # what tritonclient shows
    return body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"inputs": "x"}).encode(), "inputs"),
        (json.dumps({"inputs": []}).encode(), "send one input, `images`"),
        (
            json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": []}]}),
            "got `x`",
        ),
        (
            json.dumps({"inputs": [{"name": "images", "shape": [1], "datatype": "FP32"}]}),
            "must be BYTES",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "images", "shape": [2], "datatype": "BYTES", "data": ["YQ=="]}
                    ]
                }
            ),
            "shape",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "images", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}
                    ],
                    "outputs": [{"name": "logits"}],
                }
            ),
            "unknown output `logits`",
        ),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_requests_are_400_with_a_reason(client, body, reason):
    answer = _problem(client.post(INFER, content=body, headers=AUTH), 400, Problem.INVALID_REQUEST)
    assert reason in answer["detail"]


def test_bad_base64_and_undecodable_images_name_the_element(client):
    bad_base64 = {
        "inputs": [{"name": "images", "shape": [2], "datatype": "BYTES", "data": ["YQ==", "@@"]}]
    }
    answer = _problem(client.post(INFER, json=bad_base64, headers=AUTH), 400, Problem.INVALID_IMAGE)
    assert answer["errors"] == [
        {"field": "images", "file": "images[1]", "reason": answer["errors"][0]["reason"]}
    ]
    assert "base64" in answer["detail"]
    answer = _problem(
        _infer(client, [IMAGES[0], b"not an image"], binary=True), 400, Problem.INVALID_IMAGE
    )
    assert answer["errors"][0]["file"] == "images[1]"


def test_binary_data_that_does_not_add_up_is_400(client):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    truncated = serialize_bytes([b"abcdef"])[:8]
    headers = {**AUTH, "Inference-Header-Content-Length": str(len(header))}
    answer = _problem(
        client.post(INFER, content=header + truncated, headers=headers),
        400,
        Problem.INVALID_REQUEST,
    )
    assert "declares 6 bytes" in answer["detail"]
    headers["Inference-Header-Content-Length"] = "999999"
    _problem(client.post(INFER, content=header, headers=headers), 400, Problem.INVALID_REQUEST)


def test_too_many_images_and_bad_options_are_refused(client):
    _problem(
        _infer(client, [IMAGES[0]] * (MAX_IMAGES + 1), binary=True), 400, Problem.INVALID_REQUEST
    )
    answer = _problem(
        _infer(client, IMAGES, binary=True, parameters={"top_k": 9}), 422, Problem.INVALID_OPTION
    )
    assert "top_k" in answer["detail"]


def test_keys_guard_metadata_and_infer_but_not_health(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    answer = _problem(_infer(client, IMAGES, binary=True, headers={}), 401, Problem.UNAUTHORIZED)
    assert "API key" in answer["error"]
    for path in ("/v2", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=AUTH).status_code == 200


def test_too_large_is_413_with_an_error_member(client):
    response = client.post(INFER, content=b"x" * 300_000, headers=AUTH)
    _problem(response, 413, Problem.REQUEST_TOO_LARGE)


def test_metadata_describes_the_model_and_the_server(client):
    server = client.get("/v2", headers=AUTH).json()
    assert {"classification", "binary_tensor_data"} <= set(server["extensions"])
    model = client.get(f"/v2/models/{MODEL}", headers=AUTH).json()
    assert model["name"] == MODEL and model["versions"] == [VERSION]
    assert model["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert {(o["name"], o["datatype"]) for o in model["outputs"]} == {
        ("labels", "BYTES"),
        ("scores", "FP32"),
    }


def test_an_unknown_model_is_404_naming_the_served_one(client):
    answer = _problem(client.get("/v2/models/other/ready", headers=AUTH), 404, Problem.NOT_FOUND)
    assert MODEL in answer["error"]


def test_the_routes_are_in_the_openapi_spec(client):
    spec = client.get("/docs.json").json()
    assert "post" in spec["paths"][INFER]
    assert {"/v2", "/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}"} <= set(
        spec["paths"]
    )


def test_bytes_elements_round_trip_like_tritonclient():
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    elements = [b"", b"abc", bytes(range(256))]
    ours = serialize_bytes(elements)
    assert ours == serialize_byte_tensor(np.array(elements, dtype=np.object_)).item()
    assert deserialize_bytes(ours) == elements
    assert deserialize_bytes_tensor(ours).tolist() == elements
    with pytest.raises(ValueError, match="declares"):
        deserialize_bytes(ours[:-1])


def test_multi_label_rows_are_padded():
    results = [
        ImageResult(labels=["a", "b"], scores=[0.9, 0.8], indices=[0, 1]),
        ImageResult(labels=[], scores=[], indices=[]),
    ]
    outputs, binary = encode_outputs(
        [OutputChoice("labels"), OutputChoice("scores", classification=1)], results
    )
    assert binary == b""
    assert outputs[0] == {
        "name": "labels",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": ["a", "b", "", ""],
    }
    assert outputs[1]["shape"] == [2, 1] and outputs[1]["data"] == ["0.900000:0:a", ""]


def test_tensor_error_defaults_to_invalid_request():
    assert TensorError("x").problem is Problem.INVALID_REQUEST


def test_not_ready_until_the_model_is_loaded():
    from starlette.applications import Starlette

    from serving.oip import OipEndpoints

    endpoints = OipEndpoints(service=None, model_name=MODEL, served_of=lambda: None)
    app = OipErrors(Starlette(routes=endpoints.routes()), model_name=MODEL)
    with TestClient(app) as test_client:
        assert test_client.get("/v2/health/live").status_code == 200
        for response in (
            test_client.get("/v2/health/ready"),
            test_client.get(f"/v2/models/{MODEL}/ready"),
            test_client.post(INFER, content=b"{}"),
        ):
            assert response.status_code == 503
            assert "loading" in response.json()["error"]
