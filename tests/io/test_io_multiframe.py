"""Enhanced MR multi-frame files read as first-class input: each frame a slice with its own geometry."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_factory import AXIAL, SAGITTAL, to_enhanced_mr, write_series
from spinegrade.errors import DataError
from spinegrade.io.dicom import load_series, load_study, read_slice


def test_a_multiframe_file_reads_like_its_single_frame_series(tmp_path):
    write_series(tmp_path / "classic", 5, orientation=SAGITTAL, step=3.5, pixel_spacing=(0.7, 0.6),
                 rescale=(2.0, -10.0), echo_time=90, repetition_time=3000, instances=[5, 3, 1, 2, 4])
    to_enhanced_mr(sorted((tmp_path / "classic").glob("*.dcm")), tmp_path / "enhanced" / "all.dcm")
    (c,) = load_series(tmp_path / "classic")
    (e,) = load_series(tmp_path / "enhanced")
    np.testing.assert_array_equal(e.pixels, c.pixels)
    np.testing.assert_allclose(e.positions, c.positions)
    np.testing.assert_allclose(e.orientation, c.orientation)
    assert e.pixel_spacing == c.pixel_spacing == (0.7, 0.6)
    assert e.geometry.plane == "sagittal" and e.n_slices == 5
    assert e.tags["EchoTime"] == c.tags["EchoTime"] == 90.0 and e.tags["RepetitionTime"] == 3000.0
    assert e.role == c.role
    # frames are numbered 1..n in file order (InstanceNumber order of the classic files)
    assert sorted(e.instance_numbers.tolist()) == [1, 2, 3, 4, 5]
    assert e.skipped == [] and e.files == [str(tmp_path / "enhanced" / "all.dcm")] * 5
    with pytest.raises(DataError, match="multi-frame file \\(5 frames\\): read it with load_series"):
        read_slice(tmp_path / "enhanced" / "all.dcm")


def test_per_frame_orientations_split_into_stacks(tmp_path):
    write_series(tmp_path / "c", 3, orientation=AXIAL, series_uid="1.2.3.4")
    tilted = (1.0, 0.0, 0.0, 0.0, 0.94, 0.342)  # 20 degrees about x: another disc's stack
    write_series(tmp_path / "c", 2, orientation=tilted, origin=(0, 0, 60), series_uid="1.2.3.4",
                 names=["t1.dcm", "t2.dcm"], instances=[4, 5])
    to_enhanced_mr(sorted((tmp_path / "c").glob("*.dcm")), tmp_path / "study" / "9" / "mf.dcm")
    st = load_study(tmp_path / "study")
    assert [(s.series_id, s.n_slices) for s in st.series] == [("9", 3), ("9.2", 2)]
    assert any("orientation" in n for n in st.series[0].notes)
