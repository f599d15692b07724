"""Which torch device a command runs on: one rule for training, evaluation, prediction and serving."""

from __future__ import annotations

import os

from .errors import DataError

# The most data loader processes the automatic setting starts per training process on a GPU. With 4, on an
# H200 with 16 cores, the loader took 64-75 % of each spinal grader step (3,000 crops/s against the network's
# 17,000; bench/gpu_check.sh's scale step), so 8.
MAX_AUTO_LOADER_WORKERS = 8


def resolve_device(spec: str, local_rank: int = 0):
    """'auto' -> this process's GPU if there is one, else CPU; 'cuda' -> the process's GPU; 'cuda:N' as given."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DataError(f"--device {spec}: no CUDA GPU is available to this torch build")
        dev = torch.device(spec)
        return torch.device("cuda", local_rank if dev.index is None else dev.index)
    raise DataError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


def full_float32(device) -> None:
    """On a GPU, do every float32 convolution and matrix product in float32 (no TF32), in this process.

    Since Ampere, PyTorch lets cuDNN's convolutions use TF32 (10-bit mantissa) by default: on an H200 the grades
    of 14 studies then differed from the CPU's by up to 0.017 in probability; without TF32, by at most 3.4e-5
    (bench/gpu_check.sh). Prediction, evaluation and `train --no-amp` call this, so that a study's grades do
    not depend on the device; mixed-precision training does not.
    """
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def inference_device(spec: str, local_rank: int = 0):
    """resolve_device for prediction and evaluation: on a GPU, float32 throughout (full_float32)."""
    dev = resolve_device(spec, local_rank)
    full_float32(dev)
    return dev


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or a batch job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def spare_cores(cap: int) -> int:
    """This process's share of the machine's cores (those it may run on, divided among the ranks torchrun
    started on this machine) less the one that runs it, between 0 and `cap`."""
    per_rank = usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(cap, per_rank - 1))


def loader_workers(requested: int, device) -> int:
    """Data loader processes for training: `requested` when >= 0; automatic (-1): none on a CPU, where the
    network already uses every core, else the spare cores up to MAX_AUTO_LOADER_WORKERS, so that a GPU is not
    left waiting for crops (on a CPU step without workers the loader took 58-62 % of the time: README, Scale)."""
    if requested is not None and requested >= 0:
        return int(requested)
    return spare_cores(MAX_AUTO_LOADER_WORKERS) if getattr(device, "type", str(device)) == "cuda" else 0
