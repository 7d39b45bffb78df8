"""``python -m training promote MODEL_URI --alias champion --require accuracy>=0.9 --data.root
...``: move an MLflow alias to a registered version only after it meets a bar on labelled data.

The version is measured by :func:`training.evaluate.evaluate_model` (the service's decoding and
``Predictor``, logged as an evaluation run linked to the version). Only when every requirement
holds is the alias moved; otherwise the alias stays where it was and the unmet requirements are
reported. The version is tagged ``promotion.<alias>.evaluation_run`` with the evaluation that
justified the move.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .config import EvaluationConfig
from .evaluate import EvaluationResult, evaluate_model, resolve_tracking_uri

logger = logging.getLogger(__name__)

_REQUIREMENT = re.compile(r"^\s*(?P<metric>[A-Za-z0-9_.\-]+)\s*(?P<op>>=|<=)\s*(?P<value>\S+)\s*$")
_REGISTERED = re.compile(r"^models:/[^/@]+(@[^/]+|/\d+)$")


class PromotionError(ValueError):
    """The promotion cannot be attempted as asked; the message says why."""


@dataclass(frozen=True)
class Requirement:
    """One bar: ``metric >= value`` or ``metric <= value`` on the evaluation's metrics."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Requirement:
        match = _REQUIREMENT.match(text)
        if not match:
            raise PromotionError(
                f"requirement {text!r} is not METRIC>=VALUE or METRIC<=VALUE "
                "(e.g. accuracy>=0.9, map>=0.8)"
            )
        try:
            value = float(match["value"])
        except ValueError:
            raise PromotionError(
                f"requirement {text!r}: {match['value']!r} is not a number"
            ) from None
        return cls(match["metric"], match["op"], value)

    def met_by(self, metrics: dict[str, float]) -> bool:
        measured = metrics[self.metric]
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass(frozen=True)
class PromotionResult:
    evaluation: EvaluationResult
    alias: str
    registered_name: str
    version: str
    unmet: list[str]  # "accuracy>=0.9 (measured 0.8731)" for each requirement not met
    previous_version: str | None  # where the alias pointed before (None: nowhere)

    @property
    def promoted(self) -> bool:
        return not self.unmet


def _check_metrics_known(requirements: list[Requirement], metrics: dict[str, float]) -> None:
    unknown = [str(r) for r in requirements if r.metric not in metrics]
    if unknown:
        headline = sorted(name for name in metrics if not name.startswith("ap_"))
        raise PromotionError(
            f"requirement(s) {unknown} name metrics this evaluation does not have; it has "
            f"{headline} (and ap_<label> for multi-label models)"
        )


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote_model(
    *,
    model_uri: str,
    alias: str,
    requirements: list[Requirement],
    config: EvaluationConfig,
) -> PromotionResult:
    """Evaluate ``model_uri`` (a registered version) and move ``alias`` to it if every
    requirement holds. Raises :class:`PromotionError` for a request that cannot be honoured."""
    if not requirements:
        raise PromotionError("give at least one --require METRIC>=VALUE: the bar to meet")
    if not _REGISTERED.match(model_uri):
        raise PromotionError(
            f"{model_uri!r} is not a registered version: promote takes models:/Name/<version> "
            "or models:/Name@alias (an alias moves between versions of one registered model)"
        )
    if not config.log_to_mlflow:
        raise PromotionError("promote records its evaluation in MLflow: keep log_to_mlflow on")
    evaluation = evaluate_model(model_uri=model_uri, config=config)
    _check_metrics_known(requirements, evaluation.metrics)
    name, version = evaluation.lineage.registered_name, evaluation.lineage.model_version
    client = MlflowClient(tracking_uri=resolve_tracking_uri(config.tracking_uri))
    previous = _alias_version(client, name, alias)
    unmet = [
        f"{r} (measured {evaluation.metrics[r.metric]:.4f})"
        for r in requirements
        if not r.met_by(evaluation.metrics)
    ]
    if unmet:
        logger.warning(
            "%s version %s not promoted to @%s: %s; @%s stays on %s",
            name,
            version,
            alias,
            "; ".join(unmet),
            alias,
            f"version {previous}" if previous else "no version",
        )
    else:
        client.set_registered_model_alias(name, alias, version)
        client.set_model_version_tag(
            name, version, f"promotion.{alias}.evaluation_run", evaluation.run_id or ""
        )
        logger.info(
            "%s @%s: version %s -> %s (%s on %s)",
            name,
            alias,
            previous or "none",
            version,
            ", ".join(str(r) for r in requirements),
            evaluation.dataset,
        )
    return PromotionResult(evaluation, alias, name, version, unmet, previous)
