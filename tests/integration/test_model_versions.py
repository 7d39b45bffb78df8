"""A registered model whose labels change between versions: each server reports, and answers
with, the labels of the version it loaded."""

from __future__ import annotations

import io
import shutil

import bentoml
import mlflow
import requests
from PIL import Image

from models.artifact import SPEC_FILE, read_spec
from registry.bento_import import artifact_dir, import_from_mlflow
from registry.mlflow_pyfunc import log_classifier_model

from .conftest import bentoml_server


def test_each_version_is_served_with_its_own_labels(
    multi_label_bento, png_images, session_dir, tmp_path
):
    v1_dir = artifact_dir(bentoml.models.get(multi_label_bento.tag))
    spec = read_spec(v1_dir)
    # Version 2: the same network, its classes renamed (a relabelled dataset).
    v2_labels = tuple(f"{label}-v2" for label in spec.labels)
    v2_spec = spec.model_copy(
        update={
            "labels": v2_labels,
            "class_thresholds": {f"{k}-v2": v for k, v in spec.class_thresholds.items()},
        }
    )
    v2_dir = tmp_path / "v2"
    shutil.copytree(v1_dir, v2_dir)
    (v2_dir / SPEC_FILE).write_text(v2_spec.model_dump_json(indent=2))

    example = io.BytesIO()
    Image.new("RGB", (8, 8)).save(example, format="PNG")
    mlflow.set_experiment("tests-relabel")
    for directory in (v1_dir, v2_dir):
        with mlflow.start_run():
            log_classifier_model(directory, example.getvalue(), registered_model_name="relabel")
    v1, _ = import_from_mlflow("models:/relabel/1", bento_name="relabel")
    v2, _ = import_from_mlflow("models:/relabel/2", bento_name="relabel")

    images = [("images", (p.name, p.read_bytes(), "image/png")) for p in png_images[:6]]
    for model, labels, version in ((v1, spec.labels, "1"), (v2, v2_labels, "2")):
        log = session_dir / f"serve-relabel-{version}.log"
        with bentoml_server(str(model.tag), log) as url:
            with bentoml.SyncHTTPClient(url) as client:
                meta = client.metadata()
            answers = requests.post(f"{url}/classify", files=images, timeout=60).json()
        assert meta["labels"] == list(labels)
        assert meta["model"]["mlflow_version"] == version
        served = {score["label"] for answer in answers for score in answer["labels"]}
        assert served and served <= set(labels)
        assert {answer["model"]["mlflow_version"] for answer in answers} == {version}
