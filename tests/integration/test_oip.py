"""The Open Inference Protocol v2 (serving/oip.py) on a real `bentoml serve`, API keys on,
called with Triton's own client (``tritonclient.http.InferenceServerClient``)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from ..conftest import PROJECT_ROOT
from .conftest import bentoml_server
from .test_service import _batch_size_histogram

API_KEY = "oip-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "shapes-single"  # the BentoML tag's name (tests/conftest.py imports it so)


def _auth() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient's infer writes its
    Inference-Header-Content-Length into the dict it is given."""
    return dict(AUTH)


@pytest.fixture(scope="module")
def oip_server(single_label_bento, session_dir):
    with bentoml_server(
        str(single_label_bento.tag),
        session_dir / "serve-oip.log",
        extra_env={"CLASSIFIER_API_KEYS": API_KEY},
    ) as url:
        yield url


@pytest.fixture
def client(oip_server):
    client = triton.InferenceServerClient(url=oip_server.removeprefix("http://"))
    yield client
    client.close()


def _images_input(files: list[bytes], *, binary: bool) -> triton.InferInput:
    """The images as tritonclient sends BYTES: raw in binary, base64 text in JSON."""
    tensor = triton.InferInput("images", [len(files)], "BYTES")
    values = files if binary else [base64.b64encode(data).decode() for data in files]
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def _texts(array: np.ndarray) -> list[list[str]]:
    return [[v.decode() if isinstance(v, bytes) else v for v in row] for row in array.tolist()]


def _classify(url: str, files: list[bytes], **options: str) -> list[list[tuple[str, float]]]:
    response = requests.post(
        f"{url}/classify",
        files=[("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)],
        data=options,
        headers=_auth(),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [[(p["label"], p["score"]) for p in item["labels"]] for item in response.json()]


@pytest.fixture(scope="module")
def two_images(png_images) -> list[bytes]:
    return [png_images[0].read_bytes(), png_images[-1].read_bytes()]


def test_health_and_metadata(client, single_label_bento):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=_auth())
    server = client.get_server_metadata(headers=_auth())
    assert {"classification", "binary_tensor_data"} <= set(server["extensions"])
    model = client.get_model_metadata(MODEL, headers=_auth())
    assert model["name"] == MODEL
    assert model["versions"] == [single_label_bento.tag.version]
    assert model["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert {(o["name"], o["datatype"]) for o in model["outputs"]} == {
        ("labels", "BYTES"),
        ("scores", "FP32"),
    }


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_agrees_with_classify(client, oip_server, two_images, binary):
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("labels", "scores")]
    result = client.infer(
        MODEL, [_images_input(two_images, binary=binary)], outputs=outputs, headers=_auth()
    )
    expected = _classify(oip_server, two_images)
    labels, scores = _texts(result.as_numpy("labels")), result.as_numpy("scores")
    assert labels == [[label for label, _ in row] for row in expected]
    assert scores.tolist() == [
        pytest.approx([score for _, score in row], abs=1e-5) for row in expected
    ]


def test_classification_extension(client, oip_server, two_images):
    outputs = [triton.InferRequestedOutput("scores", binary_data=True, class_count=2)]
    result = client.infer(
        MODEL, [_images_input(two_images, binary=True)], outputs=outputs, headers=_auth()
    )
    classes = _texts(result.as_numpy("scores"))
    # The index is the label's in the model's list (/metadata; OIP metadata has no labels).
    all_labels = requests.post(f"{oip_server}/metadata", headers=AUTH, timeout=10).json()["labels"]
    expected = _classify(oip_server, two_images, top_k="2")
    for row, want in zip(classes, expected, strict=True):
        parsed = [entry.split(":", 2) for entry in row]
        assert [label for _, _, label in parsed] == [label for label, _ in want]
        assert [all_labels[int(index)] for _, index, _ in parsed] == [label for label, _ in want]
        assert [float(score) for score, _, _ in parsed] == pytest.approx(
            [score for _, score in want], abs=1e-5
        )


def test_one_request_is_one_batch(client, oip_server, png_images):
    files = [path.read_bytes() for path in png_images[:5]]
    before, _ = _batch_size_histogram(oip_server)
    client.infer(MODEL, [_images_input(files, binary=True)], headers=_auth())
    after, _ = _batch_size_histogram(oip_server)
    assert after - before == 1  # five images, one batch of the classify API's batcher


def test_a_bad_image_raises_a_readable_error(client, two_images):
    with pytest.raises(InferenceServerException) as raised:
        client.infer(
            MODEL,
            [_images_input([two_images[0], b"not an image"], binary=True)],
            headers=_auth(),
        )
    assert raised.value.status() == "400"
    assert "images[1]" in raised.value.message()


def test_no_key_is_401_but_health_is_open(client, two_images):
    assert client.is_server_ready()
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [_images_input(two_images, binary=True)])
    assert raised.value.status() == "401"
    assert "API key" in raised.value.message()


def test_an_unknown_model_is_404(client):
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("no-such-model", headers=_auth())
    assert raised.value.status() == "404"
    assert MODEL in raised.value.message()


def test_the_readme_example_runs(oip_server, png_images):
    """README.md's tritonclient example, pointed at this server, its model, key and images."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("### Call it with Triton's client") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    for old, new in {
        '"127.0.0.1:3000"': repr(oip_server.removeprefix("http://")),
        '"cat.jpg"': repr(str(png_images[0])),
        '"dog.png"': repr(str(png_images[-1])),
        '"image-classifier"': repr(MODEL),
        "<key>": API_KEY,
    }.items():
        assert old in code, old
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].as_numpy("labels").shape[0] == 2
