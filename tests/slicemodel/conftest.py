"""A generated point-labelled slice folder and a small foramen run trained on it, shared by the module's tests."""

from __future__ import annotations

import pytest

from spinegrade.slicemodel.foramina import write_synthetic_point_slices
from spinegrade.slicemodel.grader import GraderSpec
from spinegrade.slicemodel.localizer import LocalizerSpec
from spinegrade.slicemodel.pipeline import SliceConfig, train_slices
from spinegrade.train.config import LoopConfig

SMALL = dict(localizer=LocalizerSpec(input_size=64),
             grader=GraderSpec(network="seed-cnn", network_kwargs=(("widths", (8, 16, 32, 32, 32)),), crop_px=32,
                               crop_frac=0.2),
             localizer_loop=LoopConfig(epochs=8, batch_size=8, lr=3e-3, patience=0),
             grader_loop=LoopConfig(epochs=6, batch_size=16, lr=3e-3, patience=0))


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    return write_synthetic_point_slices(tmp_path_factory.mktemp("fp") / "set", n_studies=30)


@pytest.fixture(scope="session")
def run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("fr") / "run"
    cfg = SliceConfig(slices=str(folder), folds=3, val_fold=0, device="cpu", inner_val=0.2, **SMALL)
    train_slices(cfg, out, log=lambda *_: None)
    return out


SMALL_CANAL = dict(task="canal", localizer=LocalizerSpec(input_size=64, sigma=1.5),
                   grader=GraderSpec(network="seed-cnn", network_kwargs=(("widths", (8, 16, 32, 32, 32)),), crop_px=32,
                                     crop_frac=0.3, class_weights="none"),
                   localizer_loop=LoopConfig(epochs=10, batch_size=8, lr=3e-3, patience=0),
                   grader_loop=LoopConfig(epochs=6, batch_size=16, lr=3e-3, patience=0))


@pytest.fixture(scope="session")
def canal_folder(tmp_path_factory):
    from spinegrade.slicemodel.canal import write_synthetic_canal_slices

    return write_synthetic_canal_slices(tmp_path_factory.mktemp("cs") / "set", n_images=40, size=96)


@pytest.fixture(scope="session")
def canal_run(canal_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cr") / "run"
    cfg = SliceConfig(slices=str(canal_folder), folds=4, val_fold=0, device="cpu", inner_val=0.2, **SMALL_CANAL)
    train_slices(cfg, out, log=lambda *_: None)
    return out
