"""Self-describing checkpoints: everything needed to rebuild and use a network, loadable with weights_only.

A checkpoint is a dict of plain data and tensors (so `torch.load(path, weights_only=True)` reads it):
`format`, `model` ({name, in_channels, num_outputs, kwargs} for `create_model`), `state_dict`, `versions`,
`epoch`, `metrics`, plus what the trainer describes (label schema, preprocessing, class prior, config).
`last.pt` also holds the optimiser, scheduler, gradient-scaler and early-stopping state for `--resume`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..files import atomic_path
from ..errors import DataError

FORMAT = "spinegrade.checkpoint/1"
BEST = "best.pt"
LAST = "last.pt"


def versions() -> dict[str, str]:
    """Versions of the libraries that shaped a checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        monai = version("monai")  # from the metadata: importing MONAI takes seconds
    except PackageNotFoundError:
        monai = "not installed"
    return {"spinegrade": str(__version__), "torch": str(torch.__version__), "monai": monai}


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write atomically: an interrupted save leaves the previous checkpoint intact."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    return path


def checkpoint_path(run_or_ckpt: str | Path, which: str = BEST) -> Path:
    """The checkpoint file itself, or `which` (best.pt / last.pt) inside a run folder."""
    p = Path(run_or_ckpt)
    return p / which if p.is_dir() else p


def load_checkpoint(run_or_ckpt: str | Path, which: str = BEST) -> dict:
    """Read a checkpoint on the CPU with `weights_only=True`; DataError if it is missing or not ours."""
    path = checkpoint_path(run_or_ckpt, which)
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint there (train a run first, or name the .pt file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise DataError(f"{path}: not a readable checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"{path}: not a spinegrade checkpoint (format {FORMAT})")
    return ckpt


def load_model(run_or_ckpt: str | Path, device: str | torch.device = "cpu", which: str = BEST):
    """Rebuild a network from a run folder or checkpoint file; returns (model in eval mode, checkpoint dict).

    The dict (without the weights) tells how to feed the model: `preprocessing`, `labels`, `model`.
    """
    from ..models import create_model

    ckpt = load_checkpoint(run_or_ckpt, which)
    spec = ckpt["model"]
    model = create_model(spec["name"], spec["in_channels"], spec["num_outputs"], **spec.get("kwargs", {}))
    model.load_state_dict(ckpt.pop("state_dict"))
    return model.to(device).eval(), ckpt
