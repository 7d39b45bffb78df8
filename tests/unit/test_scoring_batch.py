"""scoring.batch and the MLflow pyfunc's per-row errors, in-process with timm's tiny ResNet:
the rows agree with the Predictor, bad files become per-row errors, a re-run resumes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from PIL import Image

from models import ModelSpec, Predictor, PreprocessConfig, Task, create_classifier, save_artifact
from models.image_io import load_image

# Imported at collection: importing MLflow runs `uname -p` once, which the unit tier's guard
# refuses inside a test.
from registry._mlflow_entry import ImageClassifierModel
from scoring.__main__ import main
from scoring.batch import ScoringOptions, score_paths
from scoring.model_source import LoadedModel, ModelLineage, ModelSourceError, load_model
from scoring.outputs import open_results

LABELS = ("circle", "cross", "ring", "square", "triangle")
LINEAGE = ModelLineage(model="models:/tiny/1", model_version="1", run_id="r1")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec(
        architecture="test_resnet",
        task=Task.SINGLE_LABEL,
        labels=LABELS,
        preprocessing=PreprocessConfig(input_size=(3, 32, 32)),
        top_k=3,
    )
    return save_artifact(tmp_path_factory.mktemp("tiny"), create_classifier("test_resnet", 5), spec)


@pytest.fixture(scope="module")
def predictor(artifact) -> Predictor:
    return Predictor.from_artifact(artifact, device="cpu", precision="float32")


@pytest.fixture
def images(tmp_path) -> list[str]:
    """Six PNGs of different colours and sizes in nested folders, a corrupt one, an empty one."""
    paths = []
    for index in range(6):
        path = tmp_path / "in" / f"set{index % 2}" / f"img{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + 7 * index, 48), (40 * index, 255 - 30 * index, 90)).save(path)
        paths.append(str(path))
    (tmp_path / "in" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    return sorted(
        [*paths, str(tmp_path / "in" / "corrupt.png"), str(tmp_path / "in" / "empty.jpg")]
    )


def _expected(predictor: Predictor, path: str):
    [prediction] = predictor.predict([load_image(path)])
    return [p.label for p in prediction], [p.score for p in prediction]


def test_rows_agree_with_the_predictor_and_bad_files_get_their_reason(predictor, images, tmp_path):
    model = LoadedModel(predictor, LINEAGE)
    with open_results(tmp_path / "out.jsonl", model=LINEAGE.model) as results:
        summary = score_paths(images, model=model, results=results,
                              options=ScoringOptions(batch_size=3, progress=False))  # fmt: skip
    rows = {
        r["path"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())
    }
    assert list(rows) == images  # input order, each once
    assert (summary.scored, summary.failed, summary.skipped) == (6, 2, 0)
    for path in images:
        row = rows[path]
        assert (row["model"], row["model_version"], row["run_id"]) == ("models:/tiny/1", "1", "r1")
        if path.endswith(("corrupt.png", "empty.jpg")):
            assert row["labels"] == [] and row["scores"] == []
            continue
        labels, scores = _expected(predictor, path)
        assert row["error"] is None and row["labels"] == labels
        assert row["scores"] == pytest.approx(scores, abs=1e-6)
    assert rows[images[0]]["error"].startswith("not a decodable image: not a recognised image")
    assert rows[images[1]]["error"] == "not a decodable image: empty upload: 0 bytes"


def test_a_missing_file_and_a_model_failure_stay_in_their_rows(predictor, images, tmp_path):
    class FailsOnBatches:
        """The predictor, failing on any batch of more than one image (a model bug)."""

        preprocessing = predictor.preprocessing

        def predict(self, batch, top_k=None, threshold=None):
            if len(batch) > 1:
                raise RuntimeError("boom")
            return predictor.predict(batch)

    model = LoadedModel(FailsOnBatches(), LINEAGE)
    paths = [images[2], "/no/such/file.png", images[3]]
    with open_results(tmp_path / "out.csv", model=LINEAGE.model) as results:
        summary = score_paths(paths, model=model, results=results,
                              options=ScoringOptions(batch_size=8, progress=False))  # fmt: skip
    assert (summary.scored, summary.failed) == (2, 1)
    text = (tmp_path / "out.csv").read_text()
    assert "/no/such/file.png,[],[],cannot read the file: No such file or directory" in text


def test_a_rerun_scores_only_what_is_missing(predictor, images, tmp_path):
    model, out = LoadedModel(predictor, LINEAGE), tmp_path / "out.csv"
    options = ScoringOptions(batch_size=2, progress=False)
    with open_results(out, model=LINEAGE.model) as results:
        score_paths(images[:5], model=model, results=results, options=options)
    with open_results(out, model=LINEAGE.model) as results:
        summary = score_paths(images, model=model, results=results, options=options)
    assert (summary.skipped, summary.scored + summary.failed) == (5, 3)
    paths = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert paths == images


def test_the_cli_scores_a_folder_with_a_local_artifact(artifact, images, tmp_path, capsys):
    out = tmp_path / "cli.csv"
    argv = ["predict", str(artifact), str(tmp_path / "in"), "--out", str(out), "--device", "cpu",
            "--batch-size", "4", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "6 scored, 2 failed, 0 skipped" in capsys.readouterr().out
    assert main(argv) == 0
    assert "0 scored, 0 failed, 8 skipped" in capsys.readouterr().out
    assert main([*argv[:3], "--out", str(tmp_path / "x.txt")]) == 2


def test_an_unknown_model_source_is_named():
    with pytest.raises(ModelSourceError, match="not an MLflow URI"):
        load_model("no-such-model:v1", device="cpu")


def test_the_pyfunc_scores_good_rows_and_reports_bad_ones(artifact, predictor, images):
    model = ImageClassifierModel()
    model.load_context(SimpleNamespace(artifacts={"classifier": str(artifact)}))
    good = Path(images[2]).read_bytes()
    buffer = io.BytesIO()
    Image.new("RGB", (33, 80), "navy").save(buffer, "JPEG")
    column = [good, b"not an image", None, buffer.getvalue(), "text"]
    output = model.predict(None, pd.DataFrame({"image": column}))
    assert list(output.columns) == ["labels", "scores", "error"]
    assert [e == "" for e in output["error"]] == [True, False, False, True, False]
    assert output["error"][1].startswith("not a recognised image format")
    assert output["error"][4].startswith("not image bytes: str")
    assert output["error"][2] == "no image bytes (null)"
    assert output["labels"][1] == [] and output["scores"][1] == []
    for row, data in ((0, good), (3, buffer.getvalue())):
        [prediction] = predictor.predict([load_image(data)])
        assert output["labels"][row] == [p.label for p in prediction]
        assert output["scores"][row] == pytest.approx([p.score for p in prediction], abs=1e-6)
