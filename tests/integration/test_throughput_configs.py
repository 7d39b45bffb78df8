"""The configurations docs/performance.md recommends for throughput, on a real `bentoml serve`:
several workers (each with its share of the cores) and the batched torchvision JPEG decoder
(the GPU path's CPU fallback), answering like the default path."""

from __future__ import annotations

import pytest
import requests

from models.artifact import stored_artifact_dir
from models.image_io import load_image
from models.predictor import Predictor

from .conftest import bentoml_server

# Two workers through BENTOML_CONFIG_OPTIONS (not configuration.yaml): the service must read
# the configuration BentoML resolved to give each worker one of the two cores.
TWO_WORKERS_TORCHVISION = {
    "BENTOML_CONFIG_OPTIONS": "services.image_classifier.workers=2",
    "CLASSIFIER_JPEG_DECODER": "torchvision",
    "CLASSIFIER_TORCH_THREADS": "",  # unset: the per-worker default applies
}


@pytest.fixture(scope="module")
def two_worker_server(single_label_bento, session_dir):
    env = {k: v for k, v in TWO_WORKERS_TORCHVISION.items() if v}
    with bentoml_server(str(single_label_bento.tag), session_dir / "serve-2w.log", env) as url:
        yield url


def test_each_worker_gets_its_share_of_the_cores(two_worker_server, session_dir):
    metadata = requests.post(f"{two_worker_server}/metadata", timeout=30).json()
    assert metadata["device"].startswith("cpu (1 threads)"), metadata["device"]
    log = (session_dir / "serve-2w.log").read_text()
    assert "image_classifier:2]" in log  # a second worker started


def test_torchvision_decoded_jpegs_get_the_pil_paths_labels(
    two_worker_server, single_label_bento, holdout_data
):
    paths = sorted((holdout_data["single_label"]).glob("*/*.jpg"))[::5][:32]
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    response = requests.post(f"{two_worker_server}/classify", files=files, timeout=120)
    assert response.status_code == 200, response.text
    served = [item["labels"][0]["label"] for item in response.json()]
    predictor = Predictor.from_artifact(
        stored_artifact_dir(single_label_bento.path), "cpu", "float32"
    )
    expected = [row[0].label for row in predictor.predict([load_image(p) for p in paths])]
    agreeing = sum(a == b for a, b in zip(served, expected, strict=True))
    assert len(paths) >= 20 and agreeing / len(paths) >= 0.95, (served, expected)
