"""A training run's configuration: one typed object, written to `<run>/config.json` and read back.

Every run configuration is a `RunConfig`: a nested dataclass with a `kind` (which trainer wrote it) and a
schema `version`, saved as JSON, read back with a clear error on an unknown kind, version or field, and
compared field by field when a run is resumed. `LoopConfig` is what the engine needs and is shared by every
model that trains on it; `TrainConfig` is a slice-grader run; the study pipeline's `PipelinePlan`
(`spinegrade.pipeline.plan`) is the other kind. No torch here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import DataError

CLASS_WEIGHTS = ("metric", "none")
CONFIG = "config.json"
# Fields that may differ when a run is resumed: where and how fast it runs, not what it computes.
RESUMABLE_FIELDS = frozenset({"device", "workers"})


def _build(tp, value, where: str):
    """`value` (plain JSON data) as type `tp`: dataclasses and dicts/lists of them are rebuilt recursively."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _build(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected an object, got {value!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - names)
        if unknown:
            raise DataError(f"{where}: unknown field(s) {', '.join(unknown)} (written by another spinegrade version?)")
        return tp(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin is dict and isinstance(value, dict):
        _, vt = typing.get_args(tp) or (None, None)
        return {k: _build(vt, v, f"{where}.{k}") if vt is not None else v for k, v in value.items()}
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def config_changes(old: dict, new: dict, prefix: tuple = (), opaque: frozenset = frozenset({"model_kwargs"}),
                   allowed: frozenset = RESUMABLE_FIELDS) -> list[str]:
    """'a.b: old -> new' for every field that differs, except those named in `allowed` (compared as JSON).

    Fields named in `opaque` (free-form options) are compared whole rather than key by key.
    """
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and k not in opaque:
            out += config_changes(a, b, prefix + (k,), opaque, allowed)
        elif a != b and k not in allowed:
            out.append(f"{'.'.join(prefix + (k,))}: {a!r} -> {b!r}")
    return out


@dataclass
class RunConfig:
    """Base of every run configuration: JSON in and out with its kind and schema version, field diffs."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    RESUMABLE: ClassVar[frozenset] = RESUMABLE_FIELDS

    def to_dict(self) -> dict:
        """Plain JSON data, tagged with the kind and version (tuples become lists, as JSON has them)."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        return {"kind": self.KIND, "version": self.VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict, where: str = "configuration"):
        """Rebuild from `to_dict` output; DataError on another kind, a newer version or an unknown field."""
        d = dict(d)
        kind, version = d.pop("kind", cls.KIND), d.pop("version", 1)
        if kind != cls.KIND:
            raise DataError(f"{where}: a {kind!r} configuration, not {cls.KIND!r}")
        if not isinstance(version, int) or version > cls.VERSION:
            raise DataError(f"{where}: configuration version {version!r}; this spinegrade reads up to "
                            f"{cls.VERSION} (update spinegrade)")
        return _build(cls, cls.upgrade(d, version), where)

    @classmethod
    def upgrade(cls, d: dict, version: int) -> dict:
        """Bring an older version's fields up to date (the first version needs nothing)."""
        return d

    @classmethod
    def load(cls, path: str | Path):
        """Read `path` (a config.json, or a run folder holding one)."""
        p = Path(path)
        p = p / CONFIG if p.is_dir() else p
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: not a readable run configuration: {e}") from None
        if not isinstance(d, dict):
            raise DataError(f"{p}: not a run configuration (expected a JSON object)")
        return cls.from_dict(d, where=str(p))

    def save(self, path: str | Path) -> Path:
        """Write atomically as indented JSON."""
        from ..files import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    def changes_from(self, old: RunConfig) -> list[str]:
        """Fields that differ from `old` and may not change on --resume (see RESUMABLE)."""
        return config_changes(old.to_dict(), self.to_dict(), allowed=self.RESUMABLE)

    def check_resume(self, run_dir: str | Path) -> None:
        """DataError naming every differing field when `run_dir` holds a different configuration."""
        p = Path(run_dir) / CONFIG
        if p.exists():
            changes = self.changes_from(type(self).load(p))
            if changes:
                raise DataError(f"{run_dir}: --resume with a different configuration: {'; '.join(changes)}")


@dataclass
class LoopConfig:
    """The training loop: optimisation, stopping, device, reproducibility."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of all steps with a linear warm-up, then cosine decay to zero
    patience: int = 5  # epochs without a better validation loss before stopping; 0 never stops early
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision where the device is a GPU
    seed: int = 0
    workers: int = -1  # data loader processes; -1: automatic (device.loader_workers: 0 on a CPU, up to 8 on a GPU)
    ema: float = 0.0  # > 0: validate and keep an exponential moving average of the weights with this decay per step

    def check_ema(self) -> None:
        if not 0.0 <= self.ema < 1.0:
            raise DataError(f"--ema {self.ema}: the weight average's decay per step must be >= 0 (off) and < 1")


@dataclass
class AugmentConfig:
    """Random training-time changes of an image; all off with `enabled=False`."""

    enabled: bool = True
    shift: float = 0.06  # fraction of the image size, each axis
    zoom: float = 0.10  # scale drawn from [1 - zoom, 1 + zoom]
    rotate: float = 10.0  # degrees, either way
    intensity: float = 0.15  # contrast / brightness / gamma jitter
    hflip: bool = True  # mirror left-right half the time; swaps patient sides where the view requires it


@dataclass
class TrainConfig(RunConfig):
    """A slice-grader run: which rows, which split, which model, how to train."""

    KIND: ClassVar[str] = "slice-grader"

    index: str | None = None  # slice index CSV
    model: str = "seed-cnn"
    model_kwargs: dict = field(default_factory=dict)
    image_size: int = 160
    condition_input: bool = True  # give the model the level/side/family one-hot
    folds: int = 5
    val_fold: int = 0
    class_weights: str = "metric"  # metric: 1/2/4 like the challenge; none: plain cross-entropy
    loop: LoopConfig = field(default_factory=LoopConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> TrainConfig:
        """Raise DataError on values that cannot work; returns self."""
        if self.class_weights not in CLASS_WEIGHTS:
            raise DataError(f"class weights {self.class_weights!r}: expected one of {', '.join(CLASS_WEIGHTS)}")
        if self.folds < 2:
            raise DataError(f"--folds {self.folds}: need at least 2 (one to validate on)")
        if not 0 <= self.val_fold < self.folds:
            raise DataError(f"--val-fold {self.val_fold} is not one of the {self.folds} folds (0..{self.folds - 1})")
        if self.image_size < 16:
            raise DataError(f"--image-size {self.image_size}: too small (>= 16 px)")
        if self.loop.epochs < 1 or self.loop.batch_size < 1:
            raise DataError("--epochs and --batch-size must be >= 1")
        self.loop.check_ema()
        return self
