"""The baseline: a hand-rolled FastAPI server, one forward pass per request.

What the seed projects built and what most tutorials show: PIL decode, the timm eval transform,
``torch.no_grad()`` and the plain fp32 model, in a sync endpoint (FastAPI runs those in its thread
pool), one uvicorn worker. Same weights, labels and preprocessing definition as our service.
"""

from __future__ import annotations

import argparse
from typing import Annotated

import torch
import uvicorn
from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import Image

from models.artifact import load_artifact
from models.preprocessing import create_eval_transform


def create_app(artifact_dir: str) -> FastAPI:
    model, spec = load_artifact(artifact_dir)
    transform = create_eval_transform(spec.preprocessing)
    app = FastAPI(title="naive per-request classifier")

    @app.get("/healthz")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/classify")
    def classify(images: Annotated[list[UploadFile], File()]) -> list[dict]:
        results = []
        for upload in images:
            try:
                image = Image.open(upload.file).convert("RGB")
            except OSError as exc:
                raise HTTPException(400, f"not an image: {exc}") from None
            with torch.no_grad():
                probs = model(transform(image).unsqueeze(0)).softmax(dim=-1)[0]
            top = probs.topk(min(spec.top_k, len(spec.labels)))
            results.append(
                {
                    "labels": [
                        {"label": spec.labels[i], "score": float(s)}
                        for s, i in zip(top.values, top.indices, strict=True)
                    ]
                }
            )
        return results

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", required=True, help="classifier artifact directory")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.artifact), host="127.0.0.1", port=args.port, workers=1, log_level="warning"
    )


if __name__ == "__main__":
    main()
