"""LitServe with batching: the same model and preprocessing, written the way LitServe documents.

``decode_request`` decodes and transforms one upload, ``batch`` stacks, ``predict`` runs one
forward per batch, one inference worker on the CPU (or one GPU), one API server process.
"""

from __future__ import annotations

import argparse
import io

import litserve as ls
import torch
from PIL import Image

from models.artifact import load_artifact
from models.preprocessing import create_eval_transform


class ClassifierAPI(ls.LitAPI):
    def __init__(self, artifact_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.artifact_dir = artifact_dir

    def setup(self, device: str) -> None:
        model, self.spec = load_artifact(self.artifact_dir)
        self.device = device
        self.model = model.to(device)
        self.transform = create_eval_transform(self.spec.preprocessing)

    def decode_request(self, request) -> torch.Tensor:
        upload = request["images"]
        data = upload.file.read() if hasattr(upload, "file") else upload
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB"))

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(batch.to(self.device)).softmax(dim=-1).cpu()

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, probs: torch.Tensor) -> list[dict]:
        top = probs.topk(min(self.spec.top_k, len(self.spec.labels)))
        return [
            {
                "labels": [
                    {"label": self.spec.labels[i], "score": float(s)}
                    for s, i in zip(top.values, top.indices, strict=True)
                ]
            }
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", required=True, help="classifier artifact directory")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--max-batch-size", type=int, default=8, help="largest batch")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds to fill a batch")
    args = parser.parse_args()
    api = ClassifierAPI(
        args.artifact,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        api_path="/classify",
    )
    serve(api, port=args.port, accelerator="cuda" if torch.cuda.is_available() else "cpu")


def serve(api: ls.LitAPI, *, port: int, accelerator: str) -> None:
    """One LitServe API server and one inference worker on one device, on loopback (both
    LitServe peers run this way)."""
    server = ls.LitServer(
        api, accelerator=accelerator, devices=1, workers_per_device=1, timeout=120
    )
    server.run(
        host="127.0.0.1",
        port=port,
        num_api_servers=1,
        generate_client_file=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
