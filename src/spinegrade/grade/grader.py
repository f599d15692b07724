"""Stage 2 at inference: grade every condition at every level from crops around the localiser's points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import vocab
from ..results import Finding, Point
from .data import CropDataset, inference_items
from .spec import CropSpec

GRADER_DIR = "grader"


class Grader:
    """The family models of a run (any that were trained); families without one answer their prior."""

    def __init__(self, run_dir: Path, device: str | torch.device = "cpu"):
        from ..train.checkpoint import load_model

        self.device = torch.device(device)
        self.models: dict[str, tuple[torch.nn.Module, dict]] = {}
        for fam in vocab.FAMILIES:
            p = Path(run_dir) / GRADER_DIR / fam / "best.pt"
            if p.exists():
                self.models[fam] = load_model(p, self.device)

    def prior(self, family: str) -> list[float]:
        """The class prior of a family's training rows (uniform where no grader was trained)."""
        if family in self.models:
            return list(self.models[family][1]["prior"]["class_prior"])
        return [1 / 3] * 3

    def crop(self, family: str) -> CropSpec:
        """The crop this family's grader was trained on, as its checkpoint records it."""
        return CropSpec(**self.models[family][1]["preprocessing"]["crop"])

    def grade(self, study, points: list[Point]) -> list[Finding]:
        """25 findings; a (condition, level) without a point (series missing, level not found) gets the prior."""
        probs: dict[tuple[str, str], list[float]] = {}
        for fam, (model, _) in self.models.items():
            items = inference_items(study, points, fam)
            if not items:
                continue
            ds = CropDataset(items, fam, self.crop(fam))
            batch = [ds[i] for i in range(len(ds))]
            with torch.inference_mode():
                x = torch.stack([b["image"] for b in batch]).to(self.device)
                c = torch.stack([b["cond"] for b in batch]).to(self.device)
                p = torch.softmax(model(x, c).float(), dim=1).cpu().numpy().astype(np.float64)
            for it, row in zip(items, p):
                probs[(it.condition, it.level)] = (row / row.sum()).tolist()
        out = []
        for cond in vocab.CONDITIONS:
            fam = vocab.CONDITION_BY_KEY[cond].family
            for lv in vocab.LEVELS:
                if (cond, lv) in probs:
                    out.append(Finding(cond, lv, probs[(cond, lv)], "model"))
                else:
                    out.append(Finding(cond, lv, self.prior(fam), "prior"))
        return out
