"""A trained slice model at inference: place its task's landmarks on a slice, grade the asked points.

`SliceModel.load` takes a run folder (`localizer/best.pt`, `grader/best.pt`, `calibration.json`), a folder
of such runs (their predictions are averaged: a fold ensemble), or the name of a model bundled with the
package. The networks run on torch or on ONNX Runtime (`runtime`: chosen when the model loads); the input is
resampled in numpy either way. Everything that shapes the input (letterbox size, crop size, normalisation) is read back from the
checkpoints, never from code defaults. Input images are any 2D array covering the slice's whole field of
view (a stored 250 px JPEG or the DICOM matrix itself) plus the original `rows x cols`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..localize.heatmap import decode_heatmaps
from ..runtime import Runtime, runtime, sigmoid, softmax
from .bundled import BUNDLED_DIR, GRADER, LOCALIZER, is_member, resolve_model_path
from .data import Frame, normalise_intensity
from .grader import GraderSpec, crop_batch
from .localizer import LocalizerSpec, heatmap_to_box
from .study import StudyStage, find_stage
from .task import SliceTask, task_of_kind
from .warp import letterbox_affine, warp_numpy, zscore_numpy

CALIBRATION = "calibration.json"
PRIOR = "prior.json"
SPLIT = "split.csv"
# Test-time augmentation: crop offsets (fraction of the longer side) and zooms averaged over.
TTA_SHIFTS = ((0.0, 0.0), (0.006, 0.0), (-0.006, 0.0), (0.0, 0.006), (0.0, -0.006))
TTA_ZOOMS = (1.0, 0.92, 1.08)
def _load_net(path: Path, role: str, rt: Runtime):
    """A localiser or grader network (its kind `<task>-<role>` says which task), and its checkpoint's description."""
    net, ckpt = rt.load(path)  # one read: the checkpoint says what it is
    kind = str(ckpt.get("kind") or "")
    if not kind.endswith(f"-{role}"):
        raise DataError(f"{path}: a {kind or 'different'!r} checkpoint, expected a slice {role}")
    return net, ckpt


@dataclass
class Member:
    """One trained localiser + grader pair of one task."""

    path: Path
    task: SliceTask
    localizer: object  # runtime.TorchNet | runtime.OnnxNet: numpy in, numpy out
    lspec: LocalizerSpec
    grader: object
    gspec: GraderSpec
    temperature: float = 1.0
    train_studies: set = field(default_factory=set)

    @classmethod
    def load(cls, path: Path, device="cpu") -> Member:
        rt = runtime(device)
        loc, lck = _load_net(path / LOCALIZER / "best.pt", "localizer", rt)
        gra, gck = _load_net(path / GRADER / "best.pt", "grader", rt)
        task = task_of_kind(lck["kind"])
        if gck["kind"] != task.grader_kind:
            raise DataError(f"{path}: its localiser is a {lck['kind']!r}, its grader a {gck['kind']!r}")
        cal = path / CALIBRATION
        t = float(json.loads(cal.read_text()).get("temperature", 1.0)) if cal.is_file() else 1.0
        studies: set = set()
        split = path / SPLIT
        if split.is_file():  # read with the csv module: predicting does not import pandas
            import csv

            with open(split, newline="", encoding="utf-8") as fh:
                studies = {r["study_id"] for r in csv.DictReader(fh) if r.get("role") != "test"}
        return cls(path, task, loc, LocalizerSpec.from_dict(lck["spec"]), gra, GraderSpec.from_dict(gck["spec"]), t, studies)


class SliceModel:
    """One or more members of one task; `localize` and `grade` average over them."""

    def __init__(self, members: list[Member], name: str, device="cpu"):
        if not members:
            raise DataError(f"{name}: holds no trained slice model ({LOCALIZER}/best.pt + {GRADER}/best.pt)")
        tasks = {m.task.name for m in members}
        if len(tasks) > 1:
            raise DataError(f"{name}: its members are of different tasks ({', '.join(sorted(tasks))})")
        self.members, self.name, self.runtime = members, name, runtime(device)
        self.task = members[0].task
        self.stage: StudyStage | None = None  # the study-level stage, where the model folder holds one

    @classmethod
    def load(cls, name_or_path: str | Path, device="cpu", task: str | None = None) -> SliceModel:
        """A run, a folder of runs or a bundled model; with `task`, DataError unless it is that task's. `device`:
        auto | cpu | cuda[:N], a torch.device or a `runtime.Runtime` (which also says torch or ONNX Runtime)."""
        path = resolve_model_path(name_or_path)
        dirs = [path] if is_member(path) else sorted(p for p in path.iterdir() if p.is_dir() and is_member(p))
        name = path.name if path.parent == BUNDLED_DIR else str(path)
        rt = runtime(device)
        model = cls([Member.load(d, rt) for d in dirs], name, rt)
        model.stage = find_stage(path)
        if task is not None and model.task.name != task:
            raise DataError(f"{name_or_path}: a {model.task.name} model, not a {task} model")
        return model

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

    def localize(self, img: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """(C, 3): per channel of the task the landmark's (x, y) in `img` pixels and the mean peak height (0..1).

        A task that reads its channels together (`decode_together`: the canal's ordered levels) decodes the
        members' mean heatmaps; otherwise each member's peaks are decoded and their positions averaged.
        """
        img01 = normalise_intensity(img)
        out, maps = [], []
        for m in self.members:
            frame = Frame(rows, cols, img.shape, m.lspec.input_size)
            x = zscore_numpy(warp_numpy(img01, [letterbox_affine(frame)], m.lspec.input_size))
            hm = sigmoid(m.localizer(x))[0]
            maps.append((frame, hm))
            if not self.task.decode_together:
                out.append(self._to_stored(frame, decode_heatmaps(hm)))
        if self.task.decode_together:
            frame, first = maps[0]
            same = [hm for f, hm in maps if hm.shape == first.shape]
            return self._to_stored(frame, self.task.decode(np.mean(same, axis=0)))
        return np.median(np.stack(out), axis=0) if len(out) > 2 else np.mean(np.stack(out), axis=0)

    @staticmethod
    def _to_stored(frame: Frame, dec: np.ndarray) -> np.ndarray:
        """Decoded heatmap peaks (x, y, height) -> (x, y) in the stored image's pixels, and the height."""
        bx, by = heatmap_to_box(dec[:, 0]), heatmap_to_box(dec[:, 1])
        sx, sy = frame.original_to_stored(*frame.box_to_original(bx, by))
        return np.stack([sx, sy, dec[:, 2]], axis=1)

    def localize_many(self, imgs: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
        """(N, C, 3) for N slices of one series."""
        return np.stack([self.localize(im, rows, cols) for im in imgs])

    def grade(self, img: np.ndarray, rows: int, cols: int, asks: list[tuple[str, str, float, float]],
              tta: bool = True, per_member: bool = False) -> np.ndarray:
        """(N, classes) probabilities for N (condition, level, x, y) asks on one slice, x, y in `img` pixels: the
        members' mean, or with `per_member` each member's (M, N, classes), for `finish_study`."""
        from ..inputs import condition_vector

        if not asks:
            return np.zeros((len(self.members), 0, len(self.task.classes)) if per_member else (0, len(self.task.classes)))
        img01 = normalise_intensity(img)
        shifts = TTA_SHIFTS if tta else ((0.0, 0.0),)
        zooms = TTA_ZOOMS if tta else (1.0,)
        views = [(s, z) for s in shifts for z in zooms]
        cond = np.stack([condition_vector(c, lv) for c, lv, _, _ in asks]).astype(np.float32)
        probs = np.zeros((len(self.members), len(asks), len(self.task.classes)))
        for i, m in enumerate(self.members):
            frame = Frame(rows, cols, img.shape, m.gspec.crop_px)
            side = max(rows, cols)
            centres, zs = [], []
            for _, _, x, y in asks:
                u, v = frame.stored_to_original(x, y)
                for (du, dv), z in views:
                    centres.append((float(u) + du * side, float(v) + dv * side))
                    zs.append(z)
            crops = crop_batch(img01, frame, m.gspec, centres, zooms=np.asarray(zs))
            logits = m.grader(crops, np.repeat(cond, len(views), axis=0))
            p = softmax(logits / np.float32(m.temperature), axis=1).reshape(len(asks), len(views), -1)
            probs[i] = p.mean(axis=1)
        return probs if per_member else probs.mean(axis=0)

    def finish_study(self, rows: list[tuple[str, str]], member_probs: np.ndarray) -> np.ndarray:
        """One study's graded rows ((condition, level) each) and each member's probabilities (M, N, classes) ->
        the final (N, classes): the study-level stage applied to each member's answers, then averaged (without
        a stage, the members' mean)."""
        if self.stage is None or not len(rows):
            return member_probs.mean(axis=0)
        return np.mean([self.stage.apply_rows(rows, p) for p in member_probs], axis=0)
