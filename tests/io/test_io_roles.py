"""Which series is Sagittal T1, Sagittal T2/STIR or Axial T2, and the reason given."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_factory import AXIAL, CORONAL, SAGITTAL, write_series
from spinegrade import vocab
from spinegrade.errors import DataError
from spinegrade.io.dicom import load_study
from spinegrade.io.roles import fluid_contrast, sagittal_weighting

T1, T2, UNKNOWN = vocab.SAGITTAL_T1, vocab.SAGITTAL_T2, vocab.UNKNOWN_ROLE


@pytest.mark.parametrize("tags, description, role, says", [
    ({"InversionTime": 160.0, "EchoTime": 45.0}, "", T2, "STIR"),
    ({"InversionTime": 160.0, "EchoTime": 20.0}, "T1", T2, "InversionTime 160"),  # tags beat words
    ({"EchoTime": 11.0, "RepetitionTime": 500.0}, "", T1, "short EchoTime 11"),
    ({"EchoTime": 100.0, "RepetitionTime": 3000.0}, "T1", T2, "long EchoTime 100"),
    ({"EchoTime": 9.0, "InversionTime": 900.0}, "", T1, "short EchoTime"),  # T1-FLAIR is T1
    ({"RepetitionTime": 600.0}, "", T1, "short RepetitionTime"),
    ({"RepetitionTime": 4000.0}, "", T2, "long RepetitionTime"),
    ({}, "T1", T1, "description 'T1'"),
    ({}, "T2", T2, "description 'T2'"),
    ({}, "t2_tse_sag_384", T2, "description"),
    ({}, "SAG T1 FSE", T1, "description"),
    ({}, "t1w_tse", T1, "description"),
    ({}, "t2_tirm_sag", T2, "description"),
    ({}, "SAG STIR", T2, "description"),
    ({"ProtocolName": "sag_T2"}, "series 3", T2, "sag_T2"),
    ({"EchoTime": 30.0, "RepetitionTime": 3000.0}, "PD SAG", None, "say neither"),  # proton density
    ({"EchoTime": 50.0}, "", None, "no description"),
    ({}, "T1 T2 map", None, "names neither"),
    ({}, "T12 vertebra", None, "names neither"),
    ({}, "", None, "no EchoTime"),
])
def test_sagittal_weighting(tags, description, role, says):
    got, why = sagittal_weighting(tags, description)
    assert got == role
    assert says in why


def test_fluid_contrast_is_higher_when_a_small_structure_is_brightest():
    rng = np.random.default_rng(0)
    tissue = 300 + rng.normal(0, 10, (64, 64))
    t2 = tissue.copy()
    t2[30:33, 10:50] = 1500  # a thin bright fluid column
    t1 = tissue.copy()
    t1[:20] = 600  # plenty of bright fat
    assert fluid_contrast(t2) > 2.0 * fluid_contrast(t1)


def _sagittal_pixels(kind: str, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        a = np.zeros((32, 40))
        a[4:28, 4:36] = 300 + rng.normal(0, 10, (24, 32))
        if kind == "t2":
            a[15:17, 6:34] = 1500
        else:
            a[4:12, 4:36] = 700
        out.append(np.clip(a, 0, 4095).astype(np.uint16))
    return out


def _study(tmp_path, sag_a: dict, sag_b: dict, axial: dict | None = None):
    study = tmp_path / "1000"
    write_series(study / "11", 3, orientation=SAGITTAL, series_uid="1.2.3.11", **sag_a)
    write_series(study / "22", 3, orientation=SAGITTAL, series_uid="1.2.3.22", **sag_b)
    write_series(study / "33", 3, orientation=AXIAL, series_uid="1.2.3.33", **(axial or {}))
    return study


def test_roles_from_tags_and_plane(tmp_path):
    study = _study(tmp_path, {"echo_time": 12, "repetition_time": 550, "description": "sag a"},
                   {"inversion_time": 150, "echo_time": 40, "description": "sag b"},
                   {"echo_time": 95, "description": "ax"})
    st = load_study(study, load_pixels=False)
    roles = {s.series_id: (s.role, s.role_reason) for s in st.series}
    assert roles["11"][0] == T1 and "short EchoTime 12 ms" in roles["11"][1]
    assert roles["22"][0] == T2 and "STIR" in roles["22"][1]
    assert roles["33"] == (vocab.AXIAL_T2, "axial plane (ImageOrientationPatient), EchoTime 95 ms")


def test_an_undecided_sagittal_takes_the_role_its_partner_leaves(tmp_path):
    study = _study(tmp_path, {"description": "T1"}, {"description": "SAG 2"})
    st = load_study(study, load_pixels=False)
    s = st.get("22")
    assert s.role == T2 and "the other sagittal series (11) is sagittal_t1" in s.role_reason


@pytest.mark.parametrize("load_pixels", [True, False])
def test_two_undecided_sagittals_are_told_apart_by_contrast(tmp_path, load_pixels):
    study = _study(tmp_path, {"description": "sag a", "pixels": _sagittal_pixels("t2")},
                   {"description": "sag b", "pixels": _sagittal_pixels("t1")})
    st = load_study(study, load_pixels=load_pixels)
    assert st.get("11").role == T2 and "image contrast" in st.get("11").role_reason
    assert st.get("22").role == T1 and "image contrast" in st.get("22").role_reason


def test_similar_contrast_leaves_both_unknown(tmp_path):
    study = _study(tmp_path, {"description": "sag a", "pixels": _sagittal_pixels("t1")},
                   {"description": "sag b", "pixels": _sagittal_pixels("t1")})
    st = load_study(study, load_pixels=False)
    assert st.get("11").role == UNKNOWN and st.get("22").role == UNKNOWN
    assert "weighting undecided" in st.get("11").role_reason


def test_coronal_is_unknown(tmp_path):
    write_series(tmp_path / "5" / "1", 3, orientation=CORONAL, description="T2")
    (s,) = load_study(tmp_path / "5").series
    assert s.role == UNKNOWN and "coronal" in s.role_reason


def test_descriptions_csv_wins_and_is_filtered_by_study(tmp_path):
    study = _study(tmp_path, {"description": "T1"}, {"description": "T2"})
    csv = tmp_path / "train_series_descriptions.csv"
    csv.write_text("study_id,series_id,series_description\n"
                   "1000,11,Sagittal T2/STIR\n1000,22,Sagittal T1\n1000,33,Axial T2\n"
                   "999,33,Sagittal T1\n")
    st = load_study(study, descriptions=csv, load_pixels=False)
    assert {s.series_id: s.role for s in st.series} == {"11": T2, "22": T1, "33": vocab.AXIAL_T2}
    assert st.get("11").role_reason == "from train_series_descriptions.csv ('Sagittal T2/STIR')"


def test_descriptions_mapping_and_gaps(tmp_path):
    study = _study(tmp_path, {"description": "T1"}, {"description": "T2"})
    st = load_study(study, descriptions={11: "Sagittal T1", "22": "Something Else"}, load_pixels=False)
    assert st.get("11").role == T1 and "given series descriptions" in st.get("11").role_reason
    assert st.get("22").role == T2 and "not a known description" in st.get("22").role_reason
    assert st.get("33").role == vocab.AXIAL_T2 and st.get("33").role_reason.startswith("not in ")


def test_bad_descriptions_csv_is_a_data_error(tmp_path):
    study = _study(tmp_path, {"description": "T1"}, {"description": "T2"})
    with pytest.raises(DataError, match="missing.csv: cannot read"):
        load_study(study, descriptions=tmp_path / "missing.csv", load_pixels=False)
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a series descriptions CSV"):
        load_study(study, descriptions=tmp_path / "x.csv", load_pixels=False)
