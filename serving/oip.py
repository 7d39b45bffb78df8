"""The Open Inference Protocol v2 (REST), as KServe and Triton speak it, for the served model.

Routes (``{model}`` is the served model's name, the BentoML tag's name):
``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata),
``GET /v2/models/{model}`` (model metadata), ``GET /v2/models/{model}/ready`` and
``POST /v2/models/{model}/infer``. Extensions: ``binary_tensor_data`` and ``classification``.

They are served from BentoML's app (``FrontedService.add_routes``), so the request guard's API
keys and body limit, the concurrency limiter, the time limit and the metrics apply as to
``/classify``; an inference decodes its images with the worker's :class:`RequestDecoder`
(same limits and budgets) and runs through the ``classify`` API's adaptive batcher
(``FrontedService.call_batched``), batched with ``/classify`` traffic. Errors are problem
details (``serving/problems.py``) with an ``error`` member, the message Triton's client reads.
Wire formats: ``serving/oip_tensors.py``; docs/oip.md.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import bentoml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .oip_errors import PREFIX, OipErrors
from .oip_openapi import openapi_paths
from .oip_outputs import ImageResult, encode_outputs, response_body
from .oip_tensors import (
    HEADER_LENGTH,
    INPUT_NAME,
    OUTPUT_DATATYPES,
    InferRequest,
    OutputChoice,
    TensorError,
    image_bytes,
    output_choices,
    read_request,
)
from .options import ClassifyItem, ClassifyOptions, OptionError, OptionRules, parse_options
from .problems import PROBLEM_JSON, FieldError, Problem, problem_body, problem_details
from .settings import SERVICE_NAME

if TYPE_CHECKING:
    from .app import ServedClassifier


EXTENSIONS = ("binary_tensor_data", "classification")
PLATFORM = "pytorch_timm"
NOT_READY = "not ready: the model is still loading"
__all__ = ["OipErrors", "install_oip"]


def install_oip(
    service: Any,
    *,
    model_name: str,
    served_of: Callable[[], ServedClassifier | None],
    api: str = "classify",
) -> None:
    """Serve the protocol's routes from ``service`` (a ``FrontedService``) for ``model_name``,
    inferring through its batchable ``api``. ``served_of`` returns this worker's loaded model
    (None before it is). Their error answers need :class:`OipErrors` as a front middleware
    (``serving.app.protect`` installs both)."""
    endpoints = OipEndpoints(service=service, model_name=model_name, served_of=served_of, api=api)
    service.add_routes(endpoints.routes(), openapi_paths=openapi_paths(model_name))


@dataclass(frozen=True)
class OipEndpoints:
    service: Any
    model_name: str
    served_of: Callable[[], ServedClassifier | None]
    api: str = "classify"

    def routes(self) -> list[BaseRoute]:
        model = f"{PREFIX}/models/{self.model_name}"
        return [
            Route(f"{PREFIX}/health/live", self.live, methods=["GET"]),
            Route(f"{PREFIX}/health/ready", self.ready, methods=["GET"]),
            Route(PREFIX, self.server_metadata, methods=["GET"]),
            Route(model, self.model_metadata, methods=["GET"]),
            Route(f"{model}/ready", self.ready, methods=["GET"]),
            Route(f"{model}/infer", self.infer, methods=["POST"]),
        ]

    async def live(self, _: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, _: Request) -> Response:
        if self.served_of() is None:
            return _problem(Problem.HTTP_ERROR, NOT_READY, 503)
        return Response(status_code=200)

    async def server_metadata(self, _: Request) -> Response:
        return _json(
            {"name": SERVICE_NAME, "version": bentoml.__version__, "extensions": list(EXTENSIONS)}
        )

    async def model_metadata(self, _: Request) -> Response:
        served = self.served_of()
        if served is None:
            return _problem(Problem.HTTP_ERROR, NOT_READY, 503)
        return _json(model_metadata(self.model_name, served))

    async def infer(self, request: Request) -> Response:
        served = self.served_of()
        if served is None:
            return _problem(Problem.HTTP_ERROR, NOT_READY, 503)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            return _problem(
                Problem.INVALID_REQUEST,
                f"Content-Encoding {encoding[:40]} is not supported: send the body uncompressed",
            )
        try:
            parsed, binary = read_request(
                await request.body(), header_length=request.headers.get(HEADER_LENGTH)
            )
            encoded = image_bytes(parsed, binary)
            choices = output_choices(parsed)
            options = request_options(parsed, choices, rules=served.option_rules)
        except TensorError as exc:
            return _problem(exc.problem, str(exc), errors=exc.errors)
        except OptionError as exc:
            return _problem(Problem.INVALID_OPTION, str(exc), errors=exc.errors)
        return await self._classify(
            served, encoded, parsed=parsed, choices=choices, options=options
        )

    async def _classify(
        self,
        served: ServedClassifier,
        encoded: list[bytes],
        *,
        parsed: InferRequest,
        choices: list[OutputChoice],
        options: ClassifyOptions,
    ) -> Response:
        from bentoml.exceptions import ServiceUnavailable

        uploads = [
            _Element(f"{INPUT_NAME}[{i}]", io.BytesIO(data)) for i, data in enumerate(encoded)
        ]
        try:
            served.decoder.check_count(uploads)
            decoded = await served.decoder.decode_off_the_loop(uploads)
        except ValueError as exc:  # ImageDecodeError included
            file = getattr(exc, "file", None)
            reason = getattr(exc, "reason", None) or str(exc)
            error = FieldError(field=INPUT_NAME, file=file, reason=reason)
            problem = Problem.INVALID_IMAGE if file else Problem.INVALID_REQUEST
            return _problem(problem, str(exc), errors=[error])
        items = [ClassifyItem(image.image, options) for image in decoded]
        try:
            answers = await self.service.call_batched(self.api, items)
        except ServiceUnavailable:
            return _problem(
                Problem.OVERLOADED, "overloaded: adaptive batching shed this request; retry later"
            )
        index = {label: i for i, label in enumerate(served.runtime.predictor.spec.labels)}
        results = [
            ImageResult(
                labels=[s.label for s in answer.labels],
                scores=[s.score for s in answer.labels],
                indices=[index[s.label] for s in answer.labels],
            )
            for answer in answers
        ]
        outputs, data = encode_outputs(choices, results)
        header: dict[str, Any] = {
            "model_name": self.model_name,
            "model_version": model_version(served),
            "outputs": outputs,
        }
        if parsed.id is not None:
            header["id"] = parsed.id
        body, headers = response_body(header, data)
        return Response(body, headers=headers)


@dataclass(frozen=True)
class _Element:
    """One BYTES element as the decoder reads an upload: a name for errors, and the bytes."""

    filename: str
    file: io.BytesIO


def model_version(served: ServedClassifier) -> str:
    return served.model.tag.rpartition(":")[2]


def model_metadata(name: str, served: ServedClassifier) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [model_version(served)],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": output, "datatype": datatype, "shape": [-1, -1]}
            for output, datatype in OUTPUT_DATATYPES.items()
        ],
    }


def request_options(
    request: InferRequest, choices: list[OutputChoice], *, rules: OptionRules
) -> ClassifyOptions:
    """The request's ``parameters.top_k`` / ``threshold`` (``/classify``'s options), checked
    against the model. A classification output asks for its ``N`` best classes, as in Triton:
    top_k N (at most the labels) unless given, and for a multi-label model threshold 0 unless
    given, so that N are answered."""
    values = {
        name: value if isinstance(value, str) else json.dumps(value)
        for name, value in request.parameters.items()
        if name in ("top_k", "threshold")
    }
    options = parse_options(values)
    counts = [choice.classification for choice in choices if choice.classification]
    if counts:
        top_k = options.top_k or min(max(counts), rules.num_labels)
        threshold = options.threshold
        if threshold is None and rules.multi_label:
            threshold = 0.0
        options = ClassifyOptions(top_k=top_k, threshold=threshold)
    return rules.check(options)


def _json(content: dict[str, Any]) -> Response:
    return Response(json.dumps(content), media_type="application/json")


def _problem(
    problem: Problem,
    detail: str,
    status: int | None = None,
    *,
    errors: list[FieldError] | None = None,
) -> Response:
    body = problem_body(problem_details(problem, detail, status=status, errors=errors))
    return Response(body, status_code=status or problem.status, media_type=PROBLEM_JSON)
