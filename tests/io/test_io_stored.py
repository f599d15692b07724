"""Stored pixels: the files' integers and each slice's transform give the reader's float32 pixels exactly,
also after a round trip through the prepare cache."""

from __future__ import annotations

import numpy as np
from dicom_factory import write_series as write_dicom_series

from spinegrade.data.prepare import Cache, write_series
from spinegrade.io.dicom import load_study


def test_monochrome1_and_per_slice_rescale_read_back_exactly(tmp_path):
    study = tmp_path / "study"
    write_dicom_series(study / "1", 3, photometric="MONOCHROME1", rescale=(2.5, -100.0), bits=12)
    write_dicom_series(study / "1", 2, photometric="MONOCHROME1", rescale=(0.75, 3.0), bits=12, origin=(0, 0, 12),
                       names=["x1.dcm", "x2.dcm"], instances=[4, 5])
    (s,) = load_study(study).series
    (stored,) = load_study(study, stored=True).series
    assert not stored.stored.uniform  # two rescales in one series
    write_series(stored, tmp_path / "cache", study)
    back = Cache(tmp_path / "cache").load_series("study", "1")
    assert back.stored.values.dtype == np.uint16
    assert np.array_equal(np.asarray(back.pixels), s.pixels)
    assert np.array_equal(back.pixels[1:4], s.pixels[1:4]) and np.array_equal(back.pixels[[4, 0]], s.pixels[[4, 0]])
    raw = np.asarray(back.stored.values, dtype=np.float32)  # 12 bits stored: MONOCHROME1 inverts about 4095
    assert np.array_equal(s.pixels[0], (np.float32(4095) - raw[0]) * np.float32(2.5) + np.float32(-100.0))
    assert np.array_equal(s.pixels[3], (np.float32(4095) - raw[3]) * np.float32(0.75) + np.float32(3.0))
