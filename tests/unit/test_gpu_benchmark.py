"""The prepared GPU check (``python -m benchmarks gpu``), smoke-run in-process on the CPU, and
its promise to a bare GPU machine: nothing beyond torch, torchvision, timm, PIL and numpy."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

# gpu_measure imports torch and timm: here, at collection, because torch's first import runs
# ldconfig, a process the unit tier refuses inside a test.
from benchmarks import gpu, gpu_compile, gpu_measure, gpu_report
from benchmarks.__main__ import build_parser

from ..conftest import PROJECT_ROOT
from .test_architecture import imported_modules

ALLOWED_THIRD_PARTY = {"torch", "torchvision", "timm", "PIL", "numpy"}
PROJECT_PACKAGES = {"benchmarks", "training", "models", "serving", "registry", "devtools"}


def _source(module: str) -> Path:
    path = PROJECT_ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _closure(module: str) -> tuple[set[str], set[str]]:
    """The project modules ``module`` loads (with their packages), and every outside module
    they import anywhere in their source (functions included)."""
    seen, outside, todo = set(), set(), [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for package in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if package in seen or not _source(package).exists():
                continue
            seen.add(package)
            for imported in imported_modules(_source(package)):
                if imported.split(".")[0] in PROJECT_PACKAGES:
                    todo.append(imported)
                else:
                    outside.add(imported.split(".")[0])
    return seen, outside


def test_the_gpu_check_imports_nothing_beyond_torch_timm_pil_numpy():
    project, outside = _closure("benchmarks.gpu")
    assert {"benchmarks.gpu_measure", "benchmarks.gpu_agreement", "training.synthetic"} <= project
    assert not any(m.startswith(("models", "serving", "registry")) for m in project), project
    extra = outside - ALLOWED_THIRD_PARTY - set(sys.stdlib_module_names)
    assert not extra, f"benchmarks.gpu needs {sorted(extra)} (pydantic/bentoml/mlflow?)"


def test_the_cli_entry_imports_only_the_standard_library_at_module_level():
    for name in ("__init__.py", "__main__.py"):
        path = PROJECT_ROOT / "benchmarks" / name
        body = ast.parse(path.read_text()).body
        top = [n for n in body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names} | {
            n.module for n in top if isinstance(n, ast.ImportFrom) and n.level == 0
        }
        assert all(name.split(".")[0] in sys.stdlib_module_names for name in names), (path, names)
        assert not [n for n in top if isinstance(n, ast.ImportFrom) and n.level], path


def test_gpu_is_a_subcommand_of_python_m_benchmarks():
    args = build_parser().parse_args(["gpu", "--device", "cpu", "--quick", "--models", "a,b"])
    assert (args.command, args.device, args.quick, args.models) == ("gpu", "cpu", True, ["a", "b"])
    assert build_parser().parse_args(["soak"]).command == "soak"


def test_budgets_nest_and_a_measurement_stops_at_its_deadline():
    parent = gpu_measure.Budget.of(0.0)
    child = gpu_measure.Budget.of(60.0, parent)
    assert child.deadline == parent.deadline and child.expired()
    calls = []
    timing = gpu_measure.Timing(warmup_s=60.0, measure_s=60.0)
    seconds = gpu_measure.timed(
        lambda: calls.append(1), gpu_measure.torch.device("cpu"), timing, child
    )
    assert len(seconds) == 1 and len(calls) == 2  # one warm-up call and one timed, then stop
    assert gpu_measure.summarize([0.5, 0.5], 4) == {
        "images_per_s": 8.0, "ms_per_batch_p50": 500.0, "calls": 2
    }  # fmt: skip


def _numbers(entry: dict) -> bool:
    return entry["images_per_s"] > 0 and entry["ms_per_batch_p50"] > 0


def test_a_quick_cpu_run_writes_every_section_with_numbers(tmp_path, capsys, monkeypatch):
    # report.machine() asks platform for the processor, which runs `uname -p`: not in this tier.
    machine = {"cpu": "test cpu", "cores": 2, "memory_gib": 8, "gpu": None, "python": "3.11",
               "os": "linux", "torch_threads": 2, "versions": {"torch": "2"}}  # fmt: skip
    monkeypatch.setattr(gpu.report, "machine", lambda: machine)
    out = tmp_path / "gpu"
    code = gpu.main(["--device", "cpu", "--quick", "--models", "test_resnet", "--out", str(out)])
    assert code == 0
    [json_path] = out.glob("gpu-*.json")
    results = json.loads(json_path.read_text())
    assert results["errors"] == [] and results["device"] == "cpu"

    [model] = results["ceiling"]
    assert model["architecture"] == "test_resnet"
    assert {(p["dtype"], p["batch_size"]) for p in model["points"]} == {
        (d, b) for d in ("fp32", "bf16", "fp16") for b in (1, 4)
    }
    assert all(_numbers(p["forward"]) and _numbers(p["end_to_end"]) for p in model["points"])
    assert set(model["recommended_max_batch_size"]) == {"fp32", "bf16", "fp16"}
    [compiled] = results["compiled"]
    assert "need a GPU" in compiled["skipped"]

    sizes = results["decode"]["sizes"]
    assert set(sizes) == {"500x375", "1024x768"}
    for row in sizes.values():
        assert _numbers(row["pil_1_thread"]) and _numbers(row["pil_threads"])
        assert "needs a GPU" in row["nvjpeg"]["skipped"]

    [agreement] = results["agreement"]
    assert agreement["training"]["steps"] >= 1
    assert set(agreement["variants"]) == {"fp32 PIL", "bf16 PIL", "fp16 PIL"}
    for variant in agreement["variants"].values():
        assert 0 <= variant["top1_agreement"] <= 1 and 0 <= variant["accuracy"] <= 1
    assert agreement["variants"]["fp32 PIL"]["top1_agreement"] == 1.0

    [md_path] = out.glob("gpu-*.md")
    text = md_path.read_text()
    assert "Device: **cpu**" in text
    assert "nvjpeg (torchvision.io.decode_jpeg on CUDA) needs a GPU" in text
    assert "Recommended `CLASSIFIER_MAX_BATCH_SIZE`" in text
    assert "CUDA graphs (reduce-overhead) need a GPU" in text
    assert "| test_resnet | " in text.split("## Agree")[1]  # the agreement table's rows
    for heading in ("## Ceiling by batch size", "### test_resnet", "## JPEG decode", "## Agree"):
        assert heading in text
    assert text in capsys.readouterr().out


def _point(dtype: str, batch_size: int, images_per_s: float) -> dict:
    return {"dtype": dtype, "batch_size": batch_size, "forward": {"images_per_s": images_per_s}}


def test_the_recommended_batch_is_the_smallest_within_95_percent_of_the_best():
    model = {"points": [
        _point("bf16", 1, 300.0), _point("bf16", 32, 2900.0), _point("bf16", 64, 3000.0),
        _point("bf16", 128, 2990.0), _point("fp16", 1, 100.0),
        {"dtype": "fp16", "batch_size": 8, "skipped": "time budget"},
        {"dtype": "fp32", "batch_size": 1, "error": "out of memory"},
    ]}  # fmt: skip
    chosen = gpu_report.recommended_batch_sizes(model)
    assert chosen["bf16"] == {
        "batch_size": 32, "images_per_s": 2900.0, "best_batch_size": 64, "best_images_per_s": 3000.0
    }  # fmt: skip
    assert chosen["fp16"]["batch_size"] == 1 and "fp32" not in chosen


def test_the_compiled_measurement_and_its_table(monkeypatch):
    # The compiled module is the eager one here: the measuring code runs, CUDA graphs need a GPU.
    model = gpu_measure.torch.nn.Conv2d(3, 4, 3)
    point = {"batch_size": 2}
    budget = gpu_measure.Budget.of(30.0)
    timing = gpu_measure.Timing(warmup_s=0.0, measure_s=0.01)
    cpu = gpu_measure.torch.device("cpu")
    gpu_compile._measure(
        model, model, point, device=cpu, dtype="fp32", input_size=(3, 8, 8), timing=timing,
        budget=budget,
    )  # fmt: skip
    assert _numbers(point["eager"]) and _numbers(point["compiled"])
    assert point["speedup"] > 0 and point["compile_s"] >= 0
    results = {
        "settings": {"compiled_s": 90.0},
        "compiled": [
            {"architecture": "m", "dtype": "bf16", "points": [point, {"batch_size": 32,
             "skipped": "time budget"}], "note": "compile failed: x"},
        ],
    }  # fmt: skip
    text = "\n".join(gpu_report._compiled(results))
    assert "| m | bf16 | 2 |" in text and "| m | bf16 | 32 | skipped |" in text
    assert "- m: compile failed: x" in text and "90.0 s budget" in text
