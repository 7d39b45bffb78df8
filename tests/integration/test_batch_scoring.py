"""`python -m scoring predict` against the real sqlite registry and BentoML store: rows equal
the in-process Predictor, bad files are per-row errors, a crashed run resumes without
duplicates, CSV and JSONL outputs, folder and CSV inputs, MLflow URIs and a Bento tag."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import Predictor, load_image
from models.artifact import stored_artifact_dir

from ..conftest import PROJECT_ROOT

MODEL_URI = "models:/shapes-single@champion"


@pytest.fixture(scope="module")
def image_folder(png_images, tmp_path_factory) -> Path:
    """Ten held-out PNGs in two subfolders, a corrupt PNG, a text file named .jpg, and a file
    with another extension (not listed)."""
    folder = tmp_path_factory.mktemp("scoring-input")
    for index, source in enumerate(png_images[::4][:10]):
        target = folder / f"part{index % 2}" / source.name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(source.read_bytes())
    (folder / "part0" / "corrupt.png").write_bytes(png_images[0].read_bytes()[:200])
    (folder / "notes.jpg").write_text("not an image\n")
    (folder / "readme.txt").write_text("not listed\n")
    return folder


def _run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "scoring", "predict", *args, "--device", "cpu", "--batch-size", "4"],
        cwd=PROJECT_ROOT, env=os.environ, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _read(out: Path) -> list[dict]:
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text().splitlines()]
    rows = list(csv.DictReader(out.open(newline="")))
    for row in rows:
        row["labels"], row["scores"] = json.loads(row["labels"]), json.loads(row["scores"])
        row["error"] = row["error"] or None
    return rows


def _check_rows(rows: list[dict], *, reference: Predictor, folder: Path, version: str) -> None:
    listed = sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
    assert sorted(row["path"] for row in rows) == listed  # each once, readme.txt not listed
    for row in rows:
        assert (row["model"], row["model_version"]) == (f"models:/shapes-single/{version}", version)
        if row["path"].endswith(("corrupt.png", "notes.jpg")):
            assert row["error"] and row["labels"] == [] and row["scores"] == []
            continue
        [expected] = reference.predict([load_image(row["path"])])
        assert row["error"] is None
        assert row["labels"] == [p.label for p in expected]
        assert row["scores"] == pytest.approx([p.score for p in expected], abs=1e-5)
    errors = {Path(row["path"]).name: row["error"] for row in rows if row["error"]}
    assert errors["corrupt.png"].startswith("not a decodable image: corrupt or truncated image")
    assert errors["notes.jpg"].startswith("not a decodable image: not a recognised image format")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_folder_scored_equals_the_predictor_and_a_crashed_run_resumes(
    single_label_run, reference, image_folder, tmp_path, suffix
):
    out = tmp_path / f"scores{suffix}"
    first = _run(MODEL_URI, str(image_folder), "--out", str(out))
    assert "10 scored, 2 failed, 0 skipped" in first.stdout
    version = single_label_run.registered_version
    _check_rows(_read(out), reference=reference, folder=image_folder, version=version)
    complete = out.read_text()

    # A crash: the file ends five rows early, inside a row (no final newline).
    lines = complete.splitlines(keepends=True)
    out.write_text("".join(lines[:-5]) + lines[-5][: len(lines[-5]) // 2])
    resumed = _run(MODEL_URI, str(image_folder), "--out", str(out))
    assert "skipped" in resumed.stdout and "7 skipped" in resumed.stdout
    rows = _read(out)
    _check_rows(rows, reference=reference, folder=image_folder, version=version)
    assert len(rows) == 12
    assert sorted(out.read_text().splitlines()) == sorted(complete.splitlines())


def test_a_csv_of_paths_with_a_pinned_version_and_a_bento_tag(
    single_label_run, single_label_bento, reference, image_folder, tmp_path
):
    listing = tmp_path / "list.csv"
    images = sorted(str(p) for p in image_folder.rglob("*.png"))
    listing.write_text("path\n" + "\n".join([*images, "missing.png"]) + "\n")
    version = single_label_run.registered_version
    out = tmp_path / "pinned.jsonl"
    _run(f"models:/shapes-single/{version}", str(listing), "--out", str(out))
    rows = {Path(row["path"]).name: row for row in _read(out)}
    assert rows["missing.png"]["error"].startswith("cannot read the file: No such file")
    assert rows["missing.png"]["path"] == str(tmp_path / "missing.png")  # relative to the CSV
    assert sum(row["error"] is None for row in rows.values()) == 10

    bento_out = tmp_path / "bento.csv"
    _run(str(single_label_bento.tag), str(listing), "--out", str(bento_out))
    bento_rows = {Path(row["path"]).name: row for row in _read(bento_out)}
    assert bento_rows.keys() == rows.keys()
    for name, row in rows.items():
        assert bento_rows[name]["labels"] == row["labels"]
        assert bento_rows[name]["model"] == str(single_label_bento.tag)
        assert (bento_rows[name]["model_version"], bento_rows[name]["run_id"]) == (
            version, single_label_run.run_id)  # fmt: skip
    assert stored_artifact_dir(single_label_bento.path).is_dir()


def test_an_unknown_model_fails_before_writing_anything(single_label_run, image_folder, tmp_path):
    out = tmp_path / "never.csv"
    result = subprocess.run(
        [sys.executable, "-m", "scoring", "predict", "models:/shapes-single@nope",
         str(image_folder), "--out", str(out)],
        cwd=PROJECT_ROOT, env=os.environ, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "has no alias 'nope'" in result.stderr
    assert not out.exists()
