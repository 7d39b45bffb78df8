"""The Open Inference Protocol routes in the service's OpenAPI spec (``serving/oip.py``)."""

from __future__ import annotations

from typing import Any

from .problems import PROBLEM_JSON

_PROBLEM = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "description": "`top_k`, `threshold` (as /classify), `binary_data_output`",
        },
        "inputs": {
            "type": "array",
            "items": _TENSOR,
            "description": "one BYTES input `images`, shape [N]: base64-encoded image files, "
            "or binary tensor data (`parameters.binary_data_size`)",
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}


def _operation(summary: str, *, ok: str, errors: tuple[int, ...], **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": ok}}
    for status in errors:
        responses[str(status)] = {
            "description": "problem details, with `error` (the detail) for Triton's client",
            "content": _PROBLEM,
        }
    return {
        "summary": summary,
        "tags": ["Open Inference Protocol v2"],
        "responses": responses,
        **extra,
    }


def openapi_paths(model_name: str) -> dict[str, dict[str, Any]]:
    """OpenAPI path items for the protocol's routes, for ``model_name``."""
    model = f"/v2/models/{model_name}"
    keyed = (401, 404, 503)
    return {
        "/v2/health/live": {"get": _operation("Server live", ok="live", errors=())},
        "/v2/health/ready": {
            "get": _operation("Server ready", ok="ready: the model is loaded", errors=(503,))
        },
        "/v2": {"get": _operation("Server metadata", ok="name, version, extensions", errors=keyed)},
        model: {"get": _operation("Model metadata", ok="inputs and outputs", errors=keyed)},
        f"{model}/ready": {"get": _operation("Model ready", ok="ready", errors=keyed)},
        f"{model}/infer": {
            "post": _operation(
                "Classify images (inference request)",
                ok="outputs `labels` (BYTES) and `scores` (FP32), [images, k]",
                errors=(400, 401, 404, 408, 413, 422, 429, 503, 504),
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _INFER_REQUEST}},
                },
            )
        },
    }
