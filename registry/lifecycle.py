"""The Bento models of one name: what is in the store, where each came from in MLflow, and which
one ``:latest`` (what ``bentoml serve`` and the image serve by default) points to.

``:latest`` is BentoML's pointer file ``<store>/<name>/latest``. BentoML moves it only when a new
model is created, so importing an MLflow version that is already in the store (a rollback) would
leave it on the newer one; :func:`make_latest` moves it explicitly.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import bentoml

logger = logging.getLogger(__name__)

LATEST_POINTER = "latest"  # BentoML's store layout: <store>/<name>/latest holds a version


@dataclass(frozen=True)
class StoredModel:
    tag: str
    created: str  # ISO 8601, UTC
    is_latest: bool
    mlflow_registered_name: str
    mlflow_version: str
    mlflow_run_id: str
    mlflow_model_uri: str
    mlflow_aliases: tuple[str, ...] = ()  # filled in when the registry is reachable

    def to_dict(self) -> dict:
        return asdict(self)


def latest_tag(name: str) -> str | None:
    try:
        return str(bentoml.models.get(f"{name}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None


def make_latest(model: bentoml.Model) -> str | None:
    """Point ``<name>:latest`` at ``model``; returns the tag it pointed to before."""
    name = model.tag.name
    before = latest_tag(name)
    if before == str(model.tag):
        return before
    pointer = Path(model.path).parent / LATEST_POINTER
    # Written beside and renamed: a reader never sees a half-written version.
    with tempfile.NamedTemporaryFile("w", dir=pointer.parent, delete=False) as tmp:
        tmp.write(str(model.tag.version))
    os.replace(tmp.name, pointer)
    logger.info("%s:latest now points to %s (was %s)", name, model.tag, before)
    return before


def list_models(name: str) -> list[StoredModel]:
    """The store's models called ``name``, newest first, with their MLflow lineage labels."""
    latest = latest_tag(name)
    models = [m for m in bentoml.models.list() if m.tag.name == name]
    models.sort(key=lambda m: m.info.creation_time, reverse=True)
    return [
        StoredModel(
            tag=str(m.tag),
            created=m.info.creation_time.isoformat(timespec="seconds"),
            is_latest=str(m.tag) == latest,
            mlflow_registered_name=m.info.labels.get("mlflow_registered_name", ""),
            mlflow_version=m.info.labels.get("mlflow_version", ""),
            mlflow_run_id=m.info.labels.get("mlflow_run_id", ""),
            mlflow_model_uri=m.info.labels.get("mlflow_model_uri", ""),
        )
        for m in models
    ]


def with_aliases(models: list[StoredModel], client) -> list[StoredModel]:
    """Each model with the MLflow aliases its registered version carries now."""
    result = []
    for model in models:
        aliases: tuple[str, ...] = ()
        if model.mlflow_registered_name and model.mlflow_version:
            version = client.get_model_version(model.mlflow_registered_name, model.mlflow_version)
            aliases = tuple(sorted(version.aliases))
        result.append(StoredModel(**{**model.to_dict(), "mlflow_aliases": aliases}))
    return result


def format_table(models: list[StoredModel]) -> str:
    """A fixed-width table; ``*`` marks ``:latest``."""
    header = ("", "TAG", "CREATED", "MLFLOW MODEL", "VERSION", "ALIASES", "RUN")
    rows = [
        (
            "*" if m.is_latest else "",
            m.tag,
            m.created,
            m.mlflow_registered_name or "-",
            m.mlflow_version or "-",
            ",".join(m.mlflow_aliases) or "-",
            m.mlflow_run_id or "-",
        )
        for m in models
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
