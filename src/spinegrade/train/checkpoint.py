"""Self-describing checkpoints: everything needed to rebuild and use a network, loadable with weights_only.

A checkpoint is a dict of plain data and tensors (so `torch.load(path, weights_only=True)` reads it), one
schema for every kind of model:
- `format` ("spinegrade.checkpoint") and `version` (the schema below; older versions are upgraded on load,
  newer ones refused with a message);
- `kind`: what the network does (`slice-grader`, `grader`, `heatmap`, `foramina-localizer`, `foramina-grader`);
- `model`: {name, in_channels, num_outputs, kwargs} for `models.create_model` (every kind);
- `preprocessing`: how to make its input (crop, input size, channels, intensity scaling);
- `config`: the run's whole configuration (its `kind` says which: a slice-grader TrainConfig or the study
  pipeline's plan), so the checkpoint alone says how it was trained;
- graders: `labels` (`label_schema()`) and `prior` (`prior_record()`);
- `state_dict`, `versions`, `epoch`, `metrics`; `last.pt` also holds the optimiser, scheduler,
  gradient-scaler and early-stopping state for `--resume`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import vocab
from ..errors import DataError
from ..files import atomic_path

FORMAT = "spinegrade.checkpoint"
VERSION = 2
_FORMAT_V1 = "spinegrade.checkpoint/1"  # version 1 named its version in the format string
KINDS = ("slice-grader", "grader", "heatmap", "foramina-localizer", "foramina-grader")
BEST = "best.pt"
LAST = "last.pt"


def label_schema() -> dict:
    """What a grader's outputs and condition input mean; the same for every grader checkpoint."""
    from ..inputs import COND_LAYOUT

    return {"classes": list(vocab.SEVERITY_KEYS), "severities": list(vocab.SEVERITIES),
            "class_weights": list(vocab.SEVERITY_WEIGHTS), "conditions": list(vocab.CONDITIONS),
            "levels": list(vocab.LEVELS), "cond_layout": list(COND_LAYOUT)}


def prior_record(labels) -> dict:
    """A grader's training prior: class counts, the class prior and the metric-weighted prior."""
    import numpy as np

    from ..metric import prior_probs

    y = np.asarray(labels, dtype=np.int64)
    return {"class_counts": np.bincount(y, minlength=vocab.N_CLASSES).tolist(),
            "class_prior": prior_probs(y).tolist(), "weighted_prior": prior_probs(y, weighted=True).tolist()}


def _upgrade_v1(ckpt: dict) -> dict:
    """Version 1 named the kind `task` (slice graders) or `kind` and kept a study grader's prior as a list."""
    ckpt = dict(ckpt)
    if "task" in ckpt:
        ckpt["kind"] = ckpt.pop("task")
    if isinstance(ckpt.get("prior"), list):
        ckpt["prior"] = {"class_prior": ckpt["prior"]}
    ckpt["format"], ckpt["version"] = FORMAT, VERSION
    return ckpt


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
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
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
    if isinstance(ckpt, dict) and ckpt.get("format") == _FORMAT_V1:
        return _upgrade_v1(ckpt)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"{path}: not a spinegrade checkpoint (format {FORMAT})")
    v = ckpt.get("version")
    if not isinstance(v, int) or not 1 <= v <= VERSION:
        raise DataError(f"{path}: checkpoint schema version {v!r}; this spinegrade {_own_version()} reads "
                        f"versions 1 to {VERSION} (update spinegrade to use this run)")
    return ckpt


def _own_version() -> str:
    from .. import __version__

    return str(__version__)


def load_model(run_or_ckpt: str | Path, device: str | torch.device = "cpu", which: str = BEST):
    """Rebuild a network from a run folder or checkpoint file; returns (model in eval mode, checkpoint dict).

    Any kind (grader or heatmap network): the model spec names a registered model. The dict (without the
    weights) tells how to feed the model: `preprocessing`, `labels`, `model`.
    """
    from ..models import create_model

    ckpt = load_checkpoint(run_or_ckpt, which)
    spec = ckpt["model"]
    model = create_model(spec["name"], spec["in_channels"], spec["num_outputs"], **spec.get("kwargs", {}))
    model.load_state_dict(ckpt.pop("state_dict"))
    return model.to(device).eval(), ckpt
