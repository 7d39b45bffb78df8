"""LitServe running this project's own serving runtime: the fair framework peer.

The same ``Predictor`` in the same precision, the same request decoder (reduced-size JPEG
decode, resize and crop, limits) and the same largest batch as our service, all built by
``serving.runtime.build_runtime`` from the same ``CLASSIFIER_*`` settings; LitServe only
replaces the HTTP server and the batcher. The difference to our service is then the framework.
"""

from __future__ import annotations

import argparse

import litserve as ls

from serving.runtime import Runtime, build_runtime
from serving.settings import ServingSettings

from .litserve_app import serve


class OurRuntimeAPI(ls.LitAPI):
    def __init__(self, artifact_dir: str, settings: ServingSettings, **kwargs) -> None:
        super().__init__(**kwargs)
        self.artifact_dir = artifact_dir
        self.settings = settings
        self.runtime: Runtime | None = None

    def setup(self, device: str) -> None:
        self.runtime = build_runtime(self.settings, self.artifact_dir)

    def decode_request(self, request):
        upload = request["images"]
        data = upload.file.read() if hasattr(upload, "file") else upload
        return self.runtime.decoder.decode_one(data)

    def batch(self, inputs: list) -> list:
        return inputs

    def predict(self, images: list) -> list:
        return self.runtime.torch_thread.call(self.runtime.classify_batch, images)

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, labels) -> list[dict]:
        return [{"labels": [score.model_dump() for score in labels]}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", required=True, help="classifier artifact directory")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds to fill a batch")
    args = parser.parse_args()
    settings = ServingSettings.from_env()
    api = OurRuntimeAPI(
        args.artifact,
        settings,
        max_batch_size=settings.batch_size_limit(),
        batch_timeout=args.batch_timeout,
        api_path="/classify",
    )
    serve(api, port=args.port, accelerator="auto")


if __name__ == "__main__":
    main()
