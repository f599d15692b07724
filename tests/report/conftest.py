"""Studies with their ground truth as StudyResults: the two real RSNA studies and one synthetic study."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from spinegrade import vocab


@pytest.fixture(scope="session")
def real_results(two_studies: Path):
    """[(Study with pixels, StudyResult from its labels, its coordinate rows)] for both real studies."""
    from spinegrade.data.rsna import read_coordinates, read_labels, read_series_descriptions
    from spinegrade.io.dicom import load_study
    from spinegrade.results import study_result_from_labels

    coords = read_coordinates(two_studies / "DERIVED_coords_these_studies.csv")
    labels = read_labels(two_studies / "DERIVED_labels_these_studies.csv")
    series = read_series_descriptions(two_studies / "DERIVED_series_descriptions_these_studies.csv")
    out = []
    for sid in labels.index:
        desc = {int(r.series_id): r.role for r in series[series.study_id == sid].itertuples()}
        study = load_study(two_studies / "train_images" / str(sid), descriptions=desc)
        row = labels.loc[sid, list(vocab.TARGETS)]
        lab = {t: (None if pd.isna(v) else int(v)) for t, v in row.items()}
        rows = coords[coords.study_id == sid].reset_index(drop=True)
        out.append((study, study_result_from_labels(study, rows, lab), rows))
    return out


@pytest.fixture(scope="session")
def synth_result(synth_cohort: Path):
    """(Study with pixels, StudyResult from its labels) of the first synthetic study."""
    from spinegrade.serve.app import label_predictor

    folder = sorted((synth_cohort / "train_images").iterdir())[0]
    result, study = label_predictor(synth_cohort)(folder)
    return study, result
