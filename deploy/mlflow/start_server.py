#!/usr/bin/env python3
"""The MLflow image's entrypoint: `mlflow server` with basic auth, its passwords read from files.

Compose hands the PostgreSQL and MLflow admin passwords to the container as files (`secrets:`
in docker-compose.yml, under /run/secrets). This script builds the backend store URI and the
auth configuration from them, so no password is part of the container's configuration
(`docker inspect`) or of any command line (`ps` on the host); then it replaces itself with
`mlflow server --app-name basic-auth` and the arguments it was given.

Settings (environment, none of them secret): POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER,
POSTGRES_DB; MLFLOW_ADMIN_USERNAME; MLFLOW_AUTH_DEFAULT_PERMISSION (READ, EDIT, MANAGE or
NO_PERMISSIONS: what a user other than the admin may do with what others created). Secret
files: /run/secrets/postgres_password and /run/secrets/mlflow_admin_password, or the paths in
POSTGRES_PASSWORD_FILE / MLFLOW_ADMIN_PASSWORD_FILE.
"""

from __future__ import annotations

import configparser
import logging
import os
import secrets
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger("mlflow-start")

SECRETS_DIR = Path("/run/secrets")
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


class StartError(RuntimeError):
    """The server cannot start; the message says which setting to fix."""


def read_secret(name: str, environ: dict[str, str]) -> str:
    """The secret file's content without its trailing newline; empty or missing is an error."""
    variable = f"{name.upper()}_FILE"
    path = Path(environ.get(variable) or SECRETS_DIR / name)
    try:
        value = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise StartError(f"cannot read {name} from {path} ({variable}): {exc}") from exc
    if not value:
        raise StartError(f"{name} in {path} ({variable}) is empty")
    return value


def backend_store_uri(password: str, environ: dict[str, str]) -> str:
    user = environ.get("POSTGRES_USER", "mlflow")
    host = environ.get("POSTGRES_HOST", "postgres")
    port = environ.get("POSTGRES_PORT", "5432")
    database = environ.get("POSTGRES_DB", "mlflow")
    # Percent-encoded: a password may hold any of : @ / ? # %.
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{credentials}@{host}:{port}/{database}"


def write_auth_config(*, database_uri: str, admin_password: str, environ: dict[str, str]) -> Path:
    """MLflow's basic-auth ini in a directory only this user can read. The users and their
    permissions live in PostgreSQL beside the tracking data (own tables, own alembic version
    table), so they survive restarts and `docker compose up` recreating the container."""
    permission = environ.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ")
    if permission not in PERMISSIONS:
        raise StartError(f"MLFLOW_AUTH_DEFAULT_PERMISSION={permission!r}: use one of {PERMISSIONS}")
    username = environ.get("MLFLOW_ADMIN_USERNAME") or "admin"
    # MLflow reads the file with configparser's interpolation: a literal % is written %%.
    values = {
        "default_permission": permission,
        "database_uri": database_uri,
        "admin_username": username,
        "admin_password": admin_password,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {key: value.replace("%", "%%") for key, value in values.items()}
    path = Path(tempfile.mkdtemp(prefix="mlflow-auth-")) / "basic_auth.ini"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        config.write(file)
    return path


def server_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment `mlflow server` runs with: the secrets' derived settings added, the
    *_FILE pointers dropped."""
    database_uri = backend_store_uri(read_secret("postgres_password", environ), environ)
    admin_password = read_secret("mlflow_admin_password", environ)
    auth_config = write_auth_config(
        database_uri=database_uri, admin_password=admin_password, environ=environ
    )
    env = {k: v for k, v in environ.items() if not k.endswith("_PASSWORD_FILE")}
    env["MLFLOW_BACKEND_STORE_URI"] = database_uri
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
    # CSRF key for the sign-up form: the same in every worker (inherited), new per start.
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    return env


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        env = server_environment(dict(os.environ))
    except StartError as exc:
        logger.error("not starting: %s", exc)
        sys.exit(1)
    logger.info("starting mlflow server with basic auth (admin user from MLFLOW_ADMIN_USERNAME)")
    command = ["mlflow", "server", "--app-name", "basic-auth", *argv]
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
