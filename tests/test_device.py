"""Device rules that need no GPU: the automatic number of data loader processes and batch readers."""

from __future__ import annotations

import os

import pytest
import torch

from spinegrade.batch import default_readers
from spinegrade.device import (
    MAX_AUTO_LOADER_WORKERS,
    full_float32,
    inference_device,
    loader_workers,
    spare_cores,
)


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int, ranks: int | None = None):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(n)), raising=False)
        if ranks is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    return set_cores


def test_an_explicit_number_of_loader_workers_is_kept_on_any_device():
    assert loader_workers(3, torch.device("cpu")) == 3
    assert loader_workers(0, torch.device("cuda")) == 0


def test_automatic_loader_workers_none_on_cpu_spare_cores_on_a_gpu(cores):
    cores(16)
    assert loader_workers(-1, torch.device("cpu")) == 0
    assert loader_workers(-1, torch.device("cuda")) == MAX_AUTO_LOADER_WORKERS == 8
    cores(6)
    assert loader_workers(-1, torch.device("cuda")) == 5
    cores(16, ranks=8)  # torchrun: 8 ranks share 16 cores, one runs each rank
    assert loader_workers(-1, torch.device("cuda", 3)) == 1
    cores(2)
    assert loader_workers(-1, torch.device("cuda")) == 1
    cores(1)
    assert loader_workers(-1, torch.device("cuda")) == 0


def test_batch_readers_use_the_same_share_of_cores(cores):
    cores(2)
    assert default_readers(1) == 0 and default_readers(5) == 1
    cores(32, ranks=2)
    assert spare_cores(8) == 8 and default_readers(100) == 8
    cores(4, ranks=4)
    assert default_readers(10) == 1  # at least one reader when there is anything to overlap


def test_the_training_loader_gets_the_resolved_number(cores):
    from spinegrade.train.config import LoopConfig
    from spinegrade.train.engine import _loader

    assert LoopConfig().workers == -1
    data = torch.utils.data.TensorDataset(torch.zeros(4, 1))
    cores(16)
    assert _loader(data, 2, LoopConfig().workers, torch.device("cpu")).num_workers == 0
    assert _loader(data, 2, 2, torch.device("cpu")).num_workers == 2


@pytest.fixture
def tf32_flags():
    """torch's two TF32 switches, restored after the test."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_full_float32_turns_tf32_off_on_a_gpu_only(tf32_flags):
    import torch

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    full_float32(torch.device("cpu"))
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert inference_device("cpu") == torch.device("cpu")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    full_float32(torch.device("cuda", 1))
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_training_asks_for_float32_when_mixed_precision_is_off(tf32_flags, monkeypatch, tmp_path):
    """fit() calls full_float32 with its device whenever mixed precision is off, as it always is on a CPU."""
    from spinegrade.train import engine
    from spinegrade.train.config import LoopConfig
    from spinegrade.train.distributed import setup

    seen = []
    monkeypatch.setattr(engine, "full_float32", seen.append)
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.randn(1, 8, 8, generator=g), "cond": torch.zeros(0), "label": torch.tensor(i % 3)}
             for i in range(12)]
    task = engine.ClassificationTask()
    task.forward = lambda m, b: m(b["image"])
    for amp in (False, True):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        engine.fit(model, items, items[:6], task, LoopConfig(epochs=1, batch_size=4, amp=amp), tmp_path / str(amp),
                   setup("cpu"), {"model": {}}, log=lambda s: None)
    assert seen == [torch.device("cpu")] * 2  # a CPU never mixes precision, so both runs ask
