"""`python -m scoring predict|spark`: score many images with a registered model.

  predict MODEL INPUT --out FILE   on this host, through the service's Predictor; resumable
  spark MODEL_URI INPUT --out DIR  on Spark, the MLflow model as a pyfunc UDF (Parquet out)

See docs/batch-scoring.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

MODEL_HELP = (
    "models:/Name@alias, models:/Name/<version>, runs:/<run_id>/<path>, a Bento tag "
    "(name[:version]) in the BentoML store, or a local artifact / MLflow model directory"
)
TRACKING_HELP = "MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)"


class _ShowsDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help with each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scoring", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    shows_defaults = {"formatter_class": _ShowsDefaults}
    _add_predict(sub.add_parser("predict", help="score on this host", **shows_defaults))
    _add_spark(sub.add_parser("spark", help="score on Spark (spark_udf)", **shows_defaults))
    return parser


def _add_predict(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("model", help=MODEL_HELP)
    cmd.add_argument(
        "input", help="a folder (images at any depth, by extension) or a .csv with a `path` column"
    )
    cmd.add_argument(
        "--out", required=True, help="results file: .csv or .jsonl; an existing one is resumed"
    )
    cmd.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    cmd.add_argument(
        "--decode-threads", type=int, default=2, help="threads decoding the next batch's images"
    )
    cmd.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    cmd.add_argument(
        "--precision",
        default="float32",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="float32 (default) gives the scores MLflow's pyfunc and evaluation give; auto "
        "autocasts where the hardware runs reduced precision natively",
    )
    cmd.add_argument(
        "--full-decode",
        action="store_true",
        help="decode large JPEGs at full size (the service decodes them reduced, as by default)",
    )
    cmd.add_argument("--top-k", type=int, default=None, help="labels per image (single-label)")
    cmd.add_argument(
        "--threshold", type=float, default=None, help="decision threshold (multi-label)"
    )
    cmd.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    cmd.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_spark(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "model", help="models:/Name@alias, models:/Name/<version>, runs:/... or an MLflow model dir"
    )
    cmd.add_argument(
        "input",
        help="a folder of images (read with Spark's binaryFile source) or a .parquet table",
    )
    cmd.add_argument("--out", required=True, help="output Parquet directory (replaced)")
    cmd.add_argument(
        "--image-column", default="content", help="the Parquet input's image bytes column"
    )
    cmd.add_argument("--master", default="local[2]", help="Spark master URL")
    cmd.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .inputs import InputError
    from .model_source import ModelSourceError
    from .outputs import OutputError

    try:
        return _predict(args) if args.command == "predict" else _spark(args)
    except (InputError, OutputError, ModelSourceError, ValueError) as exc:
        logging.getLogger("scoring").error("%s", exc)
        return 2


def _predict(args: argparse.Namespace) -> int:
    from .batch import ScoringOptions, score_paths
    from .inputs import list_inputs
    from .model_source import load_model
    from .outputs import open_results, output_format

    options = ScoringOptions(
        batch_size=args.batch_size,
        decode_threads=args.decode_threads,
        full_decode=args.full_decode,
        top_k=args.top_k,
        threshold=args.threshold,
        progress=not args.no_progress,
    )
    output_format(args.out)  # a wrong extension fails before the model loads
    paths = list_inputs(args.input)
    model = load_model(
        args.model, tracking_uri=args.tracking_uri, device=args.device, precision=args.precision
    )
    with open_results(args.out, model=model.lineage.model) as results:
        summary = score_paths(paths, model=model, results=results, options=options)
    print(f"{args.out}: {summary.describe()}")  # the CLI's answer, on stdout
    return 0


def _spark(args: argparse.Namespace) -> int:
    from .spark import run_spark_job

    counts = run_spark_job(
        args.model,
        args.input,
        out=args.out,
        tracking_uri=args.tracking_uri,
        master=args.master,
        image_column=args.image_column,
    )
    print(f"{args.out}: {counts['rows']} rows, {counts['failed']} with an error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
