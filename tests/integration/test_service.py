"""A real `bentoml serve` subprocess, called through the BentoML SDK clients."""

import asyncio
import io
import re

import bentoml
import pytest
import requests
from PIL import Image

from models import Predictor, load_image
from registry.bento_import import artifact_dir
from serving.problems import Problem

from ..support.problems import assert_problem
from .conftest import bentoml_server


@pytest.fixture(scope="module")
def single_server(single_label_bento, session_dir):
    with bentoml_server(str(single_label_bento.tag), session_dir / "serve-single.log") as url:
        yield url


@pytest.fixture(scope="module")
def multi_server(multi_label_bento, session_dir):
    with bentoml_server(str(multi_label_bento.tag), session_dir / "serve-multi.log") as url:
        yield url


def _in_process(bento_model, paths, **kwargs):
    predictor = Predictor.from_artifact(artifact_dir(bento_model), "cpu", "float32")
    return [
        [(p.label, p.score) for p in row]
        for row in predictor.predict([load_image(p) for p in paths], **kwargs)
    ]


def _served(response):
    return [[(p["label"], p["score"]) for p in item["labels"]] for item in response]


def _assert_same_predictions(served, expected):
    assert [[label for label, _ in row] for row in served] == [
        [label for label, _ in row] for row in expected
    ]
    for served_row, expected_row in zip(served, expected, strict=False):
        assert [s for _, s in served_row] == pytest.approx([s for _, s in expected_row], abs=1e-5)


def test_health_metadata_and_openapi(single_server, single_label_bento):
    for path in ("/livez", "/healthz", "/readyz"):
        assert requests.get(single_server + path, timeout=5).status_code == 200
    with bentoml.SyncHTTPClient(single_server) as client:
        meta = client.metadata()
    assert meta["model"]["tag"] == str(single_label_bento.tag)
    assert meta["model"]["mlflow_version"] == single_label_bento.info.labels["mlflow_version"]
    assert meta["model"]["mlflow_run_id"] == single_label_bento.info.labels["mlflow_run_id"]
    assert meta["task"] == "single_label"
    assert meta["labels"] == ["circle", "cross", "ring", "square", "triangle"]
    assert meta["preprocessing"]["input_size"] == [3, 64, 64]
    assert meta["device"].startswith("cpu")
    assert "best_val_accuracy" in meta["metrics"]
    spec = requests.get(single_server + "/docs.json", timeout=5).json()
    assert {"/classify", "/metadata"} <= set(spec["paths"])


def test_served_predictions_equal_in_process(single_server, single_label_bento, png_images):
    paths = png_images[::4]
    with bentoml.SyncHTTPClient(single_server) as client:
        response = client.classify(images=[Image.open(p) for p in paths])
    assert len(response) == len(paths)
    _assert_same_predictions(_served(response), _in_process(single_label_bento, paths))
    for item in response:  # every answer names the model version that produced it
        assert item["model"]["tag"] == str(single_label_bento.tag)
        assert item["model"]["mlflow_version"]


async def _classify_concurrently(url, paths, corrupt: bytes | None = None):
    async with bentoml.AsyncHTTPClient(url) as client:
        # A fresh image object per call: the client must not share one across requests.
        calls = [client.classify(images=[Image.open(p)]) for p in paths]
        if corrupt is not None:
            calls.insert(
                len(calls) // 2,
                asyncio.to_thread(
                    requests.post,
                    f"{url}/classify",
                    timeout=60,
                    files={"images": ("broken.jpg", corrupt, "image/jpeg")},
                ),
            )
        return await asyncio.gather(*calls, return_exceptions=True)


def _batch_size_histogram(url) -> tuple[float, float]:
    """(number of batches, number of batches of size 1) for classify, from /metrics."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    total = ones = 0.0
    for line in text.splitlines():
        if not line.startswith("bentoml_service_adaptive_batch_size") or "classify" not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("bentoml_service_adaptive_batch_size_count"):
            total += value
        elif re.search(r'le="1(\.0)?"', line):
            ones += value
    return total, ones


def test_concurrent_requests_form_batches(single_server, single_label_bento, png_images):
    before_total, before_ones = _batch_size_histogram(single_server)
    paths = png_images + png_images[:20]  # 60 in flight: under traffic.max_concurrency (64)
    results = asyncio.run(_classify_concurrently(single_server, paths))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    _assert_same_predictions(
        [_served(r)[0] for r in results], _in_process(single_label_bento, paths)
    )
    total, ones = _batch_size_histogram(single_server)
    batches, single_batches = total - before_total, ones - before_ones
    assert batches > 0
    assert batches - single_batches >= 1, "no batch larger than 1 was formed"
    assert batches < len(paths), f"{len(paths)} requests ran in {batches} batches"


def test_corrupt_image_fails_alone(single_server, single_label_bento, png_images):
    good = png_images[:24]
    data = io.BytesIO()
    Image.open(good[0]).convert("RGB").save(data, format="JPEG")
    truncated = data.getvalue()[: len(data.getvalue()) // 3]
    results = asyncio.run(_classify_concurrently(single_server, good, corrupt=truncated))
    bad = results.pop(len(good) // 2)
    assert_problem(
        bad,
        400,
        Problem.INVALID_IMAGE,
        detail="corrupt or truncated",
        file="broken.jpg",
        field="images",
    )
    assert not [r for r in results if isinstance(r, Exception)]
    _assert_same_predictions(
        [_served(r)[0] for r in results], _in_process(single_label_bento, good)
    )


def test_non_image_upload_is_a_400_naming_the_problem(single_server):
    response = requests.post(
        f"{single_server}/classify",
        timeout=30,
        files={"images": ("notes.txt", b"hello", "text/plain")},
    )
    assert_problem(
        response,
        400,
        Problem.INVALID_IMAGE,
        detail="notes.txt: not a recognised image format",
        field="images",
        file="notes.txt",
    )
    with bentoml.SyncHTTPClient(single_server) as client:  # still serving
        assert client.metadata()["task"] == "single_label"


def test_multi_label_service_returns_labels_above_threshold(
    multi_server, multi_label_bento, holdout_data
):
    manifest = holdout_data["multi_label"]
    rows = manifest.read_text().splitlines()[1:9]
    paths = [manifest.parent / row.split(",")[0] for row in rows]
    with bentoml.SyncHTTPClient(multi_server) as client:
        meta = client.metadata()
        response = client.classify(images=[Image.open(p) for p in paths])
    assert meta["task"] == "multi_label"
    threshold = meta["threshold"]
    for item in response:
        assert all(p["score"] >= threshold for p in item["labels"])
    _assert_same_predictions(_served(response), _in_process(multi_label_bento, paths))
    assert any(len(item["labels"]) > 1 for item in response), "no image got several labels"


def _top(rows, k: int | None):
    return [row[:k] if k else row for row in rows]


def test_each_request_gets_its_own_options_in_shared_batches(
    multi_server, multi_label_bento, holdout_data
):
    """Requests with different thresholds and top_k, sent together so they share batches:
    each answer is the in-process one under that request's options."""
    manifest = holdout_data["multi_label"]
    rows = manifest.read_text().splitlines()[1:9]
    paths = [manifest.parent / row.split(",")[0] for row in rows]
    asked = [{}, {"threshold": 0.0}, {"threshold": 0.9, "top_k": 1}, {"top_k": 2}] * 12
    before_total, before_ones = _batch_size_histogram(multi_server)

    async def send_all():
        async with bentoml.AsyncHTTPClient(multi_server) as client:
            calls = [
                client.classify(images=[Image.open(paths[i % len(paths)])], **options)
                for i, options in enumerate(asked)
            ]
            return await asyncio.gather(*calls)

    results = asyncio.run(send_all())
    for i, (options, result) in enumerate(zip(asked, results, strict=True)):
        expected = _in_process(
            multi_label_bento, [paths[i % len(paths)]], threshold=options.get("threshold")
        )
        _assert_same_predictions(_served(result), _top(expected, options.get("top_k")))
    with bentoml.SyncHTTPClient(multi_server) as client:
        labels = client.metadata()["labels"]
    assert all(len(result[0]["labels"]) == len(labels) for result in results[1::4])  # all >= 0
    assert all(len(result[0]["labels"]) <= 1 for result in results[2::4])
    total, ones = _batch_size_histogram(multi_server)
    assert (total - before_total) - (ones - before_ones) >= 1, "no batch larger than 1 formed"
    with (  # out of range: a 422 naming it
        bentoml.SyncHTTPClient(multi_server) as client,
        pytest.raises(bentoml.exceptions.BentoMLException) as refused,
    ):
        client.classify(images=[Image.open(paths[0])], threshold=1.5)
    assert refused.value.error_code.value == 422 and "threshold" in str(refused.value)


def test_top_k_per_request_and_no_threshold_for_a_single_label_model(
    single_server, single_label_bento, png_images
):
    paths = png_images[:3]
    with bentoml.SyncHTTPClient(single_server) as client:
        three = client.classify(images=[Image.open(p) for p in paths], top_k=3)
        default = client.classify(images=[Image.open(p) for p in paths])
    _assert_same_predictions(_served(three), _in_process(single_label_bento, paths, top_k=3))
    _assert_same_predictions(_served(default), _in_process(single_label_bento, paths))
    assert [len(item["labels"]) for item in three] == [3] * 3
    refused = requests.post(
        f"{single_server}/classify",
        files={"images": (paths[0].name, paths[0].read_bytes(), "image/png")},
        data={"threshold": "0.5"},
        timeout=30,
    )
    assert_problem(refused, 422, Problem.INVALID_OPTION, field="threshold")
