"""The study pipeline's plan: one typed object from the command line to every checkpoint to inference.

A `PipelinePlan` holds a `LocalizerSpec` per view and a `GraderSpec` per condition family, the split and the
two training loops. `build_plan` makes one from the defaults and the options a user gave; the trainer writes
it to `RUN/config.json` and into every checkpoint (as `config`), and inference reads what it needs (input
sizes, crops, channels) back from the checkpoints, so changing a default in code never changes an old run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

from .. import vocab
from ..errors import DataError
from ..grade.spec import CLASS_WEIGHTS, GraderSpec, default_grader
from ..localize.spec import LocalizerSpec, default_localizer
from ..train.config import RESUMABLE_FIELDS, LoopConfig, RunConfig

STAGES = ("localizer", "grader", "all")
VIEWS = (vocab.SAGITTAL_T2, vocab.SAGITTAL_T1, vocab.AXIAL_T2)


def _localizer_loop() -> LoopConfig:
    return LoopConfig(epochs=14, batch_size=16, lr=3e-3, patience=5)


def _grader_loop() -> LoopConfig:
    # 12 epochs left every grader still improving at the last one (120 synthetic studies, three cohorts)
    return LoopConfig(epochs=20, batch_size=64, lr=1e-3, patience=4)


@dataclass
class PipelinePlan(RunConfig):
    """One study-pipeline run. Defaults train a 120-synthetic-study cohort on 2 CPU cores in ~half an hour."""

    KIND: ClassVar[str] = "study-pipeline"
    VERSION: ClassVar[int] = 3
    # `stage` says which models to train now, not what they compute: a run trained stage by stage resumes
    RESUMABLE: ClassVar[frozenset] = RESUMABLE_FIELDS | {"stage"}

    data: str = ""
    cache: str = ""  # default: <run>/cache
    coordinates: str | None = None  # a corrected coordinate table in the challenge's columns
    folds: int = 5
    val_fold: int = 0
    stage: str = "all"
    workers: int = 0  # prepare processes (0: one per usable core, at most 16: data.prepare.auto_workers)
    localizers: dict[str, LocalizerSpec] = field(default_factory=lambda: {v: default_localizer(v) for v in VIEWS})
    graders: dict[str, GraderSpec] = field(default_factory=lambda: {f: default_grader(f) for f in vocab.FAMILIES})
    localizer_loop: LoopConfig = field(default_factory=_localizer_loop)
    grader_loop: LoopConfig = field(default_factory=_grader_loop)

    def validate(self) -> PipelinePlan:
        """DataError naming the option for values that cannot work; returns self."""
        if self.stage not in STAGES:
            raise DataError(f"--stage {self.stage!r}: expected one of {', '.join(STAGES)}")
        if self.folds < 2 or not 0 <= self.val_fold < self.folds:
            raise DataError(f"--val-fold {self.val_fold} must be one of the {self.folds} folds (folds >= 2)")
        if set(self.localizers) != set(VIEWS) or set(self.graders) != set(vocab.FAMILIES):
            raise DataError(f"a plan needs a localiser for each of {', '.join(VIEWS)} and a grader for each of "
                            f"{', '.join(vocab.FAMILIES)}")
        for v, s in self.localizers.items():
            if not s.spatial_weight >= 0:
                raise DataError(f"localiser {v}: --spatial-loss {s.spatial_weight} must be >= 0")
            if s.view != v or s.input_size < 16 or s.input_size % 16 or s.n_channels < 1:
                raise DataError(f"localiser {v}: input size {s.input_size} must be a multiple of 16 (>= 16), "
                                f"channels >= 1")
        for f, g in self.graders.items():
            if g.family != f or g.crop.out_px < 16 or g.crop.size_mm <= 0 or g.crop.n_slices < 1:
                raise DataError(f"grader {f}: crop of {g.crop.out_px} px / {g.crop.size_mm} mm / "
                                f"{g.crop.n_slices} slices cannot work (>= 16 px, > 0 mm, >= 1 slice)")
            if g.class_weights not in CLASS_WEIGHTS:
                raise DataError(f"--class-weights {g.class_weights!r}: expected one of {', '.join(CLASS_WEIGHTS)}")
        for name, loop in (("localiser", self.localizer_loop), ("grader", self.grader_loop)):
            # a learning rate of 0 trains nothing, but it is a legitimate way to see the checks catch a broken run
            if loop.epochs < 1 or loop.batch_size < 1 or not loop.lr >= 0:
                raise DataError(f"{name} loop: epochs and batch size must be >= 1 and the learning rate >= 0")
            loop.check_ema()
        return self

    @classmethod
    def upgrade(cls, d: dict, version: int) -> dict:
        """Version 1 was the flat StudyTrainConfig (one localiser model and size, one grader model); version 2
        localisers trained without the spatial cross-entropy."""
        if version >= 3:
            return d
        if version == 2:
            d = dict(d)
            d["localizers"] = {v: {"spatial_weight": 0.0, **s} for v, s in d.get("localizers", {}).items()}
            return d
        d = dict(d)
        model, size = d.pop("localizer_model", "unet-small"), d.pop("localizer_size", 64)
        sizes = d.pop("localizer_view_sizes", {})
        gmodel, gkwargs = d.pop("grader_model", "seed-cnn"), d.pop("grader_kwargs", None)
        weights = d.pop("class_weights", "metric")
        d["localizers"] = {v: {"view": v, "network": model, "input_size": sizes.get(v, size), "spatial_weight": 0.0}
                           for v in VIEWS}
        d["graders"] = {}
        for f in vocab.FAMILIES:
            g = default_grader(f)
            d["graders"][f] = {"family": f, "crop": asdict(g.crop), "network": gmodel,
                               "network_kwargs": g.network_kwargs if gkwargs is None else gkwargs,
                               "class_weights": weights}
        return d


def build_plan(data: str, *, base: PipelinePlan | None = None, cache: str | None = None,
               coordinates: str | None = None, folds: int | None = None, val_fold: int | None = None,
               stage: str | None = None, prepare_workers: int | None = None,
               localizer_model: str | None = None, localizer_model_kwargs: dict | None = None,
               localizer_size: int | None = None, localizer_epochs: int | None = None,
               localizer_spatial_weight: float | None = None,
               grader_model: str | None = None, grader_model_kwargs: dict | None = None,
               crop_px: int | None = None, grader_epochs: int | None = None, class_weights: str | None = None,
               condition_input: bool | None = None, augment: bool | None = None,
               epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
               weight_decay: float | None = None, patience: int | None = None, device: str | None = None,
               amp: bool | None = None, seed: int | None = None, loader_workers: int | None = None,
               ema: float | None = None) -> PipelinePlan:
    """The defaults (or `base`) with every option that is not None applied; validated.

    Loop options (epochs .. ema) apply to both stages' loops; `localizer_epochs` and
    `grader_epochs` then set one stage's epochs. `localizer_size` sets every view's input size, `crop_px`
    every family's crop size in pixels (the field of view in mm stays). `augment=False` turns off the
    localisers' augmentation and the graders' jitter.
    """
    plan = PipelinePlan.from_dict(base.to_dict()) if base is not None else PipelinePlan()
    plan.data = str(data)

    def put(obj, name, value):
        if value is not None:
            setattr(obj, name, value)

    for name, value in (("cache", cache), ("coordinates", coordinates), ("folds", folds), ("val_fold", val_fold),
                        ("stage", stage), ("workers", prepare_workers)):
        put(plan, name, value)
    for spec in plan.localizers.values():
        put(spec, "network", localizer_model)
        put(spec, "network_kwargs", localizer_model_kwargs)
        put(spec, "input_size", localizer_size)
        put(spec, "spatial_weight", localizer_spatial_weight)
        put(spec, "augment", augment)
    for spec in plan.graders.values():
        if grader_model is not None and grader_model != spec.network:
            spec.network_kwargs = {}  # the default options belong to the default network
        put(spec, "network", grader_model)
        put(spec, "network_kwargs", grader_model_kwargs)
        put(spec, "class_weights", class_weights)
        put(spec, "condition_input", condition_input)
        put(spec, "augment", augment)
        if crop_px is not None:
            spec.crop = replace(spec.crop, out_px=crop_px)
    for loop, stage_epochs in ((plan.localizer_loop, localizer_epochs), (plan.grader_loop, grader_epochs)):
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr),
                            ("weight_decay", weight_decay), ("patience", patience), ("device", device),
                            ("amp", amp), ("seed", seed), ("workers", loader_workers), ("ema", ema),
                            ("epochs", stage_epochs)):
            put(loop, name, value)
    return plan.validate()
