"""Open Inference Protocol v2 tensors on the wire: the inference request and response bodies,
in JSON and with the binary tensor data extension (``serving/oip.py`` serves them).

No BentoML and no model here: bytes in, images' bytes and output choices out; results in,
response body out.

- BYTES in JSON: ``data`` is a list (flat or nested) of strings; the images must be
  base64-encoded (JSON strings cannot carry raw image bytes: Triton's client sends a BYTES
  element as UTF-8 text).
- Binary tensor data: the request's JSON header is ``Inference-Header-Content-Length`` bytes
  long, and an input with ``parameters.binary_data_size`` takes that many bytes of what follows,
  in input order; BYTES elements are each a 4-byte little-endian length and the bytes.

The response side is ``serving/oip_outputs.py``.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .problems import FieldError, Problem

INPUT_NAME = "images"
LABELS_OUTPUT = "labels"
SCORES_OUTPUT = "scores"
OUTPUT_DATATYPES = {LABELS_OUTPUT: "BYTES", SCORES_OUTPUT: "FP32"}
HEADER_LENGTH = "inference-header-content-length"
_LENGTH = struct.Struct("<I")


class TensorError(ValueError):
    """A request this protocol cannot serve: ``problem`` (400 by default), ``errors`` naming
    the fields (``inputs[0].data`` ...) and, for an image, the element (``images[2]``)."""

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        problem: Problem = Problem.INVALID_REQUEST,
    ) -> None:
        super().__init__(detail)
        self.errors = errors or []
        self.problem = problem


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    """An inference request's JSON (the part before any binary data)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class OutputChoice:
    """One output to answer: binary or JSON, and with ``classification``, the classification
    extension's strings (``"score:index:label"``) for that many classes."""

    name: str
    binary: bool = False
    classification: int | None = None


def read_request(body: bytes, *, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The request's JSON header and its binary data (empty without the extension)."""
    split = len(body)
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            split = -1
        if not 0 <= split <= len(body):
            raise TensorError(
                f"Inference-Header-Content-Length must be a length from 0 to the body's "
                f"{len(body)} bytes, got {header_length[:40]!r}"
            )
    try:
        parsed = json.loads(body[:split])
    except RecursionError:
        raise TensorError("the request is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        hint = "" if header_length else " (binary data needs Inference-Header-Content-Length)"
        raise TensorError(f"the request is not valid JSON: {exc}{hint}") from None
    try:
        return InferRequest.model_validate(parsed), body[split:]
    except ValidationError as exc:
        errors = [_field_error(error) for error in exc.errors(include_url=False)]
        detail = "; ".join(f"{error.field}: {error.reason}" for error in errors)
        raise TensorError(f"not an inference request: {detail}", errors=errors) from None


def _field_error(error: Any) -> FieldError:
    field = ".".join(str(part) for part in error["loc"]) or "request"
    return FieldError(field=field, reason=str(error["msg"]).removeprefix("Value error, "))


def image_bytes(request: InferRequest, binary: bytes) -> list[bytes]:
    """The encoded images of the one BYTES input :data:`INPUT_NAME`, shape ``[N]`` (or
    ``[N, 1]``): base64 strings in JSON, or binary tensor data."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = ", ".join(f"`{tensor.name}`" for tensor in request.inputs) or "none"
        raise TensorError(
            f"send one input, `{INPUT_NAME}` (BYTES, shape [N]: the encoded image files); "
            f"got {names}",
            errors=[FieldError(field="inputs", reason=f"expected one input `{INPUT_NAME}`")],
        )
    tensor = request.inputs[0]
    field = "inputs[0]"
    if tensor.datatype != "BYTES":
        raise _input_error(
            f"{field}.datatype", f"must be BYTES (encoded image files), got {tensor.datatype}"
        )
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        images = _binary_elements(size, binary, field=field)
    else:
        if binary:
            raise _input_error(
                f"{field}.parameters", "binary data was sent but no input has binary_data_size"
            )
        images = _json_elements(tensor.data, field=field)
    _check_shape(tensor.shape, count=len(images), field=field)
    return images


def _input_error(field: str, reason: str) -> TensorError:
    return TensorError(f"{field}: {reason}", errors=[FieldError(field=field, reason=reason)])


def _check_shape(shape: list[int], *, count: int, field: str) -> None:
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] != count:
        raise _input_error(
            f"{field}.shape", f"must be [{count}] for {count} images (or [{count}, 1]), got {shape}"
        )


def _json_elements(data: Any, *, field: str) -> list[bytes]:
    if not isinstance(data, list):
        raise _input_error(
            f"{field}.data", "must be a list of base64-encoded image files (or binary data)"
        )
    try:
        elements = list(_flatten(data))
    except RecursionError:
        raise _input_error(f"{field}.data", "nested too deeply") from None
    images = []
    for index, element in enumerate(elements):
        if not isinstance(element, str):
            raise _element_error(index, f"must be a base64 string, got {type(element).__name__}")
        try:
            images.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise _element_error(
                index, "is not valid base64 (JSON BYTES elements must be base64-encoded files)"
            ) from None
    return images


def _element_error(index: int, reason: str) -> TensorError:
    file = f"{INPUT_NAME}[{index}]"
    return TensorError(
        f"{file}: {reason}",
        errors=[FieldError(field=INPUT_NAME, file=file, reason=reason)],
        problem=Problem.INVALID_IMAGE,
    )


def _flatten(data: list[Any]) -> Iterator[Any]:
    for element in data:
        if isinstance(element, list):
            yield from _flatten(element)
        else:
            yield element


def _binary_elements(size: Any, binary: bytes, *, field: str) -> list[bytes]:
    if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
        raise _input_error(
            f"{field}.parameters.binary_data_size",
            f"must be the {len(binary)} bytes after the JSON header, got {size!r}",
        )
    try:
        return deserialize_bytes(binary)
    except ValueError as exc:
        raise _input_error(f"{field}.binary_data", str(exc)) from None


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """BYTES elements as binary tensor data: each a 4-byte little-endian length, then itself."""
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def deserialize_bytes(buffer: bytes) -> list[bytes]:
    """The inverse of :func:`serialize_bytes`; ValueError if a length runs past the end."""
    elements, offset = [], 0
    while offset < len(buffer):
        if offset + _LENGTH.size > len(buffer):
            raise ValueError(f"truncated BYTES element length at byte {offset}")
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += _LENGTH.size
        if offset + length > len(buffer):
            raise ValueError(
                f"BYTES element {len(elements)} declares {length} bytes, "
                f"only {len(buffer) - offset} follow"
            )
        elements.append(buffer[offset : offset + length])
        offset += length
    return elements


def output_choices(request: InferRequest) -> list[OutputChoice]:
    """What to answer: the outputs asked for (both if none are named), each binary if its
    ``parameters.binary_data`` (or, for unnamed ones, the request's ``binary_data_output``)."""
    default_binary = request.parameters.get("binary_data_output") is True
    if request.outputs is None:
        return [OutputChoice(name, binary=default_binary) for name in OUTPUT_DATATYPES]
    choices = []
    for index, output in enumerate(request.outputs):
        field = f"outputs[{index}]"
        if output.name not in OUTPUT_DATATYPES:
            known = ", ".join(f"`{name}`" for name in OUTPUT_DATATYPES)
            raise _input_error(f"{field}.name", f"unknown output `{output.name}` (known: {known})")
        count = output.parameters.get("classification")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise _input_error(f"{field}.parameters.classification", "must be a whole number")
        if count is not None and count < 1:
            raise _input_error(f"{field}.parameters.classification", f"must be >= 1, got {count}")
        binary = output.parameters.get("binary_data", default_binary) is True
        choices.append(OutputChoice(output.name, binary=binary, classification=count))
    return choices
