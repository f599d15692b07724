"""Acceptance on the two real RSNA training studies in ../shared/realdata (skipped when absent).

The shared folder is read-only to us: tests that add broken or renamed files work on copies in tmp.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from spinegrade import vocab
from spinegrade.cli import main
from spinegrade.geometry import project_point
from spinegrade.io.dicom import load_study
from spinegrade.io.roles import assign_roles

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def images(two_studies) -> Path:
    return two_studies / "train_images"


@pytest.fixture(scope="module")
def studies(images) -> dict:
    """Both studies read with pixels, once for the module."""
    return {p.name: load_study(p) for p in sorted(images.iterdir())}


@pytest.fixture(scope="module")
def challenge_roles(realdata, images) -> dict[tuple[str, str], str]:
    """(study_id, series_id) -> role, from the challenge's own train_series_descriptions.csv."""
    wanted = {p.name for p in images.iterdir()}
    with open(realdata / "rsna2024_labels" / "train_series_descriptions.csv", newline="") as fh:
        return {(r["study_id"], r["series_id"]): vocab.parse_role(r["series_description"])
                for r in csv.DictReader(fh) if r["study_id"] in wanted}


def _coords(two_studies) -> list[dict]:
    with open(two_studies / "DERIVED_coords_these_studies.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_inspect_without_descriptions_finds_the_challenge_roles(images, challenge_roles, capsys):
    assert len(challenge_roles) == 6
    got: dict[tuple[str, str], set[str]] = {}
    for study in sorted(images.iterdir()):
        assert main(["inspect", str(study), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        for s in info["series"]:
            got.setdefault((info["study_id"], s["source_series_id"]), set()).add(s["role"])
            assert "description" in s["role_reason"] or "axial plane" in s["role_reason"]
    assert got == {k: {v} for k, v in challenge_roles.items()}


def test_descriptions_csv_gives_the_same_roles_with_its_name(images, realdata, challenge_roles):
    csv_path = realdata / "rsna2024_labels" / "train_series_descriptions.csv"
    for study in sorted(images.iterdir()):
        st = load_study(study, descriptions=csv_path, load_pixels=False)
        for s in st.series:
            assert s.role == challenge_roles[(st.study_id, s.source_series_id)]
            assert s.role_reason.startswith("from train_series_descriptions.csv")


def test_axial_series_are_split_into_their_per_level_stacks(studies):
    for st in studies.values():
        axial = st.by_role(vocab.AXIAL_T2)
        assert len(axial) >= 5 and len({s.source_series_id for s in axial}) == 1
        allinst = sorted(int(i) for s in axial for i in s.instance_numbers)
        assert allinst == list(range(1, len(allinst) + 1))
        for s in axial:
            # each stack is a run of consecutive instances, evenly spaced along its own normal
            assert sorted(s.instance_numbers) == list(range(min(s.instance_numbers), max(s.instance_numbers) + 1))
            if s.n_slices > 1:
                assert np.all(np.diff(s.geometry.slice_offsets) > 0)


def test_spinal_canal_points_project_onto_the_labelled_axial_slice(studies, two_studies):
    rows = _coords(two_studies)
    checked = 0
    for r in (r for r in rows if r["condition"] == "Spinal Canal Stenosis"):
        st = studies[r["study_id"]]
        sag = st.get(r["series_id"])
        assert sag.role == vocab.SAGITTAL_T2
        k = sag.slice_of_instance(int(r["instance_number"]))
        best = None
        for ax in st.by_role(vocab.AXIAL_T2):
            j, x, y, dist = project_point(sag.geometry, k, float(r["x"]), float(r["y"]), ax.geometry)
            if ax.geometry.contains_pixel(x, y) and (best is None or dist < best[1]):
                best = (int(ax.instance_numbers[j]), dist)
        labelled = [int(q["instance_number"]) for q in rows
                    if q["study_id"] == r["study_id"] and q["level"] == r["level"]
                    and q["condition"] in ("Left Subarticular Stenosis", "Right Subarticular Stenosis")]
        assert best is not None and labelled
        assert min(abs(best[0] - lab) for lab in labelled) <= 1, (r["study_id"], r["level"], best, labelled)
        assert best[1] < 3.0  # mm off the plane: within half a slice gap or so
        checked += 1
    assert checked == 10


def test_pixels_equal_pydicom_pixel_array(studies):
    for st in studies.values():
        for s in st.series:
            assert s.pixels.dtype == np.float32 and s.pixels.shape == (s.n_slices, *s.shape)
            for k in (0, s.n_slices - 1):
                ds = pydicom.dcmread(s.files[k])
                assert int(ds.InstanceNumber) == s.instance_numbers[k]
                np.testing.assert_array_equal(s.pixels[k], ds.pixel_array.astype(np.float32))
            assert s.transfer_syntax == str(pydicom.uid.RLELossless)


def test_broken_files_in_a_real_series_are_listed_by_inspect(images, tmp_path, capsys):
    src = images / "100206310" / "1792451510"
    dst = tmp_path / "100206310" / "1792451510"
    shutil.copytree(src, dst)
    (dst / "0.dcm").write_bytes(b"")
    (dst / "99.dcm").write_bytes((src / "1.dcm").read_bytes()[:300])
    (dst / "readme.txt").write_text("downloaded from a mirror\n")
    st = load_study(tmp_path / "100206310")
    (s,) = st.series
    assert s.n_slices == 18 and s.role == vocab.SAGITTAL_T2
    assert main(["inspect", str(tmp_path / "100206310"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    skipped = {k["path"]: k["reason"] for k in info["series"][0]["skipped"]}
    assert skipped == {
        "1792451510/0.dcm": "empty file (0 bytes)",
        "1792451510/99.dcm": "truncated: the file ends inside its header (300 bytes)",
        "1792451510/readme.txt": "not a DICOM file (no 'DICM' marker after the 128-byte preamble)",
    }
    assert main(["inspect", str(tmp_path / "100206310")]) == 0
    assert "skipped 1792451510/99.dcm: truncated" in capsys.readouterr().out


def test_shuffled_file_names_still_sort_along_the_normal(images, studies, tmp_path):
    src = images / "100206310" / "2092806862"
    names = [f"img_{i:03d}" for i in range(18)]
    random.Random(7).shuffle(names)
    folder = tmp_path / "export" / "DICOM" / "0001"
    folder.mkdir(parents=True)
    for f, name in zip(sorted(src.iterdir()), names):
        shutil.copy(f, folder / name)
    st = load_study(tmp_path / "export")  # nested, not the RSNA layout: grouped by SeriesInstanceUID
    (s,) = st.series
    ref = studies["100206310"].get("2092806862")
    assert s.series_id == "2092806862" and s.role == vocab.SAGITTAL_T1
    assert s.instance_numbers.tolist() == ref.instance_numbers.tolist() == list(range(18, 0, -1))
    assert np.all(np.diff(s.geometry.slice_offsets) > 0)
    np.testing.assert_array_equal(s.pixels, ref.pixels)


def test_real_sagittals_without_descriptions_are_told_apart_by_contrast(studies, challenge_roles):
    for st in studies.values():
        sag = [dataclasses.replace(s, description="", role="", role_reason="",
                                   tags={k: v for k, v in s.tags.items() if k != "SeriesDescription"})
               for s in st.series if s.geometry.plane == "sagittal"]
        assert len(sag) == 2
        assign_roles(sag)
        for s in sag:
            assert s.role == challenge_roles[(st.study_id, s.series_id)]
            assert "image contrast" in s.role_reason
