"""Locating a label row (series, instance, x, y) in a study: one helper for every stage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spinegrade.io.dicom import load_study


def test_locate_row_gives_series_slice_and_patient_point(synth_cohort):
    coords = pd.read_csv(synth_cohort / "train_label_coordinates.csv")
    sid = int(coords.study_id.iloc[0])
    study = load_study(synth_cohort / "train_images" / str(sid))
    rows = coords[coords.study_id == sid]
    for r in rows.itertuples(index=False):
        loc = study.locate_row(r)
        assert loc is not None and str(r.series_id) in (loc.series.series_id, loc.series.source_series_id)
        assert loc.series.instance_numbers[loc.slice_index] == r.instance_number
        origin = loc.series.geometry.pixel_to_patient(loc.slice_index, 0.0, 0.0)
        # one pixel along x moves the point by the column spacing in patient space
        step = loc.patient - loc.series.geometry.pixel_to_patient(loc.slice_index, r.x - 1, r.y)
        assert np.isclose(np.linalg.norm(step), loc.series.pixel_spacing[1])
        assert not np.allclose(loc.patient, origin) or (r.x, r.y) == (0, 0)
    r = rows.iloc[0]
    assert study.locate_point(r.series_id, 10_000, r.x, r.y) is None
    assert study.locate_point("no-such-series", int(r.instance_number), r.x, r.y) is None
