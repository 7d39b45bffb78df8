"""deploy/mlflow/start_server.py (the MLflow image's entrypoint): what it hands `mlflow server`,
read back with MLflow's own auth-config reader and SQLAlchemy's URL parser."""

from __future__ import annotations

import importlib.util
import runpy
import stat
from pathlib import Path

import pytest
import sqlalchemy

from ..conftest import PROJECT_ROOT

ENTRYPOINT = runpy.run_path(str(PROJECT_ROOT / "deploy" / "mlflow" / "start_server.py"))
# Every character that needs escaping somewhere: in a URI (: @ / ? # %) or in an ini (% ;).
HOSTILE = "p%40ss:w@rd/?#%;x"


def _mlflow_read_auth_config():
    """MLflow's own reader (mlflow/server/auth/config.py), loaded on its own: importing the
    mlflow.server.auth package needs the server-side `auth` extra, which only the image has."""
    import mlflow

    path = Path(mlflow.__file__).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("mlflow_auth_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_auth_config


@pytest.fixture
def secrets_env(tmp_path) -> dict[str, str]:
    (tmp_path / "pg").write_text(HOSTILE + "\n")
    (tmp_path / "admin").write_text("admin-" + HOSTILE)
    return {
        "POSTGRES_PASSWORD_FILE": str(tmp_path / "pg"),
        "MLFLOW_ADMIN_PASSWORD_FILE": str(tmp_path / "admin"),
        "MLFLOW_ADMIN_USERNAME": "root-of-trust",
        "PATH": "/usr/bin",
    }


def test_secrets_become_a_backend_uri_and_an_auth_config_mlflow_reads_back(
    secrets_env, monkeypatch
):
    env = ENTRYPOINT["server_environment"](secrets_env)
    url = sqlalchemy.engine.make_url(env["MLFLOW_BACKEND_STORE_URI"])
    assert (url.username, url.password, url.host, url.database) == (
        "mlflow",
        HOSTILE,
        "postgres",
        "mlflow",
    )
    assert not any(key.endswith("_FILE") for key in env)
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]

    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", env["MLFLOW_AUTH_CONFIG_PATH"])
    config = _mlflow_read_auth_config()()
    assert config.admin_username == "root-of-trust"
    assert config.admin_password == "admin-" + HOSTILE
    assert config.database_uri == env["MLFLOW_BACKEND_STORE_URI"]
    assert config.default_permission == "READ"
    # The file holds two passwords: only its owner may read it.
    mode = (PROJECT_ROOT / env["MLFLOW_AUTH_CONFIG_PATH"]).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_a_missing_or_empty_secret_stops_the_start_naming_it(secrets_env, tmp_path):
    start_error = ENTRYPOINT["StartError"]
    (tmp_path / "admin").write_text("\n")
    with pytest.raises(start_error, match="mlflow_admin_password .* is empty"):
        ENTRYPOINT["server_environment"](secrets_env)
    secrets_env["POSTGRES_PASSWORD_FILE"] = str(tmp_path / "absent")
    with pytest.raises(start_error, match="cannot read postgres_password"):
        ENTRYPOINT["server_environment"](secrets_env)


def test_an_unknown_default_permission_is_refused(secrets_env):
    secrets_env["MLFLOW_AUTH_DEFAULT_PERMISSION"] = "ALL"
    with pytest.raises(ENTRYPOINT["StartError"], match="MLFLOW_AUTH_DEFAULT_PERMISSION"):
        ENTRYPOINT["server_environment"](secrets_env)
