"""The soak test in its shortened form (the full one: `make soak`, 10 minutes)."""

from __future__ import annotations

from benchmarks.soak import SoakLimits, run_soak
from benchmarks.workload import make_uploads

from .conftest import bentoml_server

DURATION_S = 60.0
WINDOW_S = 15.0


def test_sustained_load_has_no_errors_no_memory_growth_and_stable_latency(
    single_label_bento, session_dir
):
    # Photo-sized JPEGs (500x375, 1024x768) at 8 in flight: below max_concurrency (64).
    uploads = make_uploads(per_size=2)
    with bentoml_server(str(single_label_bento.tag), session_dir / "serve-soak.log") as url:
        report = run_soak(
            f"{url}/classify", uploads, concurrency=8, duration_s=DURATION_S, window_s=WINDOW_S
        )
    assert len(report.windows) == 4
    assert all(window.ok > 50 for window in report.windows), report.windows
    # 15 s windows on a 2-core machine shared by client and server: a wider drift bound than
    # the full soak's 1.5x.
    assert report.problems(SoakLimits(max_p50_drift=2.0)) == [], report.as_dict()
