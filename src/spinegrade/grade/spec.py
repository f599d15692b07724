"""What a stage-2 grader is: its crop, its network, how it trains. Plain data, no torch (the plan holds it).

`GraderSpec` is written into the run's plan and into each grader checkpoint; inference rebuilds the crop
from the checkpoint, never from `DEFAULT_SPECS`, so changing a default here does not change old runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import vocab

CLASS_WEIGHTS = ("metric", "none")


@dataclass(frozen=True)
class CropSpec:
    """How a condition family is cropped."""

    role: str  # the series role it is read on
    size_mm: float = 40.0
    out_px: int = 48
    n_slices: int = 3
    slice_step: int = 1  # slices between the channels


DEFAULT_SPECS: dict[str, CropSpec] = {
    vocab.SPINAL: CropSpec(vocab.SAGITTAL_T2, size_mm=40.0),
    vocab.FORAMINAL: CropSpec(vocab.SAGITTAL_T1, size_mm=32.0),
    vocab.SUBARTICULAR: CropSpec(vocab.AXIAL_T2, size_mm=32.0),
}


@dataclass
class Jitter:
    """Simulated localiser error and appearance change, drawn per item and epoch."""

    shift_mm: float = 2.0  # standard deviation of the in-plane shift, each axis
    slice_prob: float = 0.15  # chance of moving one slice off
    rotate_deg: float = 10.0
    scale: float = 0.1
    intensity: float = 0.1


def crop_channels(family: str, crop: CropSpec) -> int:
    """Input channels of a family's grader: the crop's slices, twice for the spinal canal (sagittal + axial)."""
    return crop.n_slices * (2 if family == vocab.SPINAL else 1)


@dataclass
class GraderSpec:
    """One condition family's grader: crop, network and options, training-time jitter, loss weights."""

    family: str
    crop: CropSpec
    network: str = "seed-cnn"
    network_kwargs: dict = field(default_factory=lambda: {"widths": [16, 32, 64, 96, 128], "pool": 2})
    jitter: Jitter = field(default_factory=Jitter)
    augment: bool = True  # False: train on the exact ground-truth points (no jitter)
    class_weights: str = "metric"  # metric: the loss weights rows 1/2/4 like the challenge; none: plain
    condition_input: bool = True  # give the network the level/side/family one-hot

    @property
    def in_channels(self) -> int:
        """Input channels of this grader's network (see `crop_channels`)."""
        return crop_channels(self.family, self.crop)


def default_grader(family: str) -> GraderSpec:
    """The grader a plan starts from for `family`."""
    return GraderSpec(family=family, crop=DEFAULT_SPECS[family])
