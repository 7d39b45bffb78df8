"""deploy/proxy/nginx.conf (the compose stack's reverse proxy) against the classifier's own
limits. tests/integration/test_proxy_config.py has nginx check it; tests/containers/
test_stack.py sends it real traffic."""

from __future__ import annotations

import re

from serving.settings import ServingSettings

from ..conftest import PROJECT_ROOT

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
