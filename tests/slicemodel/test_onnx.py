"""Slice models on ONNX Runtime: every bundled model ships its networks as ONNX, a trained run is exported as it
trains (or later by `spinegrade export`), and ONNX Runtime grades real slices and the real DICOM studies as torch
does, within 1e-4."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.predict import predict
from spinegrade.runtime import BACKEND_ENV, onnx_path, runtime
from spinegrade.slicemodel.bundled import BUNDLED_DIR, GRADER, LOCALIZER, bundled_models
from spinegrade.slicemodel.model import SliceModel

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

TOL = 1e-4
TORCH, ONNX = runtime("cpu", "torch"), runtime("cpu", "onnx")


def _both(name_or_path) -> tuple[SliceModel, SliceModel]:
    return SliceModel.load(name_or_path, TORCH), SliceModel.load(name_or_path, ONNX)


@pytest.mark.parametrize("name", bundled_models())
def test_every_bundled_model_ships_its_networks_as_onnx_describing_themselves(name):
    from spinegrade.train.checkpoint import load_checkpoint

    on_torch, on_onnx = _both(name)
    assert on_torch.task.name == on_onnx.task.name
    for member in on_onnx.members:  # one, or each fold model of a fold ensemble (which may ship ONNX only)
        for role in (LOCALIZER, GRADER):
            ckpt = member.path / role / "best.pt"
            assert onnx_path(ckpt).is_file(), f"{name}/{role}: run `spinegrade export --run {name}`"
            _, desc = ONNX.load(ckpt)
            assert desc["kind"] == f"{on_onnx.task.name}-{role}"
            if not ckpt.is_file():
                assert all(desc.get(k) for k in ("model", "spec", "preprocessing")), (name, role)
                continue
            want = load_checkpoint(ckpt)
            for key in ("kind", "model", "spec", "labels", "preprocessing"):
                assert desc[key] == want[key], (name, role, key)


def _real_slices(ps, n_studies: int = 6):
    """The slices of a few studies (the first in the folder's order), their rows to grade."""
    studies = sorted(ps.slices["study_id"].unique())[:n_studies]
    return ps.subset_studies(studies)


@pytest.mark.realdata
def test_onnx_grades_real_slices_as_torch(foramina_set):
    from spinegrade.slicemodel.foramina import read_point_slices
    from spinegrade.slicemodel.pipeline import predict_rows

    sub = _real_slices(read_point_slices(foramina_set))
    assert len(sub.points) >= 20
    on_torch, on_onnx = _both("foramina-sagt1-v1")
    want, got = predict_rows(on_torch, sub), predict_rows(on_onnx, sub)
    probs = list(vocab.SEVERITY_KEYS)
    assert np.abs(got[probs].to_numpy(float) - want[probs].to_numpy(float)).max() < TOL
    assert np.abs(got[["x_pred", "y_pred"]].to_numpy(float) - want[["x_pred", "y_pred"]].to_numpy(float)).max() < 1e-2


@pytest.mark.realdata
@pytest.mark.parametrize("name", bundled_models())
def test_onnx_grades_the_real_dicom_studies_as_torch(name, real_rsna, tmp_path, monkeypatch):
    from spinegrade.runtime import OnnxNet

    shipped = sorted((BUNDLED_DIR / name).rglob("best.onnx"))
    if not any(f.with_suffix(".pt").is_file() for f in shipped):
        # shipped as ONNX only: a train install runs the same networks on ONNX Runtime (nothing to compare; the
        # real studies are graded on ONNX Runtime by the newcomer's and the torch-free predict tests)
        assert shipped and all(isinstance(TORCH.load(f.with_suffix(".pt"))[0], OnnxNet) for f in shipped)
        return
    subs = {}
    for backend in ("torch", "onnx"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        predict(real_rsna, name, tmp_path / backend, device="cpu", log=lambda *_: None)
        subs[backend] = pd.read_csv(tmp_path / backend / "submission.csv").set_index("row_id")
    assert len(subs["onnx"]) == 50 and (subs["onnx"].index == subs["torch"].index).all()
    diff = np.abs(subs["onnx"].to_numpy() - subs["torch"].to_numpy())
    assert diff.max() < TOL


def test_a_trained_run_is_exported_and_grades_on_onnx_as_on_torch(run, folder, tmp_path):
    from spinegrade.cli import main
    from spinegrade.slicemodel.foramina import read_point_slices
    from spinegrade.slicemodel.pipeline import predict_rows

    for role in (LOCALIZER, GRADER):
        assert onnx_path(run / role / "best.pt").is_file()  # written by training
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for f in copy.rglob("*.onnx"):
        f.unlink()
    with pytest.raises(Exception, match="export --run"):
        SliceModel.load(copy, ONNX)
    assert main(["export", "--run", str(copy)]) == 0
    ps = read_point_slices(folder)
    sub = ps.subset_studies(sorted(ps.slices["study_id"].unique())[:4])
    on_torch, on_onnx = _both(copy)
    want, got = predict_rows(on_torch, sub), predict_rows(on_onnx, sub)
    probs = list(vocab.SEVERITY_KEYS)
    assert np.abs(got[probs].to_numpy(float) - want[probs].to_numpy(float)).max() < TOL
    # an ONNX-only copy of the run is a run: inference needs no checkpoint
    for f in copy.rglob("best.pt"):
        f.unlink()
    again = predict_rows(SliceModel.load(copy, ONNX), sub)
    assert np.abs(again[probs].to_numpy(float) - got[probs].to_numpy(float)).max() == 0
