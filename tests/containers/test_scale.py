"""docker-compose.yml's `scale` profile on a real engine: classifier replicas behind the HAProxy
load balancer (deploy/loadbalancer/haproxy.cfg), under closed-loop load from this host.

Throughput of one replica against two, a replica stopped (SIGTERM) and one killed (SIGKILL)
mid-load, and a rolling replacement of every replica with a new image (`make rolling-update`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import requests

from benchmarks.loadgen import run_load
from benchmarks.workload import make_uploads

from ..conftest import PROJECT_ROOT
from ..integration.conftest import free_port
from ..support.tools import compose_binary
from .conftest import DOCKER_CLI, REPORT, inspect, run

REPLICA = "classifier-replica"
CONCURRENCY = 8  # clients during the failover tests
THROUGHPUT_CONCURRENCY = 16
REPLICA_READY_S = 300


@pytest.fixture(scope="module")
def uploads():
    return make_uploads(sizes=((500, 375),), per_size=8)


@pytest.fixture(scope="module")
def scale_stack(docker_env, classifier_image, standin_images, session_dir):
    """The scale profile up with two replicas and the load balancer; `compose down` after."""
    ports = {"CLASSIFIER_PORT": free_port(), "LB_STATS_PORT": free_port()}
    env = {
        **{k: v for k, v in docker_env.items() if not k.startswith("COMPOSE_")},
        "COMPOSE_PROJECT_NAME": f"ic-scale-{uuid.uuid4().hex[:6]}",
        "COMPOSE_PROFILES": "scale",
        "CLASSIFIER_IMAGE": classifier_image,
        "CLASSIFIER_REPLICAS": "2",
        "CLASSIFIER_MEMORY": "3g",
        # Required by the file, unused by the two services started here.
        **{name: uuid.uuid4().hex for name in ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD")},
        "GRAFANA_ADMIN_PASSWORD": uuid.uuid4().hex,
        **{name: str(port) for name, port in ports.items()},
    }
    compose = [compose_binary(), "--project-directory", str(PROJECT_ROOT)]
    stack = Stack(env=env, compose_cmd=compose, **_urls(ports))
    try:
        stack.compose("up", "-d", "--wait", "--wait-timeout", str(REPLICA_READY_S), REPLICA, "lb")
        stack.wait_servers_up(2)
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "300", check=False)
        (session_dir / "compose-scale.log").write_text(logs.stdout + logs.stderr)
        stack.compose("down", "-v", "--timeout", "20", check=False, timeout=300)


def _urls(ports: dict[str, int]) -> dict[str, str]:
    return {
        "url": f"http://127.0.0.1:{ports['CLASSIFIER_PORT']}",
        "stats_url": f"http://127.0.0.1:{ports['LB_STATS_PORT']}/stats;csv",
    }


@dataclass
class Stack:
    env: dict[str, str]
    compose_cmd: list[str]
    url: str
    stats_url: str

    def compose(self, *args: str, check: bool = True, timeout: int = 600):
        return run([*self.compose_cmd, *args], self.env, check=check, timeout=timeout)

    def replicas(self) -> list[str]:
        return sorted(self.compose("ps", "-q", REPLICA).stdout.split())

    def servers(self) -> dict[str, dict[str, str]]:
        """The load balancer's backend servers that have an address, by name (stats CSV)."""
        text = requests.get(self.stats_url, timeout=5).text.lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "replicas" and row["svname"] not in ("BACKEND", "FRONTEND")
            and row.get("addr")
        }  # fmt: skip

    def servers_up(self) -> int:
        return sum(row["status"].startswith("UP") for row in self.servers().values())

    def wait_servers_up(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.servers_up() != count:
            if time.monotonic() > deadline:
                pytest.fail(f"the load balancer never saw {count} replicas up: {self.servers()}")
            time.sleep(0.5)

    def scale(self, replicas: int) -> None:
        self.compose(
            "up", "-d", "--wait", "--wait-timeout", str(REPLICA_READY_S), "--no-recreate",
            "--scale", f"{REPLICA}={replicas}", REPLICA,
        )  # fmt: skip
        self.wait_servers_up(replicas)


@dataclass
class Outcome:
    ended: float  # wall clock (time.time()), comparable with the load balancer's view
    status: str


class ClosedLoop:
    """``concurrency`` clients on their own thread, each sending its next request as soon as
    the last one is answered, until stopped; every outcome kept with the time it ended."""

    def __init__(self, url: str, uploads, concurrency: int = CONCURRENCY) -> None:
        self.url, self.uploads, self.concurrency = f"{url}/classify", uploads, concurrency
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> ClosedLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=150)

    def failures(self, after: float = 0.0) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "200" and o.ended > after]

    def answered_since(self, moment: float) -> int:
        return sum(o.status == "200" and o.ended > moment for o in self.outcomes)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.concurrency)))

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        while not self._stop.is_set():
            upload = self.uploads[index % len(self.uploads)]
            headers = {"Content-Type": upload.content_type}
            try:
                async with session.post(self.url, data=upload.body, headers=headers) as response:
                    await response.read()
                    status = str(response.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                status = type(exc).__name__
            self.outcomes.append(Outcome(ended=time.time(), status=status))


def _host_cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of every core on this host (/proc/stat)."""
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _throughput(stack: Stack, uploads, seconds: float = 15):
    """The load balancer's requests/s at saturation, and how busy the host's cores were."""
    url = f"{stack.url}/classify"
    busy, total = _host_cpu_times()
    result = asyncio.run(run_load(url, uploads, THROUGHPUT_CONCURRENCY, seconds, 3.0))
    busy_after, total_after = _host_cpu_times()
    assert not result.errors, result.errors
    return result, (busy_after - busy) / max(1, total_after - total)


def test_two_replicas_share_the_load(scale_stack, uploads):
    scale_stack.scale(1)
    one, one_busy = _throughput(scale_stack, uploads)
    scale_stack.scale(2)
    before = {name: int(row["stot"]) for name, row in scale_stack.servers().items()}
    two, two_busy = _throughput(scale_stack, uploads)
    after = {name: int(row["stot"]) for name, row in scale_stack.servers().items()}
    served = {name: after[name] - before.get(name, 0) for name in after}
    gain = two.throughput / one.throughput
    REPORT.append(
        f"scale profile, C={THROUGHPUT_CONCURRENCY}, 500x375 JPEGs: "
        f"1 replica {one.throughput:.1f} req/s (host CPU {one_busy:.0%} busy), "
        f"2 replicas {two.throughput:.1f} req/s ({gain:.2f}x; host CPU {two_busy:.0%} busy; "
        f"the replicas, HAProxy and the load generator share this host's cores)"
    )
    # Both replicas take a share (leastconn), and a second replica costs no throughput beyond
    # one 15 s window's noise on a shared machine.
    assert sum(n > 0.25 * sum(served.values()) for n in served.values()) == 2, served
    assert gain >= 0.85, (one.summary(), two.summary())
    # CPU permitting, about 2x: on a host with cores to spare (4 or more, not all busy), the
    # second replica must have used them. On the 2-core build machine one replica already keeps
    # both busy, and the gain is ~1.1x (docs/performance.md).
    if (os.cpu_count() or 1) >= 4 and two_busy < 0.8:
        assert gain >= 1.5, (gain, two_busy)
    # The load balancer's own metrics, which Prometheus scrapes.
    metrics = requests.get(scale_stack.stats_url.replace("/stats;csv", "/metrics"), timeout=5)
    assert metrics.status_code == 200 and "haproxy_backend_active_servers" in metrics.text


def test_a_stopped_replica_fails_no_request_and_a_killed_one_only_its_own(scale_stack, uploads):
    first, second = scale_stack.replicas()
    with ClosedLoop(scale_stack.url, uploads) as load:
        time.sleep(3)
        run([DOCKER_CLI, "stop", "-t", "70", first], scale_stack.env)  # SIGTERM, then waits
        stopped = time.time()
        time.sleep(3)
    assert not load.failures(), load.failures()[:10]
    assert load.answered_since(stopped) > 0
    run([DOCKER_CLI, "start", first], scale_stack.env)
    scale_stack.wait_servers_up(2, timeout_s=REPLICA_READY_S)

    with ClosedLoop(scale_stack.url, uploads) as load:
        time.sleep(3)
        run([DOCKER_CLI, "kill", "-s", "KILL", second], scale_stack.env)
        killed = time.time()
        down_at = _wait_marked_down(scale_stack, killed)
        time.sleep(3)
    failures = load.failures()
    # At most the requests the killed replica held (each client has one in flight), and none
    # once the load balancer has marked it down.
    assert len(failures) <= CONCURRENCY, failures
    assert not load.failures(after=down_at + 0.5), (down_at, failures)
    assert load.answered_since(down_at) > 0
    REPORT.append(
        f"scale profile: SIGTERM of a replica under load: 0 failed; SIGKILL: {len(failures)} "
        f"failed, marked down {down_at - killed:.1f} s after the kill"
    )
    # The stack recovers when the killed replica starts again.
    run([DOCKER_CLI, "start", second], scale_stack.env)
    scale_stack.wait_servers_up(2, timeout_s=REPLICA_READY_S)
    with ClosedLoop(scale_stack.url, uploads) as load:
        time.sleep(3)
    assert load.outcomes and not load.failures()


def _wait_marked_down(stack: Stack, since: float) -> float:
    """When the load balancer had one replica left up (polled every 50 ms)."""
    while stack.servers_up() > 1:
        if time.time() - since > 30:
            pytest.fail(f"a killed replica is still up for the load balancer: {stack.servers()}")
        time.sleep(0.05)
    return time.time()


def _rolling_update(stack: Stack, image: str, **env: str):
    make = ["make", "--no-print-directory", "rolling-update"]
    tools = [f"COMPOSE={' '.join(stack.compose_cmd)}", f"DOCKER={DOCKER_CLI}"]
    env = {**stack.env, "CLASSIFIER_IMAGE": image, **env}
    return run([*make, *tools], env, timeout=1200, check=False)


def test_a_rolling_update_to_a_broken_image_leaves_the_old_replicas_serving(
    scale_stack, classifier_image, uploads, tmp_path
):
    broken = f"{classifier_image.split(':')[0]}:broken-{uuid.uuid4().hex[:6]}"
    # A model tag the image's store does not have: the replica exits at start.
    (tmp_path / "Dockerfile").write_text(
        f"FROM {classifier_image}\nENV CLASSIFIER_MODEL_TAG=no-such-model:v0\n"
    )
    run([DOCKER_CLI, "build", "-q", "-t", broken, str(tmp_path)], scale_stack.env)
    old = scale_stack.replicas()
    with ClosedLoop(scale_stack.url, uploads) as load:
        result = _rolling_update(scale_stack, broken, HEALTHY_TIMEOUT_S="120")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "did not get healthy" in result.stderr
    assert scale_stack.replicas() == old
    assert not load.failures() and load.outcomes, load.failures()[:10]
    scale_stack.wait_servers_up(len(old))


def test_rolling_replacement_with_a_new_image_fails_no_request(
    scale_stack, classifier_image, uploads, tmp_path
):
    new_image = f"{classifier_image.split(':')[0]}:rollout-{uuid.uuid4().hex[:6]}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {classifier_image}\nLABEL org.image-classifier.test-rollout={new_image}\n"
    )
    run([DOCKER_CLI, "build", "-q", "-t", new_image, str(tmp_path)], scale_stack.env)
    old = scale_stack.replicas()
    try:
        with ClosedLoop(scale_stack.url, uploads) as load:
            time.sleep(2)
            result = _rolling_update(scale_stack, new_image)
            time.sleep(2)
        assert result.returncode == 0, result.stdout + result.stderr
        new = scale_stack.replicas()
        assert not set(new) & set(old) and len(new) == len(old), (old, new)
        images = {inspect(scale_stack.env, "container", c)["Config"]["Image"] for c in new}
        assert images == {new_image}
        assert not load.failures(), load.failures()[:10]
        assert len(load.outcomes) > 50
        scale_stack.wait_servers_up(len(old))
    finally:
        scale_stack.env["CLASSIFIER_IMAGE"] = new_image  # what the replicas now run
