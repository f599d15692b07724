"""Stage 2 at inference: grade every condition at every level from crops around the localiser's points."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import vocab
from ..inputs import condition_vector
from ..results import Finding, Point
from ..runtime import Runtime, has_network, runtime, softmax
from .data import CropDataset, inference_items
from .spec import CropSpec

GRADER_DIR = "grader"


class Grader:
    """The family models of a run (any that were trained); families without one answer their prior."""

    def __init__(self, run_dir: Path, device: str | Runtime = "cpu"):
        self.runtime = rt = runtime(device)
        self.models: dict[str, tuple] = {}  # family -> (network: numpy in, numpy out; its checkpoint's description)
        for fam in vocab.FAMILIES:
            p = Path(run_dir) / GRADER_DIR / fam / "best.pt"
            if has_network(p):
                self.models[fam] = rt.load(p)

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
        return self.grade_many([(study, points)])[0]

    def grade_many(self, cases: list[tuple[object, list[Point]]], max_batch: int = 512) -> list[list[Finding]]:
        """`grade` for several (study, points) at once: each family's crops of all of them go through its
        network together (in batches of at most `max_batch`), which is what fills a GPU."""
        probs: list[dict[tuple[str, str], list[float]]] = [{} for _ in cases]
        for fam, (model, _) in self.models.items():
            items, owner = [], []
            for i, (study, points) in enumerate(cases):
                got = inference_items(study, points, fam)
                items += got
                owner += [i] * len(got)
            if not items:
                continue
            ds = CropDataset(items, fam, self.crop(fam))
            out = []
            for lo in range(0, len(items), max_batch):
                part = range(lo, min(lo + max_batch, len(items)))
                x = np.stack([ds.image(i) for i in part])
                c = np.stack([condition_vector(items[i].condition, items[i].level) for i in part])
                out.append(softmax(model(x, c), axis=1))
            for it, o, row in zip(items, owner, np.concatenate(out)):
                probs[o][(it.condition, it.level)] = (row / row.sum()).tolist()
        return [self._findings(p) for p in probs]

    def _findings(self, probs: dict[tuple[str, str], list[float]]) -> list[Finding]:
        out = []
        for cond in vocab.CONDITIONS:
            fam = vocab.CONDITION_BY_KEY[cond].family
            for lv in vocab.LEVELS:
                if (cond, lv) in probs:
                    out.append(Finding(cond, lv, probs[(cond, lv)], "model"))
                else:
                    out.append(Finding(cond, lv, self.prior(fam), "prior"))
        return out
