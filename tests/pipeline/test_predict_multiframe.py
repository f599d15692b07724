"""A real study converted to Enhanced MR multi-frame files (one file per series) grades like the classic one."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from spinegrade.results import read_predictions
from spinegrade.predict import predict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from dicom_factory import to_enhanced_mr  # noqa: E402


def test_multiframe_study_gives_the_same_25_probabilities(two_studies, tiny_run, tmp_path):
    classic = two_studies / "train_images" / "100206310"
    multi = tmp_path / "100206310"
    for series in sorted(p for p in classic.iterdir() if p.is_dir()):
        to_enhanced_mr(sorted(series.glob("*.dcm")), multi / series.name / "enhanced.dcm")
    assert len(list(multi.rglob("*.dcm"))) == 3
    got = {}
    for name, folder in (("classic", classic), ("multi", multi)):
        predict(folder, tiny_run, tmp_path / name, device="cpu", log=lambda *_: None)
        _, (res,) = read_predictions(tmp_path / name)
        assert res.study_id == "100206310" and res.skipped == []
        got[name] = res
    c, m = got["classic"], got["multi"]
    assert [(s.series_id, s.role, s.n_slices) for s in m.series] == [(s.series_id, s.role, s.n_slices)
                                                                     for s in c.series]
    pc = np.array([f.probs for f in sorted(c.findings, key=lambda f: (f.condition, f.level))])
    pm = np.array([f.probs for f in sorted(m.findings, key=lambda f: (f.condition, f.level))])
    assert pc.shape == (25, 3)
    np.testing.assert_allclose(pm, pc, atol=1e-5)
    assert [f.source for f in m.findings] == [f.source for f in c.findings]
