"""The data-parallel helpers that need no process group: who is rank 0, how the validation set
is sharded and put back together, gradient accumulation and the batch-size arithmetic."""

from __future__ import annotations

import signal

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.config import load_config
from training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    PeerStoppedError,
    broadcast_object,
    gather_evaluation,
    global_batch_size,
    optimizer_steps_per_epoch,
    raise_peer_stopped,
    rank_device,
    resolve_backend,
    restore_order,
    shard_indices,
)
from training.engine import Precision, accumulation_window, train_one_epoch
from training.parallel import sync_batchnorm


def test_context_from_torchrun_environment():
    ctx = DistributedContext.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (ctx.rank, ctx.local_rank, ctx.world_size) == (3, 1, 4)
    assert ctx.enabled and not ctx.is_main
    assert DistributedContext.from_env({}) == SINGLE_PROCESS
    assert SINGLE_PROCESS.is_main and not SINGLE_PROCESS.enabled


def test_inconsistent_context_is_refused():
    with pytest.raises(ValueError, match="inconsistent process group"):
        DistributedContext(rank=2, local_rank=0, world_size=2)


@pytest.mark.parametrize("num_samples", [0, 1, 2, 7, 10, 101])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_validation_shards_cover_every_sample_once_and_restore_in_order(num_samples, world_size):
    contexts = [DistributedContext(rank=r, world_size=world_size) for r in range(world_size)]
    shards = [list(shard_indices(num_samples, ctx=ctx)) for ctx in contexts]
    assert sorted(i for shard in shards for i in shard) == list(range(num_samples))
    samples = torch.arange(num_samples * 3, dtype=torch.float32).reshape(num_samples, 3)
    restored = restore_order([samples[shard] for shard in shards])
    assert torch.equal(restored, samples)


def test_restore_order_keeps_targets_dtype_and_shape():
    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], dtype=torch.float32)
    shards = [targets[0::2], targets[1::2]]
    assert torch.equal(restore_order(shards), targets)
    labels = torch.tensor([4, 3, 2, 1, 0])
    assert torch.equal(restore_order([labels[0::3], labels[1::3], labels[2::3]]), labels)


def test_single_process_collectives_are_identities():
    logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    got = gather_evaluation(logits=logits, targets=targets, mean_loss=0.5, ctx=SINGLE_PROCESS)
    assert got[0] is logits and got[1] is targets and got[2] == 0.5
    assert broadcast_object({"a": 1}, ctx=SINGLE_PROCESS) == {"a": 1}


def test_accumulation_windows_step_every_k_batches_and_after_the_last():
    windows = [accumulation_window(i, batches=5, grad_accum_steps=2) for i in range(5)]
    assert [w.starts for w in windows] == [True, False, True, False, True]
    assert [w.steps for w in windows] == [False, True, False, True, True]
    assert [w.size for w in windows] == [2, 2, 2, 2, 1]
    plain = [accumulation_window(i, batches=3, grad_accum_steps=1) for i in range(3)]
    assert all(w.starts and w.steps and w.size == 1 for w in plain)
    assert optimizer_steps_per_epoch(batches=5, grad_accum_steps=2) == 3
    assert optimizer_steps_per_epoch(batches=4, grad_accum_steps=1) == 4


def _train_linear(*, batch_size: int, grad_accum_steps: int) -> tuple[torch.Tensor, int]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    precision = Precision.for_device(torch.device("cpu"), amp=False)
    train_one_epoch(
        model=model,
        loader=DataLoader(data, batch_size=batch_size),
        loss_fn=torch.nn.CrossEntropyLoss(),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=precision.grad_scaler(),
        precision=precision,
        epoch=1,
        grad_accum_steps=grad_accum_steps,
    )
    return model.weight.detach().clone(), scheduler.last_epoch


def test_accumulated_micro_batches_match_one_large_batch():
    large, large_steps = _train_linear(batch_size=8, grad_accum_steps=1)
    accumulated, accumulated_steps = _train_linear(batch_size=4, grad_accum_steps=2)
    assert torch.allclose(large, accumulated, atol=1e-6)
    assert large_steps == accumulated_steps == 2  # the schedule counts optimizer steps
    small, small_steps = _train_linear(batch_size=4, grad_accum_steps=1)
    assert small_steps == 4 and not torch.allclose(small, large, atol=1e-4)


def test_batch_size_is_per_process_and_lr_is_not_scaled():
    cfg = load_config(overrides={"optim.batch_size": "16", "optim.grad_accum_steps": "4"})
    assert global_batch_size(batch_size=16, world_size=8, grad_accum_steps=4) == 512
    assert cfg.optim.lr == load_config().optim.lr
    assert "per process" in type(cfg.optim).model_fields["batch_size"].description
    with pytest.raises(ValueError, match="grad_accum_steps"):
        load_config(overrides={"optim.grad_accum_steps": "0"})


def test_backend_follows_the_device():
    assert resolve_backend(backend="auto", device=torch.device("cpu")) == "gloo"
    assert resolve_backend(backend="auto", device=torch.device("cuda", 1)) == "nccl"
    assert resolve_backend(backend="gloo", device=torch.device("cuda", 0)) == "gloo"
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        resolve_backend(backend="nccl", device=torch.device("cpu"))


def test_each_rank_takes_the_gpu_of_its_local_rank():
    ctx = DistributedContext(rank=5, local_rank=1, world_size=8)
    assert rank_device(ctx=ctx, device=torch.device("cuda")) == torch.device("cuda", 1)
    assert rank_device(ctx=ctx, device=torch.device("cpu")) == torch.device("cpu")
    assert rank_device(ctx=SINGLE_PROCESS, device=torch.device("cuda")) == torch.device("cuda")


def test_sync_batchnorm_is_refused_on_cpu():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="sync_batchnorm needs CUDA"):
        sync_batchnorm(model=model, device=torch.device("cpu"))


def test_sigterm_under_torchrun_fails_the_rank_once_and_never_interrupts_a_failure():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        try:
            raise RuntimeError("a peer's collective failed")
        except RuntimeError:
            # Marking the run FAILED is under way: the signal must not interrupt it.
            assert raise_peer_stopped(signal.SIGTERM, None) is None
        with pytest.raises(PeerStoppedError, match="another rank fails"):
            raise_peer_stopped(signal.SIGTERM, None)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
