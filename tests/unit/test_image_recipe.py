"""The image recipe (serving/image.py) and how the image finds its packaged model."""

from __future__ import annotations

import attrs
import yaml

from serving import image
from serving.settings import ServingSettings

from ..conftest import PROJECT_ROOT

LOCK = PROJECT_ROOT / "requirements-serve.lock"


def test_the_recipe_installs_no_compilers_and_torch_in_its_own_pruned_step():
    # BentoML copies the image when it merges bentofile.yaml in, re-running its __init__.
    recipe = attrs.evolve(image.image_recipe(requirements=LOCK))
    commands = "\n".join(recipe.commands)
    assert "build-essential" not in commands and "git" not in commands.split()
    [torch_step] = [c for c in recipe.commands if image.TORCH_DIR in c and "--target" in c]
    assert "torch==" in torch_step and "nvidia-cudnn-cu13==" in torch_step
    # Installed and pruned in one RUN, or the pruned files would stay in the image's layers.
    assert "--no-deps" in torch_step and "rm -rf" in torch_step
    assert "libcusolverMg" in torch_step
    light = recipe.python_requirements.splitlines()
    assert "bentoml==1.4.39" in light
    assert not [pin for pin in light if pin.startswith(("torch", "nvidia-", "triton"))]
    assert any("torch-cuda.pth" in c for c in recipe.post_commands)
    # The model's tag is no environment variable: ENV lines come before the install layers.
    assert not [env for env in image.image_envs() if env["name"] == "CLASSIFIER_MODEL_TAG"]


def test_every_pin_is_installed_by_exactly_one_step():
    pins = image.read_pins(LOCK)
    torch_pins = [pin for pin in pins if image.is_torch_package(pin)]
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(torch_pins)
    assert not [pin for pin in pins if pin.startswith("triton")]
    recipe = image.image_recipe(requirements=LOCK)
    light = [line for line in recipe.python_requirements.splitlines() if "==" in line]
    assert sorted(set(light) | set(torch_pins)) == sorted(set(pins))


def test_a_containerized_bento_serves_its_packaged_model_by_default(tmp_path):
    manifest = {"services": [{"name": "image_classifier", "models": [{"tag": "shapes:abc"}]}]}
    (tmp_path / "bento.yaml").write_text(yaml.safe_dump(manifest))
    inside = {"BENTO_PATH": str(tmp_path)}
    assert ServingSettings.from_env(inside).model_tag == "shapes:abc"
    explicit = {**inside, "CLASSIFIER_MODEL_TAG": "other:v1"}
    assert ServingSettings.from_env(explicit).model_tag == "other:v1"
    assert ServingSettings.from_env({}).model_tag == "image-classifier:latest"
    assert ServingSettings.from_env({"BENTO_PATH": str(tmp_path / "none")}).model_tag == (
        "image-classifier:latest"
    )
