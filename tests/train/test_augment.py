"""Augmentation: random but reproducible, and a mirror swaps patient sides exactly where the view requires."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from spinegrade import vocab
from spinegrade.data.slices import COND_LAYOUT, SliceDataset, SliceIndex
from spinegrade.train.augment import augment_slice, mirror, mirror_swaps_sides
from spinegrade.train.config import AugmentConfig

SIDE_LEFT, SIDE_RIGHT = COND_LAYOUT.index("side=left"), COND_LAYOUT.index("side=right")


def test_mirror_rules_per_view():
    img = torch.arange(12.0).reshape(1, 3, 4)
    flipped, cond = mirror(img, "left_subarticular_stenosis", vocab.AXIAL_T2)
    assert torch.equal(flipped, img.flip(-1)) and cond == "right_subarticular_stenosis"
    assert mirror(img, "right_neural_foraminal_narrowing", vocab.AXIAL_T2)[1] == "left_neural_foraminal_narrowing"
    # sagittal: left-right in the image is anterior-posterior; the slice still shows the same side
    assert mirror(img, "left_neural_foraminal_narrowing", vocab.SAGITTAL_T1)[1] == "left_neural_foraminal_narrowing"
    assert mirror(img, "spinal_canal_stenosis", vocab.AXIAL_T2)[1] == "spinal_canal_stenosis"
    assert not mirror_swaps_sides(vocab.SAGITTAL_T2) and mirror_swaps_sides(vocab.AXIAL_T2)


def _marker_dataset(condition: str, view: str, n: int = 24) -> SliceDataset:
    """Rows whose image has one bright block in the LEFT quarter of the image."""
    table = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "study_id": "1", "condition": condition,
                          "level": "l4_l5", "severity": "Moderate"})
    index = SliceIndex(table, root=None, condition=np.array([condition] * n, dtype=object),
                       level=np.array(["l4_l5"] * n, dtype=object), label=np.ones(n, dtype=np.int64),
                       view=np.array([view] * n, dtype=object))

    def source(row):
        img = np.zeros((32, 32), dtype=np.float32)
        img[12:20, 2:8] = 1
        return img

    return SliceDataset(index, source, 32, augment=partial(augment_slice, cfg=AugmentConfig()), seed=5)


def _marker_on_right(image: torch.Tensor) -> bool:
    return bool(image[0, :, 16:].sum() > image[0, :, :16].sum())


@pytest.mark.parametrize("condition, view, swaps", [
    ("left_subarticular_stenosis", vocab.AXIAL_T2, True),
    ("left_neural_foraminal_narrowing", vocab.SAGITTAL_T1, False),
])
def test_dataset_mirrors_and_keeps_the_side_right(condition, view, swaps):
    ds = _marker_dataset(condition, view)
    flips = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            mirrored = _marker_on_right(item["image"])
            flips += mirrored
            right = bool(item["cond"][SIDE_RIGHT])
            assert right == (mirrored and swaps)
            assert bool(item["cond"][SIDE_LEFT]) != right
            assert item["label"].item() == 1  # the grade belongs to the condition shown, whatever its side
    assert 0.25 < flips / (3 * len(ds)) < 0.75


def test_augmentation_is_reproducible_and_changes_the_image():
    img = torch.rand(1, 32, 32)
    cfg = AugmentConfig()
    a, _ = augment_slice(img, "spinal_canal_stenosis", vocab.SAGITTAL_T2, np.random.default_rng(1), cfg)
    b, _ = augment_slice(img, "spinal_canal_stenosis", vocab.SAGITTAL_T2, np.random.default_rng(1), cfg)
    c, _ = augment_slice(img, "spinal_canal_stenosis", vocab.SAGITTAL_T2, np.random.default_rng(2), cfg)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == img.shape
    off, cond = augment_slice(img, "left_subarticular_stenosis", vocab.AXIAL_T2, np.random.default_rng(1),
                              AugmentConfig(enabled=False))
    assert torch.equal(off, img) and cond == "left_subarticular_stenosis"


def test_geometry_moves_the_content():
    img = torch.zeros(1, 33, 33)
    img[0, 16, 16] = 1
    cfg = AugmentConfig(shift=0.2, zoom=0, rotate=0, intensity=0, hflip=False)
    moved, _ = augment_slice(img, "spinal_canal_stenosis", vocab.SAGITTAL_T2, np.random.default_rng(0), cfg)
    y, x = np.unravel_index(int(moved[0].argmax()), moved[0].shape)
    assert (y, x) != (16, 16) and abs(y - 16) <= 7 and abs(x - 16) <= 7  # at most 20 % of 33 px
