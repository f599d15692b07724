"""What a stage-1 localiser is: its view, network, input and targets. Plain data, no torch (the plan holds it).

`LocalizerSpec` is written into the run's plan and into each localiser checkpoint; inference reads the
input size and channel count back from the checkpoint, never from the defaults here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import vocab

INPUT_SIZE = 64
N_CHANNELS = 3  # the slice and its two neighbours
SIGMA = 3.0  # heatmap blob size in input pixels (a broad blob gives the early steps a gradient to follow)
SLICE_SIGMA = 0.6  # fall-off of the target amplitude per slice of distance (sagittal T1)
# per-view input sizes that differ from INPUT_SIZE: the foramina are small, and at 96 px their median 3D
# error fell from 5.3 to 3.8 mm (120 synthetic studies, fold 0)
VIEW_INPUT_SIZES = {vocab.SAGITTAL_T1: 96}


@dataclass
class LocalizerSpec:
    """One view's heatmap network: network and options, input size and channels, target blobs."""

    view: str
    network: str = "unet-small"
    network_kwargs: dict = field(default_factory=dict)
    input_size: int = INPUT_SIZE
    n_channels: int = N_CHANNELS
    sigma: float = SIGMA  # target blob, input pixels
    slice_sigma: float = SLICE_SIGMA  # target amplitude fall-off per slice (sagittal T1)
    # weight of the spatial cross-entropy beside the per-pixel loss (see localize/train.HeatmapTask): without it
    # the sagittal T1 localiser sat at one level's spacing of error for most of a run (120 synthetic studies,
    # fold 0, one thread: best mean error 12.3 mm with 25 % of points on the wrong level, against 3.1 mm and
    # 2 % with it)
    spatial_weight: float = 0.1
    augment: bool = True  # shift and intensity changes in training


def default_localizer(view: str) -> LocalizerSpec:
    """The localiser a plan starts from for `view`."""
    return LocalizerSpec(view=view, input_size=VIEW_INPUT_SIZES.get(view, INPUT_SIZE))
