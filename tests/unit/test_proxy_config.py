"""deploy/proxy/nginx.conf (the compose stack's reverse proxy), checked by Debian's nginx
(`.ci/docker-engine install`) and against the classifier's own limits. tests/containers/
test_stack.py sends it real traffic."""

from __future__ import annotations

import re
import subprocess

from serving.settings import ServingSettings

from ..conftest import PROJECT_ROOT
from ..support.tools import require_tool

NGINX_CONF = PROJECT_ROOT / "deploy" / "proxy" / "nginx.conf"
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _directive(name: str) -> str:
    """The value of a directive that appears exactly once in the file."""
    pattern = rf"^\s*{re.escape(name)}\s+([^;]+);"
    found = re.findall(pattern, NGINX_CONF.read_text(), flags=re.MULTILINE)
    assert len(found) == 1, (name, found)
    return found[0].strip()


def _size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()
    return int(number) * SIZE_UNITS[unit]


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


def test_the_proxy_buffers_bodies_up_to_the_classifier_limit_and_bounds_headers_and_time():
    assert _size(_directive("client_max_body_size")) == ServingSettings().max_request_bytes
    assert _directive("proxy_request_buffering") == "on"
    count, size = _directive("large_client_header_buffers").split()
    assert int(count) * _size(size) <= 64 * 1024
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert _directive(timeout).endswith("s") and int(_directive(timeout)[:-1]) <= 60
    # Upstream named by the compose service alias, resolved per request by Docker's DNS.
    assert _directive("set $classifier") == "http://classifier:3000"
    assert _directive("resolver").startswith("127.0.0.11 ")
