"""A trained slice model at inference: place its task's landmarks on a slice, grade the asked points.

`SliceModel.load` takes a run folder (`localizer/best.pt`, `grader/best.pt`, `calibration.json`; where it has
them `refiner/` and further graders `grader-<tag>/`, each with its own `calibration.json`), a folder
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
from ..localize.heatmap import decode_heatmaps, refine_peak
from ..runtime import Runtime, has_network, runtime, sigmoid, softmax
from .bundled import BUNDLED_DIR, GRADER, LOCALIZER, REFINER, is_member, resolve_model_path
from .data import Frame, normalise_intensity
from .grader import GraderSpec, crop_batch
from .localizer import OUT_STRIDE, LocalizerSpec, heatmap_to_box
from .refiner import RefinerSpec, refine_points
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


def _temperature(folder: Path) -> float:
    cal = folder / CALIBRATION
    return float(json.loads(cal.read_text()).get("temperature", 1.0)) if cal.is_file() else 1.0


def extra_grader_dirs(run: Path) -> list[Path]:
    """A run's further graders (`grader-<tag>/`, each with its network and its own `calibration.json`): graders
    trained on the same training studies, whose answers the member averages with its `grader/`'s."""
    return sorted(p for p in Path(run).glob(f"{GRADER}-*") if p.is_dir() and has_network(p / "best.pt"))


def run_temperature(run: Path) -> float:
    """The temperature a run's answers are given with, as the study-level stage undoes it: its grader's, or the
    mean of its graders' where it has several (`Member.stage_temperature`)."""
    return float(np.mean([_temperature(run)] + [_temperature(d) for d in extra_grader_dirs(run)]))


@dataclass
class Member:
    """One trained localiser + grader pair of one task (and its refiner, and further graders, where it has them)."""

    path: Path
    task: SliceTask
    localizer: object  # runtime.TorchNet | runtime.OnnxNet: numpy in, numpy out
    lspec: LocalizerSpec
    grader: object
    gspec: GraderSpec
    temperature: float = 1.0
    train_studies: set = field(default_factory=set)
    refiner: object | None = None  # a second look at each point (refiner.py), where the run has one
    rspec: RefinerSpec | None = None
    extra_graders: list = field(default_factory=list)  # (network, GraderSpec, temperature) of each grader-<tag>/

    def graders(self) -> list[tuple[object, GraderSpec, float]]:
        """Every grader of the member with its crop and temperature: `grade` averages their probabilities."""
        return [(self.grader, self.gspec, self.temperature)] + list(self.extra_graders)

    @property
    def stage_temperature(self) -> float:
        """What the study-level stage undoes (run_temperature): the graders' mean temperature."""
        return float(np.mean([t for _, _, t in self.graders()]))

    @classmethod
    def load(cls, path: Path, device="cpu") -> Member:
        rt = runtime(device)
        loc, lck = _load_net(path / LOCALIZER / "best.pt", "localizer", rt)
        gra, gck = _load_net(path / GRADER / "best.pt", "grader", rt)
        task = task_of_kind(lck["kind"])
        if gck["kind"] != task.grader_kind:
            raise DataError(f"{path}: its localiser is a {lck['kind']!r}, its grader a {gck['kind']!r}")
        t = _temperature(path)
        extra = []
        for d in extra_grader_dirs(path):
            net, ck = _load_net(d / "best.pt", "grader", rt)
            if ck["kind"] != task.grader_kind:
                raise DataError(f"{d}: a {ck['kind']!r} grader beside a {task.grader_kind!r} one")
            extra.append((net, GraderSpec.from_dict(ck["spec"]), _temperature(d)))
        studies: set = set()
        split = path / SPLIT
        if split.is_file():  # read with the csv module: predicting does not import pandas
            import csv

            with open(split, newline="", encoding="utf-8") as fh:
                studies = {r["study_id"] for r in csv.DictReader(fh) if r.get("role") != "test"}
        ref, rspec = None, None
        if has_network(path / REFINER / "best.pt"):
            ref, rck = _load_net(path / REFINER / "best.pt", "refiner", rt)
            if rck["kind"] != task.refiner_kind:
                raise DataError(f"{path}: its localiser is a {lck['kind']!r}, its refiner a {rck['kind']!r}")
            rspec = RefinerSpec.from_dict(rck["spec"])
        return cls(path, task, loc, LocalizerSpec.from_dict(lck["spec"]), gra, GraderSpec.from_dict(gck["spec"]), t,
                   studies, ref, rspec, extra)


def _zoomed(frame: Frame, z: float) -> tuple[np.ndarray, np.ndarray]:
    """The letterbox affine with the view zoomed by `z` about the letterbox centre (z > 1: closer)."""
    a, t = letterbox_affine(frame)
    c = np.full(2, frame.size / 2)
    return a / z, a @ (c - c / z) + t


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
    def neighbour_slices(self) -> int:
        """How far (in slices) a grader of this model looks for a neighbouring slice; 0: none reads one."""
        return max((g.neighbour_slices for m in self.members for _, g, _ in m.graders()), default=0)

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

    def localize(self, img: np.ndarray, rows: int, cols: int, tta: bool = True, refine: bool = True) -> np.ndarray:
        """(C, 3): per channel of the task the landmark's (x, y) in `img` pixels and the mean peak height (0..1).

        A task that reads its channels together (`decode_together`: the canal's ordered levels) decodes the
        members' mean heatmaps; otherwise the peaks of the members' mean heatmaps are decoded on the letterbox
        zoomed by each of their spec's `tta_zooms` (with `tta`), the views' median taken, and refined by each
        member's refiner (with `refine`), their mean. Members that read other views are decoded apart, and those
        positions averaged (their median beyond two groups' members).
        """
        return self._localize(img, rows, cols, tta, refine)[0]

    def candidates(self, img: np.ndarray, rows: int, cols: int, tta: bool = True) -> np.ndarray:
        """(C, 2, 3): per channel `localize`'s point (x, y, height) and a second candidate (x, y, weight): the
        members' mean heatmap's highest peak away from the first (LocalizerSpec.second_peak_*), whose grade
        `grade` mixes in with that weight. The weight is 0 where the model does not use a second peak."""
        pts, maps = self._localize(img, rows, cols, tta, True)
        out = np.zeros((len(pts), 2, 3))
        out[:, 0] = pts
        out[:, 1, :2] = pts[:, :2]
        spec = self.members[0].lspec
        if spec.second_peak_power <= 0 or not maps:
            return out
        frame, first = maps[0]
        hm = np.mean([h for f, h in maps if h.shape == first.shape], axis=0)
        bx, by = frame.original_to_box(*frame.stored_to_original(pts[:, 0], pts[:, 1]))
        g = int(spec.second_peak_gap)
        for c in range(len(pts)):
            cx, cy = int(round(bx[c] / OUT_STRIDE - 0.5)), int(round(by[c] / OUT_STRIDE - 0.5))
            near = np.zeros(hm[c].shape, dtype=bool)
            near[max(0, cy - g):max(0, cy + g + 1), max(0, cx - g):max(0, cx + g + 1)] = True
            if near.all() or not near.any():
                continue
            h1 = float(hm[c][near].max())
            rest = np.where(near, 0.0, hm[c])
            py, px = divmod(int(np.argmax(rest)), rest.shape[1])
            second = self._to_stored(frame, np.array([refine_peak(rest, px, py)]))[0]
            w1, w2 = max(h1, 1e-6) ** spec.second_peak_power, max(second[2], 0.0) ** spec.second_peak_power
            out[c, 1] = (second[0], second[1], w2 / (w1 + w2))
        return out

    def _localize(self, img: np.ndarray, rows: int, cols: int, tta: bool, refine: bool):
        """localize's points, and each member's plain-view (frame, heatmaps) for `candidates`."""
        img01 = normalise_intensity(img)
        if self.task.decode_together:
            maps = []
            for m in self.members:
                frame = Frame(rows, cols, img.shape, m.lspec.input_size)
                x = zscore_numpy(warp_numpy(img01, [letterbox_affine(frame)], m.lspec.input_size))
                maps.append((frame, sigmoid(m.localizer(x))[0]))
            frame, first = maps[0]
            same = [hm for f, hm in maps if hm.shape == first.shape]
            return self._to_stored(frame, self.task.decode(np.mean(same, axis=0))), []
        # Members that read the same views are decoded on their mean heatmaps: averaging their points instead
        # puts a point between two foramina wherever one member places it a level away from the other.
        groups: dict[tuple, list[Member]] = {}
        for m in self.members:
            groups.setdefault((m.lspec.input_size, (m.lspec.tta_zooms if tta else ()) or (1.0,)), []).append(m)
        out, maps = [], []
        for (s, zooms), ms in groups.items():
            frame = Frame(rows, cols, img.shape, s)
            x = zscore_numpy(warp_numpy(img01, [_zoomed(frame, z) for z in zooms], s))
            per_member = [sigmoid(m.localizer(x)) for m in ms]
            plain = zooms.index(1.0) if 1.0 in zooms else 0
            maps += [(frame, hms[plain]) for hms in per_member]
            views = []
            for z, hm in zip(zooms, np.mean(per_member, axis=0)):
                dec = decode_heatmaps(hm)
                c = (s / 2) / OUT_STRIDE - 0.5  # the letterbox centre in heatmap pixels
                dec[:, :2] = (dec[:, :2] - c) / z + c  # the view's heatmap -> the plain letterbox's
                views.append(self._to_stored(frame, dec))
            pts = np.median(np.stack(views), axis=0)
            refiners = [m for m in ms if m.refiner is not None] if refine else []
            if refiners:  # each member's closer look from the same point, their mean
                pts[:, :2] = np.mean([refine_points(m.refiner, m.rspec, img01, rows, cols, pts[:, :2], sigmoid)
                                      for m in refiners], axis=0)
            out += [pts] * len(ms)
        return (np.median(np.stack(out), axis=0) if len(out) > 2 else np.mean(np.stack(out), axis=0)), maps

    @staticmethod
    def _to_stored(frame: Frame, dec: np.ndarray) -> np.ndarray:
        """Decoded heatmap peaks (x, y, height) -> (x, y) in the stored image's pixels, and the height."""
        bx, by = heatmap_to_box(dec[:, 0]), heatmap_to_box(dec[:, 1])
        sx, sy = frame.original_to_stored(*frame.box_to_original(bx, by))
        return np.stack([sx, sy, dec[:, 2]], axis=1)

    def localize_many(self, imgs: list[np.ndarray], rows: int, cols: int, tta: bool = True, refine: bool = True
                      ) -> np.ndarray:
        """(N, C, 3) for N slices of one series."""
        return np.stack([self.localize(im, rows, cols, tta, refine) for im in imgs])

    def grade(self, img: np.ndarray, rows: int, cols: int, asks: list[tuple[str, str, float, float]],
              tta: bool = True, per_member: bool = False, seconds=None, neighbours=()) -> np.ndarray:
        """(N, classes) probabilities for N (condition, level, x, y) asks on one slice, x, y in `img` pixels: the
        members' mean, or with `per_member` each member's (M, N, classes), for `finish_study`. `seconds`: per ask
        a second candidate (x, y, weight) from `candidates`, whose grade is mixed in with that weight.
        `neighbours`: the series' nearest other slices (stored pixels, as `img`), for graders that read one
        (`GraderSpec.neighbour_slices`): graded with each, averaged; none given: the slice itself."""
        from ..inputs import condition_vector

        if not asks:
            return np.zeros((len(self.members), 0, len(self.task.classes)) if per_member else (0, len(self.task.classes)))
        mix = [i for i, s in enumerate(seconds or ()) if s[2] > 0]
        if mix:
            both = list(asks) + [(asks[i][0], asks[i][1], seconds[i][0], seconds[i][1]) for i in mix]
            p = self.grade(img, rows, cols, both, tta, per_member=True, neighbours=neighbours)
            w = np.zeros(len(asks))
            w[mix] = [seconds[i][2] for i in mix]
            probs = p[:, :len(asks)] * (1 - w)[None, :, None]
            probs[:, mix] += p[:, len(asks):] * w[mix][None, :, None]
            return probs if per_member else probs.mean(axis=0)
        img01 = normalise_intensity(img)
        near01 = [normalise_intensity(n) for n in neighbours] or [None]
        shifts = TTA_SHIFTS if tta else ((0.0, 0.0),)
        zooms = TTA_ZOOMS if tta else (1.0,)
        views = [(s, z) for s in shifts for z in zooms]
        cond = np.stack([condition_vector(c, lv) for c, lv, _, _ in asks]).astype(np.float32)
        probs = np.zeros((len(self.members), len(asks), len(self.task.classes)))
        side = max(rows, cols)
        cached: dict[tuple, np.ndarray] = {}  # graders that read the same crops (every member's) cut them once

        def crops_for(gspec: GraderSpec, j: int, other) -> np.ndarray:
            key = (gspec.input_key, j)
            if key not in cached:
                frame = Frame(rows, cols, img.shape, gspec.crop_px)
                centres, zs = [], []
                for _, _, x, y in asks:
                    u, v = frame.stored_to_original(x, y)
                    for (du, dv), z in views:
                        centres.append((float(u) + du * side, float(v) + dv * side))
                        zs.append(z)
                cached[key] = crop_batch(img01, frame, gspec, centres, zooms=np.asarray(zs), neighbour01=other)
            return cached[key]

        for i, m in enumerate(self.members):
            for net, gspec, temperature in m.graders():
                others = near01 if gspec.neighbour_slices else [None]  # graded with each, averaged
                for j, other in enumerate(others):
                    logits = net(crops_for(gspec, j, other), np.repeat(cond, len(views), axis=0))
                    p = softmax(logits / np.float32(temperature), axis=1).reshape(len(asks), len(views), -1)
                    probs[i] += p.mean(axis=1) / len(others)
            probs[i] /= len(m.graders())
        return probs if per_member else probs.mean(axis=0)

    def finish_study(self, rows: list[tuple[str, str]], member_probs: np.ndarray) -> np.ndarray:
        """One study's graded rows ((condition, level) each) and each member's probabilities (M, N, classes) ->
        the final (N, classes): the study-level stage applied to each member's answers (their temperature
        undone: the stage calibrates them), then averaged (without a stage, the members' mean)."""
        if self.stage is None or not len(rows):
            return member_probs.mean(axis=0)
        return np.mean([self.stage.apply_rows(rows, p, m.stage_temperature) for p, m in zip(member_probs, self.members)],
                       axis=0)
