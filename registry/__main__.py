"""`python -m registry import URI`: copy a registered MLflow model into the BentoML store (it
becomes `<name>:latest`, the one served by default); `list`: the store's models, their MLflow
lineage and which one `:latest` is; `resolve`: the version a model URI points to."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m registry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import an MLflow model into the BentoML model store")
    imp.add_argument(
        "model_uri", help="models:/Name@alias, models:/Name/<version> or runs:/<run_id>/<path>"
    )
    imp.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)",
    )
    imp.add_argument(
        "--name", default=None, help="name in the BentoML store (default: image-classifier)"
    )
    res = sub.add_parser(
        "resolve",
        help="print the registered version a model URI points to; exit 3 if there is none",
    )
    res.add_argument("model_uri", help="models:/Name@alias or models:/Name/<version>")
    res.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)",
    )
    lst = sub.add_parser(
        "list", help="list the BentoML store's models with their MLflow lineage and :latest"
    )
    lst.add_argument(
        "--name", default=None, help="model name in the BentoML store (default: image-classifier)"
    )
    lst.add_argument(
        "--tracking-uri",
        default=None,
        help="also show each version's current MLflow aliases, read from this registry "
        "(default: $MLFLOW_TRACKING_URI if set; none: aliases are not shown)",
    )
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .bento_import import DEFAULT_BENTO_MODEL_NAME, ModelImportError, import_from_mlflow

    if args.command == "resolve":
        return _resolve(args.model_uri, args.tracking_uri)
    if args.command == "list":
        return _list(args.name or DEFAULT_BENTO_MODEL_NAME, args.tracking_uri, as_json=args.json)
    try:
        model, created = import_from_mlflow(
            args.model_uri,
            tracking_uri=args.tracking_uri,
            bento_name=args.name or DEFAULT_BENTO_MODEL_NAME,
        )
    except ModelImportError as exc:
        logging.getLogger("registry").error("%s", exc)
        return 2
    sys.stdout.write(f"{model.tag}\n")
    logging.getLogger("registry").info(
        "%s %s", "imported" if created else "already imported as", model.tag
    )
    return 0


def _resolve(model_uri: str, tracking_uri: str | None) -> int:
    import mlflow
    from mlflow import MlflowClient

    from .bento_import import ModelImportError, check_tracking_reachable, resolve_source

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        check_tracking_reachable(tracking_uri)
        source = resolve_source(model_uri, MlflowClient(tracking_uri, registry_uri=tracking_uri))
    except ModelImportError as exc:
        logging.getLogger("registry").info("%s", exc)
        return 3
    sys.stdout.write(f"{source.download_uri} (run {source.run_id})\n")
    return 0


def _list(name: str, tracking_uri: str | None, *, as_json: bool) -> int:
    import json
    import os

    from .lifecycle import format_table, list_models, with_aliases
    from .tracking_server import TrackingServerError, check_tracking_reachable

    models = list_models(name)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri and models:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            check_tracking_reachable(tracking_uri)
            models = with_aliases(models, MlflowClient(tracking_uri, registry_uri=tracking_uri))
        except (TrackingServerError, MlflowException) as exc:
            logging.getLogger("registry").warning("MLflow aliases not shown: %s", exc)
    if as_json:
        sys.stdout.write(json.dumps([m.to_dict() for m in models], indent=2) + "\n")
    elif models:
        sys.stdout.write(format_table(models) + "\n")
    else:
        logging.getLogger("registry").info("no model named %s in the BentoML store", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
