"""The GPU-side policies with their CPU fallbacks: which GPU a served worker takes, and the
compiled forward's padding to warmed batch sizes (checked eagerly here: CUDA graphs need a GPU)."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from models import ModelSpec, Predictor, PreprocessConfig, Task, create_classifier, save_artifact
from models.compiling import compile_for_device, pad_batch, padded_batch_size
from models.device import WorkerSlot, choose_device, gpu_for_worker
from serving.placement import torch_threads_per_worker, usable_cores, worker_slot
from serving.runtime import build_runtime
from serving.settings import ServingSettings


def _devices(workers: int, *, per_gpu: int, device_count: int) -> list[int]:
    return [
        gpu_for_worker(worker=WorkerSlot(index=i, per_gpu=per_gpu), device_count=device_count)
        for i in range(1, workers + 1)
    ]


def test_one_worker_per_gpu_on_a_four_gpu_host():
    assert _devices(4, per_gpu=1, device_count=4) == [0, 1, 2, 3]


def test_two_workers_per_gpu_share_consecutively():
    assert _devices(8, per_gpu=2, device_count=4) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_more_workers_than_planned_wrap_round_and_one_gpu_takes_all():
    assert _devices(6, per_gpu=1, device_count=4) == [0, 1, 2, 3, 0, 1]
    assert _devices(3, per_gpu=1, device_count=1) == [0, 0, 0]


def test_worker_slots_and_device_counts_are_checked():
    with pytest.raises(ValueError, match="start at 1"):
        WorkerSlot(index=0)
    with pytest.raises(ValueError, match="start at 1"):
        WorkerSlot(per_gpu=0)
    with pytest.raises(ValueError, match="device_count"):
        gpu_for_worker(worker=WorkerSlot(), device_count=0)


@pytest.mark.parametrize(
    ("config", "index", "expected"),
    [
        ({}, None, WorkerSlot(1, 1)),  # in-process or the main process: worker 1
        ({"workers": 4, "resources": {"gpu": 4}}, 3, WorkerSlot(3, 1)),
        ({"workers": 8, "resources": {"gpu": 4}}, 8, WorkerSlot(8, 2)),
        ({"workers": 2, "resources": {"gpu": 1}}, 2, WorkerSlot(2, 2)),
        ({"workers": 3}, 2, WorkerSlot(2, 1)),  # no resources.gpu: round robin
        ({"workers": "cpu_count", "resources": {"gpu": 1}}, 5, WorkerSlot(5, 1)),
    ],
)
def test_worker_slot_reads_configuration_yaml(config, index, expected):
    assert worker_slot(config, worker_index=index) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback")
def test_without_cuda_the_worker_index_does_not_matter():
    for index in (1, 2, 7):
        plan = choose_device("auto", "float32", worker=WorkerSlot(index=index, per_gpu=2))
        assert plan.device == torch.device("cpu")


def test_padding_picks_the_next_warmed_size():
    shapes = (1, 2, 4, 8, 12)
    assert [padded_batch_size(n, shapes=shapes) for n in (1, 3, 5, 9, 12)] == [1, 4, 8, 12, 12]
    assert padded_batch_size(13, shapes=shapes) == 13  # beyond every warmed size: as it is
    assert padded_batch_size(5, shapes=()) == 5
    batch = torch.ones(3, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    padded = pad_batch(batch, size=8, memory_format=torch.channels_last)
    assert padded.shape == (8, 3, 4, 4) and padded[3:].abs().sum() == 0
    assert padded.is_contiguous(memory_format=torch.channels_last)
    assert pad_batch(batch, size=2, memory_format=torch.channels_last) is batch


def _tiny_predictor(tmp_path) -> Predictor:
    torch.manual_seed(0)
    model = create_classifier("test_resnet", 3)
    spec = ModelSpec(
        architecture="test_resnet",
        task=Task.SINGLE_LABEL,
        labels=("a", "b", "c"),
        preprocessing=PreprocessConfig(input_size=(3, 32, 32)),
    )
    return Predictor.from_artifact(save_artifact(tmp_path, model, spec), "cpu", "float32")


def test_a_padded_batch_scores_like_the_unpadded_one(tmp_path):
    predictor = _tiny_predictor(tmp_path)
    images = [Image.new("RGB", (40 + 7 * i, 36), (30 * i, 90, 200 - 20 * i)) for i in range(5)]
    batch = predictor.preprocess(images)
    plain = predictor.scores(batch)
    predictor.padded_sizes = (1, 2, 4, 8)  # 5 images run as a batch of 8
    padded = predictor.scores(batch)
    assert padded.shape == plain.shape == (5, 3)
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-4)


def test_compiling_on_a_cpu_warns_and_runs_eagerly(tmp_path, caplog):
    model = torch.nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING, logger="models.compiling"):
        assert compile_for_device(model, mode="reduce-overhead", device=torch.device("cpu")) is None
    assert "applies on CUDA only" in caplog.text
    assert compile_for_device(model, mode="off", device=torch.device("cuda")) is None
    with pytest.raises(ValueError, match="compile mode"):
        compile_for_device(model, mode="fast", device=torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback")
def test_the_compile_setting_on_a_cpu_changes_nothing(tmp_path):
    settings = ServingSettings.from_env({"CLASSIFIER_COMPILE_MODE": "reduce-overhead"})
    assert settings.compile_mode == "reduce-overhead"
    predictor = _tiny_predictor(tmp_path)
    compiled = Predictor(
        predictor.model, predictor.spec, predictor.plan, compile_mode=settings.compile_mode
    )
    compiled.warmup(batch_sizes=(1, 2, 4))
    assert compiled.padded_sizes == ()  # eager: no padding, every size runs as it is
    with pytest.raises(ValueError, match="CLASSIFIER_COMPILE_MODE"):
        ServingSettings.from_env({"CLASSIFIER_COMPILE_MODE": "fast"})


def test_a_batch_beyond_every_warmed_size_runs_unpadded(tmp_path):
    predictor = _tiny_predictor(tmp_path)
    batch = torch.rand(6, 3, 32, 32)
    plain = predictor.scores(batch)
    predictor.padded_sizes = (1, 2, 4)
    torch.testing.assert_close(predictor.scores(batch), plain)


@pytest.mark.parametrize(
    ("config", "cores", "expected"),
    [
        ({}, 2, 2),  # one worker: every core
        ({"workers": 2}, 2, 1),
        ({"workers": 4}, 16, 4),
        ({"workers": 3}, 2, 1),  # never below one
        ({"workers": "cpu_count"}, 16, 1),  # one worker per core
    ],
)
def test_each_worker_gets_its_share_of_the_cores(config, cores, expected):
    assert torch_threads_per_worker(config, usable_cores=cores) == expected


def test_the_runtime_sets_the_torch_threads_on_its_torch_thread(tmp_path):
    directory = _tiny_predictor(tmp_path).spec and tmp_path
    before = torch.get_num_threads()
    runtime = build_runtime(ServingSettings(), directory, warmup=False, torch_threads=1)
    try:
        assert runtime.torch_thread.call(torch.get_num_threads) == 1
    finally:
        runtime.close()
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, --cpus 1.5: rounded up
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one thread
        ({"cpu.max": "max 100000\n"}, "all"),  # no quota
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "all"),
        ({"cpu.max": "garbage\n"}, "all"),  # unreadable: the affinity alone
        ({}, "all"),  # no cgroup files (not in a container)
    ],
)
def test_usable_cores_is_capped_by_the_container_cpu_quota(tmp_path, monkeypatch, files, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cores(cgroup_root=tmp_path) == (8 if expected == "all" else expected)


def test_without_triton_the_compile_modes_are_refused_saying_why(monkeypatch):
    """The serving image leaves triton out: a compile mode fails at start-up, not mid-request."""
    import importlib.util

    from models import compiling

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "triton" else find_spec(name)
    )
    assert compiling.compile_unavailable_reason("off") is None
    with pytest.raises(RuntimeError, match="needs triton"):
        compile_for_device(torch.nn.Linear(2, 2), mode="max-autotune", device=torch.device("cpu"))
    with pytest.raises(ValueError, match="CLASSIFIER_COMPILE_MODE: .*needs triton.*'off'"):
        ServingSettings.from_env({"CLASSIFIER_COMPILE_MODE": "reduce-overhead"})
    assert ServingSettings.from_env({"CLASSIFIER_COMPILE_MODE": "off"}).compile_mode == "off"
