"""Command line: ``python -m training train|evaluate|promote|make-demo-data``.

Every training setting is a flag named by its dotted config path (``--optim.lr 3e-4``); flags
override the YAML config, which overrides the built-in defaults. ``evaluate MODEL_URI`` takes
the data settings the same way (``--data.root``) and its own (``--split test``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from pydantic import BaseModel

from .config import EvaluationConfig, TrainConfig, leaf_fields

logger = logging.getLogger("training")


def _add_setting_flags(
    parser: argparse.ArgumentParser,
    config: type[BaseModel] = TrainConfig,
    title: str = "settings (override the YAML config)",
) -> None:
    group = parser.add_argument_group(title)
    for dotted, info in leaf_fields(config).items():
        default = info.default if info.default_factory is None else info.default_factory()
        group.add_argument(
            f"--{dotted}",
            dest=f"set:{dotted}",
            metavar="VALUE",
            default=None,
            help=f"{info.description or ''} (default: {default})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train, evaluate, log to MLflow and register")
    train.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML config (default: training/configs/default.yaml)",
    )
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config and exit without training",
    )
    _add_setting_flags(train)

    evaluate = sub.add_parser(
        "evaluate",
        help="a model's metrics on labelled data, as the service predicts; logged to MLflow",
    )
    evaluate.add_argument(
        "model_uri",
        metavar="MODEL_URI",
        help="models:/Name@alias, models:/Name/<version>, runs:/<run_id>/<path>, a Bento tag "
        "(name[:version]) in the BentoML store, or a local artifact directory",
    )
    _add_setting_flags(evaluate, EvaluationConfig, "evaluation settings")

    promote = sub.add_parser(
        "promote",
        help="evaluate a registered version and move an MLflow alias to it only if it meets "
        "every --require bar (exit 1 and the alias unchanged when it does not)",
    )
    promote.add_argument(
        "model_uri",
        metavar="MODEL_URI",
        help="the registered version to promote: models:/Name/<version> or models:/Name@alias",
    )
    promote.add_argument("--alias", required=True, help="the MLflow alias to move, e.g. champion")
    promote.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="METRIC>=VALUE",
        help="a bar on the evaluation's metrics (METRIC>=VALUE or METRIC<=VALUE, e.g. "
        "accuracy>=0.9, macro_f1>=0.8, map>=0.85); repeat for several, all must hold",
    )
    _add_setting_flags(promote, EvaluationConfig, "evaluation settings")

    demo = sub.add_parser("make-demo-data", help="write the synthetic shapes dataset")
    demo.add_argument(
        "--out", type=Path, default=Path("data/demo"), help="output directory (default: data/demo)"
    )
    demo.add_argument(
        "--per-class", type=int, default=100, help="single-label images per class (default: 100)"
    )
    demo.add_argument(
        "--multi-label-images", type=int, default=800, help="multi-label images (default: 800)"
    )
    demo.add_argument(
        "--image-size", type=int, default=64, help="image side in pixels (default: 64)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def _raise_keyboard_interrupt(signum, frame):  # SIGTERM -> the same clean path as Ctrl-C
    raise KeyboardInterrupt(f"signal {signum}")


def _train(cfg, ctx):
    """``train(cfg)``, inside the process group of a torchrun job when there is one."""
    from models.device import choose_device

    from .distributed import process_group, raise_peer_stopped, rank_device
    from .train import train

    if not ctx.enabled:
        return train(cfg)
    # Under torchrun a SIGTERM comes from the agent ending the job because a rank failed.
    signal.signal(signal.SIGTERM, raise_peer_stopped)
    device = rank_device(ctx=ctx, device=choose_device(cfg.device).device)
    with process_group(
        ctx=ctx,
        backend=cfg.distributed.backend,
        device=device,
        timeout_s=cfg.distributed.timeout_s,
    ):
        return train(cfg, ctx)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    commands = {
        "make-demo-data": _make_demo_data,
        "train": _train_command,
        "evaluate": _evaluate,
        "promote": _promote,
    }
    return commands[args.command](args)


def _make_demo_data(args: argparse.Namespace) -> int:
    from .synthetic import SyntheticSpec, generate

    generate(
        args.out,
        SyntheticSpec(
            image_size=args.image_size,
            seed=args.seed,
            single_label_per_class=args.per_class,
            multi_label_images=args.multi_label_images,
        ),
    )
    return 0


def _train_command(args: argparse.Namespace) -> int:
    """0: trained; 1: a torchrun peer failed; 2: bad input; 130: interrupted."""
    from pydantic import ValidationError

    from .config import load_config

    overrides = {
        k.removeprefix("set:"): v
        for k, v in vars(args).items()
        if k.startswith("set:") and v is not None
    }
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, ValidationError) as exc:
        logger.error("Invalid configuration: %s", exc)
        return 2
    if args.print_config:
        import yaml

        sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0

    from registry.tracking_server import TrackingServerError

    from .data import DataError
    from .distributed import DistributedContext, PeerStoppedError
    from .rundir import RunDirBusyError

    ctx = DistributedContext.from_env()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        result = _train(cfg, ctx)
    except PeerStoppedError as exc:
        logger.error("%s; resume with --resume auto", exc)
        return 1
    except DataError as exc:
        logger.error("Data error: %s", exc)
        return 2
    except TrackingServerError as exc:
        logger.error("MLflow: %s", exc)
        return 2
    except RunDirBusyError as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("Interrupted; resume with --resume auto")
        return 130
    if result is None:  # a rank other than 0 of a torchrun job: rank 0 reports
        return 0
    logger.info(
        "Best %s %.4f at epoch %d; run %s; registered %s version %s",
        result.monitored,
        result.best_score,
        result.best_epoch,
        result.run_id,
        result.registered_name,
        result.registered_version,
    )
    return 0


def _evaluation_config(args: argparse.Namespace) -> EvaluationConfig | None:
    """The evaluation settings from the flags; None (logged) when they are invalid."""
    from pydantic import ValidationError

    from .config import apply_override

    values: dict = {}
    try:
        for key, raw in vars(args).items():
            if key.startswith("set:") and raw is not None:
                apply_override(values, key.removeprefix("set:"), raw, config=EvaluationConfig)
        return EvaluationConfig.model_validate(values)
    except (ValueError, ValidationError) as exc:
        logger.error("Invalid configuration: %s", exc)
        return None


def _evaluate(args: argparse.Namespace) -> int:
    """Print the per-class table (the command's output, on stdout); 2 for bad input."""
    config = _evaluation_config(args)
    if config is None:
        return 2

    from registry.tracking_server import TrackingServerError
    from scoring.model_source import ModelSourceError

    from .data import DataError
    from .evaluate import evaluate_model, format_table

    try:
        result = evaluate_model(model_uri=args.model_uri, config=config)
    except (ModelSourceError, DataError, TrackingServerError) as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(format_table(result) + "\n")
    if result.run_id:
        logger.info("Logged as MLflow run %s", result.run_id)
    return 0


def _promote(args: argparse.Namespace) -> int:
    """0: promoted; 1: a bar was not met (the alias is unchanged); 2: bad input."""
    config = _evaluation_config(args)
    if config is None:
        return 2

    from registry.tracking_server import TrackingServerError
    from scoring.model_source import ModelSourceError

    from .data import DataError
    from .evaluate import format_table
    from .promote import PromotionError, Requirement, promote_model

    try:
        requirements = [Requirement.parse(text) for text in args.require]
        result = promote_model(
            model_uri=args.model_uri, alias=args.alias, requirements=requirements, config=config
        )
    except (PromotionError, ModelSourceError, DataError, TrackingServerError) as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(format_table(result.evaluation) + "\n")
    if not result.promoted:
        sys.stdout.write(f"NOT promoted: {'; '.join(result.unmet)}\n")
        return 1
    sys.stdout.write(
        f"promoted: {result.registered_name} @{result.alias} -> version {result.version}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
