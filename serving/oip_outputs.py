"""Open Inference Protocol v2 responses: the outputs ``labels`` (BYTES), ``scores`` (FP32) and
the classification extension's strings, in JSON or as binary tensor data (the request side:
``serving/oip_tensors.py``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .oip_tensors import HEADER_LENGTH, LABELS_OUTPUT, OutputChoice, serialize_bytes

# Multi-label answers differ in length per image: shorter rows are padded to a rectangle.
PAD_LABEL, PAD_SCORE = "", 0.0


@dataclass(frozen=True)
class ImageResult:
    """One image's answer: labels best first, their scores and their indices in the model."""

    labels: list[str]
    scores: list[float]
    indices: list[int]


def encode_outputs(
    choices: Sequence[OutputChoice], results: Sequence[ImageResult]
) -> tuple[list[dict[str, Any]], bytes]:
    """The response's ``outputs`` and its binary data (in output order). Each output is
    ``[images, k]``; rows shorter than the longest (multi-label) are padded with
    :data:`PAD_LABEL` / :data:`PAD_SCORE`."""
    outputs, binary = [], bytearray()
    for choice in choices:
        datatype, rows, pad = _rows(choice, results)
        width = max((len(row) for row in rows), default=0)
        values = [value for row in rows for value in [*row, *([pad] * (width - len(row)))]]
        output: dict[str, Any] = {
            "name": choice.name,
            "datatype": datatype,
            "shape": [len(rows), width],
        }
        if choice.binary:
            data = _binary_values(datatype, values)
            output["parameters"] = {"binary_data_size": len(data)}
            binary += data
        else:
            output["data"] = values
        outputs.append(output)
    return outputs, bytes(binary)


def _rows(choice: OutputChoice, results: Sequence[ImageResult]) -> tuple[str, list[list[Any]], Any]:
    """One output's rows, its datatype and its padding. Classification strings are Triton's
    ``"<score>:<index>:<label>"`` (the score as C's ``%f``), at most ``classification`` a row."""
    if choice.classification is not None:
        rows = [
            [
                f"{score:f}:{index}:{label}"
                for label, score, index in zip(r.labels, r.scores, r.indices, strict=True)
            ][: choice.classification]
            for r in results
        ]
        return "BYTES", rows, PAD_LABEL
    if choice.name == LABELS_OUTPUT:
        return "BYTES", [list(r.labels) for r in results], PAD_LABEL
    return "FP32", [list(r.scores) for r in results], PAD_SCORE


def _binary_values(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes([value.encode() for value in values])
    return np.asarray(values, dtype="<f4").tobytes()


def response_body(header: dict[str, Any], binary: bytes) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON alone, or JSON then binary data with
    ``Inference-Header-Content-Length``."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not binary:
        return encoded, {"content-type": "application/json"}
    return encoded + binary, {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(encoded)),
    }
