"""Which torch device a command runs on: one rule for training, evaluation, prediction and serving."""

from __future__ import annotations

from .errors import DataError


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
