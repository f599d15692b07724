"""Train the whole study pipeline (stage 1 localisers + stage 2 graders) from an RSNA-layout dataset.

Run folder:
```
RUN/config.json                      the StudyTrainConfig
RUN/split.json                       training and validation study ids (study-level folds)
RUN/localizer/<view>/best.pt ...     one heatmap network per view (sagittal_t2, sagittal_t1, axial_t2)
RUN/grader/<family>/best.pt ...      one crop classifier per condition family
RUN/summary.json                     best validation figures per model
```
Each model folder is a run of the shared engine (metrics.jsonl, curves.png, last.pt for --resume).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import vocab
from ..errors import DataError
from .config import LoopConfig

STAGES = ("localizer", "grader", "all")


@dataclass
class StudyTrainConfig:
    """One study-pipeline run. Defaults train a 120-study synthetic cohort on 2 CPU cores in ~half an hour."""

    data: str = ""
    cache: str = ""  # default: <run>/cache
    folds: int = 5
    val_fold: int = 0
    stage: str = "all"
    localizer_model: str = "unet-small"
    localizer_size: int = 64
    # per-view input sizes that differ from localizer_size: the foramina are small, and at 96 px their
    # median 3D error fell from 5.3 to 3.8 mm (120 synthetic studies, fold 0)
    localizer_view_sizes: dict = field(default_factory=lambda: {vocab.SAGITTAL_T1: 96})
    grader_model: str = "seed-cnn"
    grader_kwargs: dict = field(default_factory=lambda: {"widths": [16, 32, 64, 96, 128], "pool": 2})
    class_weights: str = "metric"
    coordinates: str | None = None  # a corrected coordinate table in the challenge's columns
    localizer_loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=14, batch_size=16, lr=3e-3,
                                                                          patience=5))
    grader_loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=12, batch_size=64, lr=1e-3,
                                                                       patience=4))
    workers: int = 2  # prepare processes

    def validate(self) -> "StudyTrainConfig":
        if self.stage not in STAGES:
            raise DataError(f"--stage {self.stage!r}: expected one of {', '.join(STAGES)}")
        if self.folds < 2 or not 0 <= self.val_fold < self.folds:
            raise DataError(f"--val-fold {self.val_fold} must be one of the {self.folds} folds (folds >= 2)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudyTrainConfig":
        d = dict(d)
        ll = LoopConfig(**d.pop("localizer_loop", {}))
        gl = LoopConfig(**d.pop("grader_loop", {}))
        return cls(**d, localizer_loop=ll, grader_loop=gl)


def read_split(run: Path) -> dict:
    p = Path(run) / "split.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: missing (is {run} a study-pipeline run folder?)") from None


def train_study_pipeline(cfg: StudyTrainConfig, out: Path, resume: bool = False, log=print) -> dict:
    """Prepare the cache if needed, split by study, train the chosen stages; returns the summary."""
    from ..files import atomic_write_text
    from ..data.prepare import Cache, prepare_dataset
    from ..data.rsna import RsnaDataset, make_folds
    from ..grade.grader import GRADER_DIR
    from ..grade.train import train_family
    from ..localize.data import VIEWS
    from ..localize.localizer import LOCALIZER_DIR
    from ..localize.train import foramen_offsets, train_view
    from .distributed import setup, teardown

    cfg.validate()
    out = Path(out)
    cfg_path = out / "config.json"
    if cfg_path.exists() and not resume:
        raise DataError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
    ctx = setup(cfg.localizer_loop.device)
    ds = RsnaDataset(Path(cfg.data), coordinates=Path(cfg.coordinates) if cfg.coordinates else None)
    if ds.labels is None or ds.coords is None:
        raise DataError(f"{cfg.data}: training needs train.csv and train_label_coordinates.csv")
    cache_dir = Path(cfg.cache) if cfg.cache else out / "cache"
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, json.dumps(cfg.to_dict(), indent=1))
        r = prepare_dataset(Path(cfg.data), cache_dir, workers=cfg.workers, progress=True)
        for f in r["failed"]:
            log(f"skipped study {f['study_id']}: {f['error']}")
    from .distributed import barrier

    barrier(ctx)
    cache = Cache(cache_dir)
    studies = [s for s in ds.study_ids if cache.has_study(s) and s in ds.labels.index]
    folds = make_folds(ds.labels.loc[studies], n_folds=cfg.folds, seed=cfg.localizer_loop.seed)
    val_ids = sorted(int(s) for s in folds.index[folds == cfg.val_fold])
    train_ids = sorted(int(s) for s in folds.index[folds != cfg.val_fold])
    if ctx.is_main:
        atomic_write_text(out / "split.json", json.dumps({"folds": cfg.folds, "val_fold": cfg.val_fold,
                                                          "train": train_ids, "val": val_ids}))
    log(f"{len(train_ids)} training and {len(val_ids)} validation studies (fold {cfg.val_fold} of {cfg.folds})")
    coords = ds.coords
    summary: dict = {"localizer": {}, "grader": {}}
    if cfg.stage in ("localizer", "all"):
        offsets = foramen_offsets(cache, coords, train_ids)
        for view in VIEWS:
            summary["localizer"][view] = train_view(
                view, cache, coords, train_ids, val_ids, out / LOCALIZER_DIR / view, cfg.localizer_loop, ctx,
                model_name=cfg.localizer_model, size=cfg.localizer_view_sizes.get(view, cfg.localizer_size),
                resume=resume, log=log,
                extra={"foramen_offsets": offsets} if view == vocab.SAGITTAL_T1 else None)
    if cfg.stage in ("grader", "all"):
        for fam in vocab.FAMILIES:
            summary["grader"][fam] = train_family(
                fam, cache, ds, train_ids, val_ids, out / GRADER_DIR / fam, cfg.grader_loop, ctx,
                model_name=cfg.grader_model, model_kwargs=cfg.grader_kwargs, class_weights=cfg.class_weights,
                resume=resume, log=log)
    if ctx.is_main:
        old = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        for k in ("localizer", "grader"):
            old.setdefault(k, {}).update(summary[k])
        atomic_write_text(out / "summary.json", json.dumps(old, indent=1))
        summary = old
    teardown(ctx)
    return summary
