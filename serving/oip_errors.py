"""Error answers of the Open Inference Protocol routes (``serving/oip.py``): problem details
with an ``error`` member, the message Triton's client reads."""

from __future__ import annotations

import json

from .guard import ASGIApp, Message, Receive, Scope, Send
from .problems import PROBLEM_JSON, Problem, problem_details

PREFIX = "/v2"


class OipErrors:
    """Give every error answer under ``/v2`` an ``error`` member (the problem's detail):
    Triton's client raises ``InferenceServerException(body["error"])``, and fails on a body
    without one. An unknown model's 404 says which model this server serves. Install it as a
    front middleware outside ``ProblemAnswers`` (error answers are problem details by then)."""

    def __init__(self, app: ASGIApp, model_name: str) -> None:
        self.app = app
        self.model_path = f"{PREFIX}/models/{model_name}"
        self.model_name = model_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(f"{PREFIX}/")):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        body = bytearray()

        async def answer(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                await self._send(send, held, self._with_error(path, held["status"], bytes(body)))

        await self.app(scope, receive, answer)

    def _with_error(self, path: str, status: int, body: bytes) -> bytes:
        try:
            problem = json.loads(body)
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            problem = problem_details(Problem.for_status(status), "", status=status).model_dump()
        if status == 404 and self._names_other_model(path):
            problem["detail"] = (
                f"unknown model: this server serves `{self.model_name}` ({self.model_path})"
            )
        problem["error"] = str(problem.get("detail") or problem.get("title") or status)
        return json.dumps(problem).encode()

    def _names_other_model(self, path: str) -> bool:
        own = path == self.model_path or path.startswith(f"{self.model_path}/")
        return path.startswith(f"{PREFIX}/models/") and not own

    @staticmethod
    async def _send(send: Send, start: Message, body: bytes) -> None:
        headers = [
            (name, value)
            for name, value in start.get("headers") or []
            if name.lower() not in (b"content-length", b"content-type")
        ]
        headers += [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})
