"""A training run's configuration: one typed object, written to `<run>/config.json` and read back.

`LoopConfig` is what the engine needs and is shared by every model that trains on it; `TrainConfig` adds
what the slice grader reads (data, model, augmentation). No torch here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

CLASS_WEIGHTS = ("metric", "none")


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
    workers: int = 0  # data loader processes


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
class TrainConfig:
    """A slice-grader run: which rows, which split, which model, how to train."""

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
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        loop = LoopConfig(**d.pop("loop", {}))
        augment = AugmentConfig(**d.pop("augment", {}))
        return cls(**d, loop=loop, augment=augment)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"{path}: not a readable run configuration: {e}") from None
