"""The benchmark harness's own logic (the harness itself runs with `make benchmark`)."""

import asyncio
import threading

import pytest

from benchmarks import report
from benchmarks.loadgen import check_loopback
from benchmarks.targets import evaluate
from benchmarks.workload import make_uploads
from serving.torch_thread import TorchThread


def _entry(ours_at_32: float, errors: dict | None = None) -> dict:
    def points(rps_by_c, errors=None):
        return [
            {"concurrency": c, "throughput_rps": rps, "p50_ms": 50.0, "p90_ms": 60.0,
             "p99_ms": 70.0, "errors": errors or {}, "ratio_to_ceiling": None}
            for c, rps in rps_by_c.items()
        ]  # fmt: skip

    return {
        "architecture": "resnet50",
        "plan": "cpu",
        # The sweep at the start; the servers are judged against the one measured next to them.
        "ceiling": {"ceiling_images_per_s": 40.0, "best_batch_size": 8,
                    "images_per_s_by_batch": {"8": 40.0}, "single_image_ms_p50": 30.0},
        "servers": [
            {"name": "bentoml", "ready_s": 7.0, "points": points({1: 18, 32: ours_at_32}, errors),
             "ceiling": {"ceiling_images_per_s": 30.0, "single_image_ms_p50": 46.0}},
            {"name": "fastapi-naive", "ready_s": 3.0, "points": points({1: 12, 32: 13})},
            {"name": "litserve", "ready_s": 5.0, "points": points({1: 12, 32: 14})},
        ],
    }  # fmt: skip


def test_targets_are_judged_against_the_adjacent_ceiling_and_the_peers():
    met = {t["target"]: t["met"] for t in evaluate(_entry(28.0))}
    assert all(met.values()), met
    missed = {t["target"]: t["met"] for t in evaluate(_entry(20.0, {"503": 2, "429": 1}))}
    assert not missed["saturation throughput >= 0.9 x ceiling"]
    assert not missed[">= 2.0x naive FastAPI at C=32"]
    assert not missed["no 5xx or connection errors at any C (default configuration)"]
    dropped = _entry(28.0)
    dropped["servers"][0]["points"][0]["unmeasured_errors"] = {"ServerDisconnectedError": 1}
    last = evaluate(dropped)[-1]
    assert last["met"] is False and "ServerDisconnectedError" in last["measured"]


def test_markdown_report_names_the_command_machine_and_every_point():
    results = {
        "started_at": "2026-01-01T00:00:00Z",
        "command": "python -m benchmarks run",
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 8, "gpu": None, "python": "3.11",
                    "versions": {"torch": "2"}},
        "settings": {"duration_s": 15, "warmup_s": 4, "images": "16 JPEGs"},
        "servers": {"bentoml": "ours"},
        "models": [{**_entry(28.0), "targets": evaluate(_entry(28.0))}],
    }  # fmt: skip
    text = report.markdown(results)
    assert "python -m benchmarks run" in text and "2 cores" in text
    assert text.count("| bentoml |") == 2 and "| litserve | 32 |" in text


def test_load_generator_refuses_other_hosts():
    check_loopback("http://127.0.0.1:3000/classify")
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("http://example.com/classify")


def test_uploads_are_realistic_jpegs_in_multipart_bodies():
    uploads = make_uploads(per_size=2)
    assert [(u.width, u.height) for u in uploads[:2]] == [(500, 375), (1024, 768)]
    assert all(u.jpeg[:2] == b"\xff\xd8" and u.jpeg in u.body for u in uploads)
    assert 20_000 < len(uploads[0].jpeg) < len(uploads[1].jpeg) < 500_000


def test_torch_thread_runs_everything_on_one_thread():
    runner = TorchThread()
    first = runner.call(threading.get_ident)
    assert first != threading.get_ident()
    assert asyncio.run(runner.run(threading.get_ident)) == first
    runner.close()
