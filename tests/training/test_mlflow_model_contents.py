"""What the registered MLflow model ships: the model core (``models/``) as its only code, the
"model from code" entry file, and nothing else of this project; it loads in an interpreter that
cannot import the project at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import yaml

from ..conftest import PROJECT_ROOT

ENTRY_FILE = "_mlflow_entry.py"
PROJECT_PACKAGES = ("models", "registry", "serving", "training", "benchmarks", "devtools")


@pytest.fixture(scope="module")
def registered_model_dir(single_label_run, tmp_path_factory) -> Path:
    """The champion of `shapes-single`, downloaded from the registry as MLflow stores it."""
    local = mlflow.artifacts.download_artifacts(
        "models:/shapes-single@champion", dst_path=str(tmp_path_factory.mktemp("registered"))
    )
    return Path(local)


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_the_model_ships_only_the_models_package_as_code(registered_model_dir):
    code = registered_model_dir / "code"
    shipped = _files(code)
    expected = {f"models/{f}" for f in _files(PROJECT_ROOT / "models") if f.endswith(".py")}
    assert shipped == expected
    assert sorted(p.name for p in code.iterdir() if p.name != "__pycache__") == ["models"]
    # No other project code anywhere in the model, under code/ or beside it.
    everything = _files(registered_model_dir)
    strays = [
        f for f in everything if f.split("/")[0] in PROJECT_PACKAGES or f.endswith("service.py")
    ]
    assert not strays, strays
    assert [f for f in everything if f.endswith(".py") and not f.startswith("code/")] == [
        ENTRY_FILE
    ]


def test_the_model_is_a_model_from_code_run_by_the_entry_file(registered_model_dir):
    mlmodel = yaml.safe_load((registered_model_dir / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(pyfunc["model_code_path"]).name == ENTRY_FILE
    assert pyfunc["code"] == "code"
    assert "python_model.pkl" not in _files(registered_model_dir)  # nothing pickled
    entry = (registered_model_dir / ENTRY_FILE).read_text()
    assert entry == (PROJECT_ROOT / "registry" / ENTRY_FILE).read_text()


# Run in a fresh interpreter from a temporary directory: the project must not be importable, so
# the model can only load with the code it ships. The editable install's finder (if the venv has
# one) is dropped first, since it maps the project's packages from anywhere.
_LOAD_WITHOUT_THE_PROJECT = textwrap.dedent(
    """
    import importlib, io, json, sys
    from pathlib import Path

    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in f.__module__]
    for name in PROJECT_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        raise SystemExit(f"the project is importable here: {name}")

    import mlflow.pyfunc
    import pandas as pd
    from PIL import Image

    model_dir = Path(sys.argv[1])
    model = mlflow.pyfunc.load_model(str(model_dir))
    image = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(image, "PNG")
    # A bad image is an error in its own row; the good one is still scored.
    output = model.predict(pd.DataFrame({"image": [image.getvalue(), b"not an image"]}))
    models_file = Path(sys.modules["models"].__file__).resolve()
    print(json.dumps({
        "labels": list(output["labels"][0]),
        "errors": list(output["error"]),
        "bad_labels": list(output["labels"][1]),
        "models_from": str(models_file.relative_to(model_dir.resolve())),
        "project_modules": sorted(
            m for m in sys.modules if m.split(".")[0] in PROJECT_PACKAGES and m != "models"
            and not m.startswith("models.")
        ),
    }))
    """
)


def test_the_model_loads_where_the_project_cannot_be_imported(registered_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = f"PROJECT_PACKAGES = {PROJECT_PACKAGES!r}\n{_LOAD_WITHOUT_THE_PROJECT}"
    result = subprocess.run(
        [sys.executable, "-c", script, str(registered_model_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["models_from"] == "code/models/__init__.py"
    assert loaded["project_modules"] == []
    [spec] = (registered_model_dir / "artifacts").rglob("classifier.json")
    assert loaded["labels"] and set(loaded["labels"]) <= set(json.loads(spec.read_text())["labels"])
    assert loaded["errors"][0] == "" and loaded["bad_labels"] == []
    assert loaded["errors"][1].startswith("not a recognised image format")


def test_the_signature_has_a_per_row_error_output(registered_model_dir):
    signature = yaml.safe_load((registered_model_dir / "MLmodel").read_text())["signature"]
    outputs = {column["name"]: column for column in json.loads(signature["outputs"])}
    assert list(outputs) == ["labels", "scores", "error"]
    assert outputs["error"]["type"] == "string"
    assert json.loads(signature["inputs"]) == [
        {"type": "binary", "name": "image", "required": True}
    ]
