"""deploy/proxy/nginx.conf checked by the real nginx (Debian's, `.ci/docker-engine install`);
tests/unit/test_proxy_config.py checks its values against the classifier's own limits."""

from __future__ import annotations

import subprocess

from ..conftest import PROJECT_ROOT
from ..support.tools import require_tool

NGINX_CONF = PROJECT_ROOT / "deploy" / "proxy" / "nginx.conf"


def test_nginx_accepts_the_config(tmp_path):
    nginx = require_tool("nginx", "run `.ci/docker-engine install` (Debian's nginx package)")
    # -p: a prefix of our own, so the check writes nothing outside tmp_path.
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(NGINX_CONF)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
