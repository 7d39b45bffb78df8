"""Shared fixtures. Every test session gets its own BentoML home and MLflow database.

Tests are marked by folder (unit / training / integration), so `pytest -m unit` runs the fast
tier alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Set before anything imports bentoml or mlflow: both read these once.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="ic-tests-"))
os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "bentoml")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_DIR / 'mlflow.db'}"
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TIERS = ("unit", "training", "integration", "containers")
CONTAINER_TEST_TIMEOUT_S = 2400


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(item.fspath).relative_to(PROJECT_ROOT / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "containers":
            # The first test of a module also pays for its fixtures: image builds (several
            # minutes each) and a training run, well over the default 900 s on a busy machine.
            item.add_marker(pytest.mark.timeout(CONTAINER_TEST_TIMEOUT_S))


def pytest_unconfigure(config):
    # Each session leaves ~0.5 GB (stores, registry, data); keep it only when asked to debug.
    if not os.environ.get("KEEP_TEST_SESSION_DIR"):
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def tracking_uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="session")
def demo_data(session_dir: Path) -> dict[str, Path]:
    """The synthetic dataset (training split source), both layouts."""
    from training.synthetic import SyntheticSpec, generate

    return generate(session_dir / "demo", SyntheticSpec(seed=0))


@pytest.fixture(scope="session")
def holdout_data(session_dir: Path) -> dict[str, Path]:
    """A separately seeded synthetic set never seen in training: the held-out test set."""
    from training.synthetic import SyntheticSpec, generate

    return generate(
        session_dir / "holdout",
        SyntheticSpec(seed=1234, single_label_per_class=40, multi_label_images=200),
    )


def _train(
    session_dir: Path, tracking_uri: str, name: str, config: Path | None, overrides: dict[str, str]
):
    from training.config import load_config
    from training.train import train

    base = {
        "mlflow.tracking_uri": tracking_uri,
        "mlflow.artifact_location": str(session_dir / "mlartifacts" / name),
        "mlflow.experiment": f"tests-{name}",
        "mlflow.registered_model": name,
        "output_dir": str(session_dir / "outputs" / name),
    }
    return train(load_config(config, {**base, **overrides}))


@pytest.fixture(scope="session")
def single_label_run(session_dir, tracking_uri, demo_data):
    """The default demo config trained on the synthetic single-label folder."""
    return _train(
        session_dir,
        tracking_uri,
        "shapes-single",
        None,
        {"data.root": str(demo_data["single_label"])},
    )


@pytest.fixture(scope="session")
def multi_label_run(session_dir, tracking_uri, demo_data):
    """The multi-label demo config trained on the synthetic CSV manifest."""
    manifest = demo_data["multi_label"]
    return _train(
        session_dir,
        tracking_uri,
        "shapes-multi",
        PROJECT_ROOT / "training" / "configs" / "demo_multilabel.yaml",
        {"data.root": str(manifest.parent), "data.manifest": str(manifest)},
    )


@pytest.fixture(scope="session")
def single_label_bento(single_label_run):
    from registry.bento_import import import_from_mlflow

    model, _ = import_from_mlflow("models:/shapes-single@champion", bento_name="shapes-single")
    return model


@pytest.fixture(scope="session")
def multi_label_bento(multi_label_run):
    from registry.bento_import import import_from_mlflow

    model, _ = import_from_mlflow("models:/shapes-multi@champion", bento_name="shapes-multi")
    return model


@pytest.fixture(scope="session")
def png_images(session_dir, holdout_data) -> list[Path]:
    """Held-out images re-saved as PNG: the SDK client re-encodes PIL images in their own format,
    and PNG is lossless, so server and in-process see identical pixels."""
    from PIL import Image

    from training.synthetic import SHAPES

    out = session_dir / "png"
    out.mkdir(exist_ok=True)
    paths = []
    for shape in SHAPES:
        for src in sorted((holdout_data["single_label"] / shape).glob("*.jpg"))[:8]:
            dst = out / f"{shape}-{src.stem}.png"
            Image.open(src).save(dst)
            paths.append(dst)
    return paths
