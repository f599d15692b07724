"""A trained foramen model at inference: localise the five levels on a slice, grade the asked foramina.

`ForaminaModel.load` takes a run folder (`localizer/best.pt`, `grader/best.pt`, `calibration.json`), a folder
of such runs (their predictions are averaged: a fold ensemble), or the name of a model bundled with the
package. Everything that shapes the input (letterbox size, crop size, normalisation) is read back from the
checkpoints, never from code defaults. Input images are any 2D array covering the slice's whole field of
view (a stored 250 px JPEG or the DICOM matrix itself) plus the original `rows x cols`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import vocab
from ..errors import DataError
from ..localize.heatmap import decode_heatmaps
from .data import Frame, normalise_intensity
from .grader import GraderSpec, crop_batch
from .localizer import LocalizerSpec, heatmap_to_box
from .warp import letterbox_affine, warp, zscore

LOCALIZER = "localizer"
GRADER = "grader"
CALIBRATION = "calibration.json"
PRIOR = "prior.json"
SPLIT = "split.csv"
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"
# Test-time augmentation: crop offsets (fraction of the longer side) and zooms averaged over.
TTA_SHIFTS = ((0.0, 0.0), (0.006, 0.0), (-0.006, 0.0), (0.0, 0.006), (0.0, -0.006))
TTA_ZOOMS = (1.0, 0.92, 1.08)


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package."""
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / LOCALIZER).is_dir()) if BUNDLED_DIR.is_dir() else []


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A run folder, a folder of runs, or a bundled model's name -> its folder; DataError if none."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if (BUNDLED_DIR / str(name_or_path)).is_dir():
        return BUNDLED_DIR / str(name_or_path)
    raise DataError(f"{name_or_path}: not a run folder nor a bundled model (bundled: {', '.join(bundled_models()) or 'none'})")


def is_member(path: Path) -> bool:
    return (path / LOCALIZER / "best.pt").is_file() and (path / GRADER / "best.pt").is_file()


def _load_net(path: Path, kind: str, device):
    from ..train.checkpoint import load_model

    net, ckpt = load_model(path, device)  # one read: the checkpoint says what it is
    if ckpt.get("kind") != kind:
        raise DataError(f"{path}: a {ckpt.get('kind') or 'different'!r} checkpoint, expected {kind!r}")
    return net, ckpt


@dataclass
class Member:
    """One trained localiser + grader pair."""

    path: Path
    localizer: torch.nn.Module
    lspec: LocalizerSpec
    grader: torch.nn.Module
    gspec: GraderSpec
    temperature: float = 1.0
    train_studies: set = field(default_factory=set)

    @classmethod
    def load(cls, path: Path, device="cpu") -> Member:
        loc, lck = _load_net(path / LOCALIZER / "best.pt", "foramina-localizer", device)
        gra, gck = _load_net(path / GRADER / "best.pt", "foramina-grader", device)
        cal = path / CALIBRATION
        t = float(json.loads(cal.read_text()).get("temperature", 1.0)) if cal.is_file() else 1.0
        studies: set = set()
        split = path / SPLIT
        if split.is_file():  # read with the csv module: predicting does not import pandas
            import csv

            with open(split, newline="", encoding="utf-8") as fh:
                studies = {r["study_id"] for r in csv.DictReader(fh) if r.get("role") != "test"}
        return cls(path, loc, LocalizerSpec.from_dict(lck["spec"]), gra, GraderSpec.from_dict(gck["spec"]), t, studies)


class ForaminaModel:
    """One or more members; `localize` and `grade` average over them."""

    def __init__(self, members: list[Member], name: str, device="cpu"):
        if not members:
            raise DataError(f"{name}: holds no trained foramen model ({LOCALIZER}/best.pt + {GRADER}/best.pt)")
        self.members, self.name, self.device = members, name, torch.device(device)

    @classmethod
    def load(cls, name_or_path: str | Path, device="cpu") -> ForaminaModel:
        path = resolve_model_path(name_or_path)
        dirs = [path] if is_member(path) else sorted(p for p in path.iterdir() if p.is_dir() and is_member(p))
        name = path.name if path.parent == BUNDLED_DIR else str(path)
        return cls([Member.load(d, device) for d in dirs], name, device)

    @property
    def train_studies(self) -> set:
        return set().union(*(m.train_studies for m in self.members))

    def prior(self) -> dict[str, list[float]]:
        """Per-target class probabilities shipped with the model (prior.json), for the targets it does not grade."""
        for p in (self.members[0].path / PRIOR, self.members[0].path.parent / PRIOR):
            if p.is_file():
                return {k: [float(x) for x in v] for k, v in json.loads(p.read_text())["targets"].items()}
        return {}

    def card(self) -> str:
        p = self.members[0].path
        for cand in (p / "MODEL_CARD.md", p.parent / "MODEL_CARD.md"):
            if cand.is_file():
                return cand.read_text()
        return ""

    @torch.inference_mode()
    def localize(self, img: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """(5, 3): per level the foramen's (x, y) in `img` pixels and the mean peak height (0..1)."""
        img01 = torch.from_numpy(normalise_intensity(img))
        out = []
        for m in self.members:
            frame = Frame(rows, cols, img.shape, m.lspec.input_size)
            x = zscore(warp(img01, [letterbox_affine(frame)], m.lspec.input_size)).to(self.device)
            hm = torch.sigmoid(m.localizer(x).float())[0].cpu().numpy()
            dec = decode_heatmaps(hm)
            bx, by = heatmap_to_box(dec[:, 0]), heatmap_to_box(dec[:, 1])
            sx, sy = frame.original_to_stored(*frame.box_to_original(bx, by))
            out.append(np.stack([sx, sy, dec[:, 2]], axis=1))
        return np.median(np.stack(out), axis=0) if len(out) > 2 else np.mean(np.stack(out), axis=0)

    @torch.inference_mode()
    def localize_many(self, imgs: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
        """(N, 5, 3) for N slices of one series (one batch per member)."""
        return np.stack([self.localize(im, rows, cols) for im in imgs])

    @torch.inference_mode()
    def grade(self, img: np.ndarray, rows: int, cols: int, asks: list[tuple[str, str, float, float]],
              tta: bool = True) -> np.ndarray:
        """(N, 3) probabilities for N (condition, level, x, y) asks on one slice, x, y in `img` pixels."""
        from ..inputs import condition_vector

        if not asks:
            return np.zeros((0, vocab.N_CLASSES))
        img01 = normalise_intensity(img)
        shifts = TTA_SHIFTS if tta else ((0.0, 0.0),)
        zooms = TTA_ZOOMS if tta else (1.0,)
        views = [(s, z) for s in shifts for z in zooms]
        cond = torch.from_numpy(np.stack([condition_vector(c, lv) for c, lv, _, _ in asks]))
        probs = np.zeros((len(asks), vocab.N_CLASSES))
        for m in self.members:
            frame = Frame(rows, cols, img.shape, m.gspec.crop_px)
            side = max(rows, cols)
            centres, zs = [], []
            for _, _, x, y in asks:
                u, v = frame.stored_to_original(x, y)
                for (du, dv), z in views:
                    centres.append((float(u) + du * side, float(v) + dv * side))
                    zs.append(z)
            crops = crop_batch(img01, frame, m.gspec, centres, zooms=np.asarray(zs)).to(self.device)
            logits = m.grader(crops, cond.repeat_interleave(len(views), 0).to(self.device)).float().cpu()
            p = torch.softmax(logits / m.temperature, dim=1).numpy().reshape(len(asks), len(views), -1)
            probs += p.mean(axis=1)
        return probs / len(self.members)
