"""The synthetic cohort: RSNA layout, valid DICOM, determinism, exact and consistent coordinates, and grades
that show in the images. Most tests share the session's 8-study cohort (`synth_cohort` in conftest)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless

from spinegrade import vocab
from spinegrade.data import synth
from spinegrade.geometry import SeriesGeometry

RSNA_FILES = ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv", "sample_submission.csv")


def _tables(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (pd.read_csv(root / "train.csv"), pd.read_csv(root / "train_series_descriptions.csv"),
            pd.read_csv(root / "train_label_coordinates.csv"))


def _files(root: Path) -> list[Path]:
    return sorted((root / synth.IMAGES_DIR).glob("*/*/*.dcm"))


def _truth(root: Path) -> dict:
    return json.loads((root / synth.TRUTH_FILE).read_text())


def _role(series: pd.DataFrame, series_id: int) -> str:
    return vocab.parse_role(series.loc[series.series_id == series_id, "series_description"].iloc[0])


# --- layout ------------------------------------------------------------------------------------------------
def test_layout_and_csv_columns_are_exactly_rsna(synth_cohort):
    root = synth_cohort
    assert sorted(p.name for p in root.iterdir()) == sorted([*RSNA_FILES, synth.IMAGES_DIR, synth.TRUTH_FILE])
    train, series, coords = _tables(root)
    assert list(train.columns) == ["study_id", *vocab.TARGETS]
    assert list(series.columns) == ["study_id", "series_id", "series_description"]
    assert list(coords.columns) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    assert len(train) == 8 and train.study_id.is_unique and train.study_id.is_monotonic_increasing
    assert train.study_id.between(1_000_000, 9_999_999_999).all()
    assert set(train[list(vocab.TARGETS)].stack().unique()) <= set(vocab.SEVERITIES)
    assert set(series.series_description) <= set(vocab.ROLE_DESCRIPTIONS.values())
    assert set(coords.condition) <= set(vocab.CONDITION_NAMES.values())
    assert set(coords.level) == set(vocab.LEVEL_NAMES.values())
    sub = pd.read_csv(root / "sample_submission.csv")
    assert list(sub.columns) == list(vocab.SUBMISSION_COLUMNS)
    assert len(sub) == 3 * len(vocab.TARGETS)
    assert {vocab.parse_row_id(r)[0] for r in sub.row_id} <= set(train.study_id.astype(str))
    assert np.allclose(sub[list(vocab.SEVERITY_KEYS)].to_numpy(), 1 / 3)
    # every listed series is a folder of 1.dcm .. n.dcm, and nothing else is there
    folders = {(int(p.parent.name), int(p.name)) for p in (root / synth.IMAGES_DIR).glob("*/*")}
    assert folders == set(zip(series.study_id, series.series_id))
    for st, se in folders:
        names = sorted(int(f.stem) for f in (root / synth.IMAGES_DIR / str(st) / str(se)).iterdir())
        assert names == list(range(1, len(names) + 1))


def test_every_file_is_a_decodable_mr_image_with_consistent_uids(synth_cohort):
    study_uids, for_uids, series_uids, sop_uids, syntaxes = {}, {}, {}, set(), set()
    for f in _files(synth_cohort):
        ds = pydicom.dcmread(f)
        study, series = f.parts[-3], f.parts[-2]
        assert ds.SOPClassUID == MRImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MR" and ds.PatientID == study and ds.InstanceNumber == int(f.stem)
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 0)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        px = ds.pixel_array
        assert px.shape == (ds.Rows, ds.Columns) and px.dtype == np.uint16 and px.max() <= 4095
        assert px.std() > 10  # an image, not a blank
        assert len(ds.ImageOrientationPatient) == 6 and len(ds.ImagePositionPatient) == 3
        assert float(ds.SliceThickness) > 0 and float(ds.SpacingBetweenSlices) >= float(ds.SliceThickness)
        study_uids.setdefault(study, set()).add(ds.StudyInstanceUID)
        for_uids.setdefault(study, set()).add(ds.FrameOfReferenceUID)
        series_uids.setdefault((study, series), set()).add(ds.SeriesInstanceUID)
        assert ds.SOPInstanceUID not in sop_uids
        sop_uids.add(ds.SOPInstanceUID)
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
    assert all(len(u) == 1 for u in study_uids.values()) and all(len(u) == 1 for u in for_uids.values())
    assert len({next(iter(u)) for u in study_uids.values()}) == len(study_uids)
    assert all(len(u) == 1 for u in series_uids.values())
    assert len({next(iter(u)) for u in series_uids.values()}) == len(series_uids)
    assert syntaxes == {RLELossless, ExplicitVRLittleEndian}  # "mixed"


def test_studies_vary_in_size_spacing_and_acquisition(synth_cohort):
    shapes, spacings, counts, descriptions = set(), set(), set(), set()
    for folder in (synth_cohort / synth.IMAGES_DIR).glob("*/*"):
        ds = pydicom.dcmread(folder / "1.dcm", stop_before_pixels=True)
        shapes.add((ds.Rows, ds.Columns))
        spacings.add(float(ds.PixelSpacing[0]))
        counts.add(len(list(folder.iterdir())))
        descriptions.add(ds.SeriesDescription)
    assert len(shapes) >= 4 and min(min(s) for s in shapes) >= 240 and max(max(s) for s in shapes) <= 640
    assert len(spacings) >= 8 and 0.5 <= min(spacings) and max(spacings) <= 0.9
    assert len(counts) >= 4 and len(descriptions) >= 4


# --- determinism ---------------------------------------------------------------------------------------
def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers_and_another_seed_differs(tmp_path):
    a = synth.synthesize_cohort(tmp_path / "a", n_studies=2, seed=7, workers=1)
    synth.synthesize_cohort(tmp_path / "b", n_studies=2, seed=7, workers=2)
    synth.synthesize_cohort(tmp_path / "c", n_studies=1, seed=8)
    print(f"\nsynth throughput (1 process): {a['studies_per_minute']:.1f} studies/min, "
          f"{a['n_bytes'] / a['n_studies'] / 1e6:.1f} MB/study")
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a["n_files"] == sum(1 for k in da if k.endswith(".dcm")) > 0
    assert da == db
    assert not set(da.items()) & set(dc.items())  # not one file in common, CSVs included
    # study i does not depend on the cohort size
    assert pd.read_csv(tmp_path / "c" / "train.csv").study_id[0] == synth._study_ids(8, 1)[0]
    assert synth._study_ids(7, 5)[:2] == synth._study_ids(7, 2)


def test_phantom_and_plan_rebuild_what_was_written(synth_cohort):
    train, series, _ = _tables(synth_cohort)
    for t in _truth(synth_cohort)["studies"]:
        ph, plans = synth.plan_study(1234, t["index"])
        assert ph.study_id == t["study_id"] == synth.phantom_for_study(1234, t["index"]).study_id
        row = train[train.study_id == ph.study_id].iloc[0]
        for tgt, g in ph.grades.items():
            assert row[tgt] == vocab.SEVERITIES[g] or tgt in t["blank_targets"]
        assert [(p.series_id, p.role) for p in plans] == [
            (se, _role(series, se)) for se in series[series.study_id == ph.study_id].series_id]


# --- coordinates ---------------------------------------------------------------------------------------
def _geometry(folder: Path) -> tuple[SeriesGeometry, np.ndarray]:
    """SeriesGeometry from the DICOM tags of one stack (sorted along its normal) and its instance numbers."""
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in folder.glob("*.dcm")]
    return _stack_geometry(heads)


def _stack_geometry(heads: list) -> tuple[SeriesGeometry, np.ndarray]:
    o = np.asarray(heads[0].ImageOrientationPatient, float)
    n = np.cross(o[:3], o[3:])
    heads = sorted(heads, key=lambda d: np.asarray(d.ImagePositionPatient, float) @ n)
    geo = SeriesGeometry(o, [d.ImagePositionPatient for d in heads], tuple(map(float, heads[0].PixelSpacing)),
                         (heads[0].Rows, heads[0].Columns))
    return geo, np.array([int(d.InstanceNumber) for d in heads])


def _axial_stacks(folder: Path) -> list[tuple[SeriesGeometry, np.ndarray]]:
    """The axial series split into its parallel stacks (one per disc level, or a single one)."""
    stacks: dict[tuple, list] = {}
    for f in folder.glob("*.dcm"):
        d = pydicom.dcmread(f, stop_before_pixels=True)
        stacks.setdefault(tuple(np.round(np.asarray(d.ImageOrientationPatient, float), 4)), []).append(d)
    return [_stack_geometry(h) for h in stacks.values()]


def test_coordinates_point_inside_an_existing_instance_of_the_right_series(synth_cohort):
    train, series, coords = _tables(synth_cohort)
    images = synth_cohort / synth.IMAGES_DIR
    for r in coords.itertuples():
        f = images / str(r.study_id) / str(r.series_id) / f"{r.instance_number}.dcm"
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert 0 <= r.x <= ds.Columns - 1 and 0 <= r.y <= ds.Rows - 1
        condition = vocab.parse_condition(r.condition)
        assert _role(series, r.series_id) == vocab.CONDITION_BY_KEY[condition].view
        assert pd.notna(train.loc[train.study_id == r.study_id, vocab.target(condition, r.level)].iloc[0])
    # every labelled target whose series exists has exactly one point
    for row in train.itertuples(index=False):
        roles = {_role(series, se) for se in series.loc[series.study_id == row.study_id, "series_id"]}
        for tgt in vocab.TARGETS:
            condition, level = vocab.parse_target(tgt)
            expected = int(pd.notna(getattr(row, tgt)) and vocab.CONDITION_BY_KEY[condition].view in roles)
            hits = coords[(coords.study_id == row.study_id) & (coords.condition == vocab.CONDITION_NAMES[condition])
                          & (coords.level == vocab.LEVEL_NAMES[level])]
            assert len(hits) == expected, (row.study_id, tgt)


def test_every_landmark_lies_well_inside_its_series_in_many_planned_studies():
    for i in range(200):
        ph, plans = synth.plan_study(21, i)
        by_role = {p.role: p for p in plans}
        for (condition, level), point in ph.landmarks().items():
            plan = by_role.get(vocab.CONDITION_BY_KEY[condition].view)
            if plan is None:
                continue
            hit = plan.project(point)
            assert hit is not None, (i, condition, level)
            _, x, y = hit
            assert min(x, y, plan.cols - 1 - x, plan.rows - 1 - y) * plan.spacing >= 11.9, (i, condition, level)


def test_left_is_patient_left_on_every_view(synth_cohort):
    """Left points lie at larger patient x (LPS) than right ones, and so on the axial image's right side."""
    _, _, coords = _tables(synth_cohort)
    images = synth_cohort / synth.IMAGES_DIR
    n = 0
    for (study, family, level), g in coords.groupby(
            [coords.study_id, coords.condition.str.split(" ", n=1).str[1], coords.level]):
        if len(g) != 2 or family == "Canal Stenosis":
            continue
        left, right = (g[g.condition.str.startswith(s)].iloc[0] for s in ("Left", "Right"))
        points = []
        for r in (left, right):
            ds = pydicom.dcmread(images / str(study) / str(r.series_id) / f"{r.instance_number}.dcm",
                                 stop_before_pixels=True)
            o, (rs, cs) = np.asarray(ds.ImageOrientationPatient, float), map(float, ds.PixelSpacing)
            points.append(np.asarray(ds.ImagePositionPatient, float) + r.x * cs * o[:3] + r.y * rs * o[3:])
        assert points[0][0] - points[1][0] > 10, (study, family, level)
        if family == "Subarticular Stenosis":
            assert left.x > right.x
        else:  # sagittal instances run from the patient's right to left
            assert left.instance_number > right.instance_number
        n += 1
    assert n >= 40


def test_canal_point_maps_to_the_axial_slice_labelled_for_that_level(synth_cohort):
    """Sagittal canal point -> patient space -> nearest axial slice: the subarticular labels' instance."""
    _, series, coords = _tables(synth_cohort)
    images = synth_cohort / synth.IMAGES_DIR
    checked = 0
    for study, g in coords.groupby("study_id"):
        ids = {_role(series, se): se for se in series.loc[series.study_id == study, "series_id"]}
        if vocab.SAGITTAL_T2 not in ids or vocab.AXIAL_T2 not in ids:
            continue
        sag, sag_instances = _geometry(images / str(study) / str(ids[vocab.SAGITTAL_T2]))
        stacks = _axial_stacks(images / str(study) / str(ids[vocab.AXIAL_T2]))
        for level in vocab.LEVEL_NAMES.values():
            canal = g[(g.condition == "Spinal Canal Stenosis") & (g.level == level)]
            sub = g[g.condition.str.endswith("Subarticular Stenosis") & (g.level == level)]
            if canal.empty or sub.empty:
                continue
            c = canal.iloc[0]
            point = sag.pixel_to_patient(int(np.nonzero(sag_instances == c.instance_number)[0][0]), c.x, c.y)
            best = min(((dist, inst[k]) for geo, inst in stacks
                        for k, x, y, dist in [geo.patient_to_pixel(point)] if geo.contains_pixel(x, y)))
            assert best[0] < 5.0  # the stack covers the disc
            for inst in sub.instance_number:
                assert abs(best[1] - inst) <= 1, (study, level, best, inst)
            checked += 1
    assert checked >= 25


def test_canal_points_land_on_bright_csf_in_the_sagittal_t2(synth_cohort):
    """The rendered pixels line up with the labels: the canal point is CSF, brighter than most of what is
    around it (CSF itself fills a good part of a 30 mm window, fat on T2 is bright too)."""
    _, _, coords = _tables(synth_cohort)
    images = synth_cohort / synth.IMAGES_DIR
    for r in coords[coords.condition == "Spinal Canal Stenosis"].itertuples():
        ds = pydicom.dcmread(images / str(r.study_id) / str(r.series_id) / f"{r.instance_number}.dcm")
        img = ds.pixel_array.astype(float)
        x, y, half = int(round(r.x)), int(round(r.y)), int(15 / float(ds.PixelSpacing[0]))
        around = img[max(0, y - half): y + half + 1, max(0, x - half): x + half + 1]
        centre = img[y - 1: y + 2, x - 1: x + 2].mean()
        assert np.mean(around < centre) > 0.6 and centre > 1.2 * np.median(around), (r.study_id, r.level)


def test_coordinates_are_the_projected_phantom_landmarks(synth_cohort):
    """Each point, mapped back to patient space, lies on the phantom's landmark (within the slice distance)."""
    _, _, coords = _tables(synth_cohort)
    images = synth_cohort / synth.IMAGES_DIR
    for t in _truth(synth_cohort)["studies"]:
        for r in coords[coords.study_id == t["study_id"]].itertuples():
            ds = pydicom.dcmread(images / str(r.study_id) / str(r.series_id) / f"{r.instance_number}.dcm",
                                 stop_before_pixels=True)
            o, (rs, cs) = np.asarray(ds.ImageOrientationPatient, float), map(float, ds.PixelSpacing)
            p = np.asarray(ds.ImagePositionPatient, float) + r.x * cs * o[:3] + r.y * rs * o[3:]
            mark = np.asarray(t["levels"][vocab.parse_level(r.level)]["landmarks_patient_mm"][
                vocab.parse_condition(r.condition)])
            off = mark - p
            normal = np.cross(o[:3], o[3:])
            assert np.linalg.norm(off - (off @ normal) * normal) < 0.01  # in-plane: exact
            assert abs(off @ normal) <= float(ds.SpacingBetweenSlices) / 2 + 0.01  # nearest slice


# --- grades and the anatomy they drive -------------------------------------------------------------------
def test_grade_mix_is_like_the_real_data():
    rng = np.random.default_rng(0)
    draws = [synth.sample_grades(rng)[0] for _ in range(3000)]
    real = {vocab.SPINAL: (0.878, 0.075, 0.048), vocab.FORAMINAL: (0.78, 0.181, 0.04),
            vocab.SUBARTICULAR: (0.714, 0.19, 0.096)}
    for family, expected in real.items():
        cls = np.array([d[vocab.target(c, lv)] for d in draws for c in vocab.FAMILY_CONDITIONS[family]
                        for lv in vocab.LEVELS])
        assert np.allclose(np.bincount(cls, minlength=3) / cls.size, expected, atol=0.03), family
    worse = [np.mean([d[vocab.target("spinal_canal_stenosis", lv)] > 0 for d in draws]) for lv in vocab.LEVELS]
    assert worse[3] > 3 * worse[0]  # L4/L5 far more often narrowed than L1/L2


def test_phantom_narrowing_is_monotone_in_the_grade():
    areas: dict[tuple[str, int], list[float]] = {}
    for i in range(150):
        ph = synth.phantom_for_study(99, i)
        for lv in vocab.LEVELS:
            areas.setdefault(("canal", ph.grades[vocab.target("spinal_canal_stenosis", lv)]), []).append(
                ph.canal_area(lv) / (np.pi * (ph.sac_back - ph.sac_front) / 2 * ph.sac_half_width))
            for side in vocab.SIDES:
                areas.setdefault(("foramen", ph.grades[vocab.target(f"{side}_neural_foraminal_narrowing", lv)]),
                                 []).append(ph.foramen_fat_area(lv, side))
                areas.setdefault(("recess", ph.grades[vocab.target(f"{side}_subarticular_stenosis", lv)]),
                                 []).append(ph.recess_fat_area(lv, side))
    for structure in ("canal", "foramen", "recess"):
        lo = [min(areas[structure, g]) for g in range(3)]
        hi = [max(areas[structure, g]) for g in range(3)]
        assert hi[1] < lo[0] and hi[2] < lo[1], structure  # classes do not overlap
    assert np.mean(areas["canal", 1]) == pytest.approx(0.55, abs=0.05)
    assert np.mean(areas["canal", 2]) == pytest.approx(0.27, abs=0.05)


def test_measured_canal_csf_area_falls_with_the_spinal_grade(synth_cohort):
    train, _, _ = _tables(synth_cohort)
    measured, truth, grade = [], [], []
    for t in _truth(synth_cohort)["studies"]:
        for lv in vocab.LEVELS:
            label = train.loc[train.study_id == t["study_id"], vocab.target("spinal_canal_stenosis", lv)].iloc[0]
            area = synth.measure_canal_area(synth_cohort, t["study_id"], lv)
            if pd.isna(label) or np.isnan(area):
                continue
            measured.append(area)
            truth.append(t["levels"][lv]["canal_area_mm2"])
            grade.append(vocab.parse_severity(label))
    measured, truth, grade = map(np.asarray, (measured, truth, grade))
    assert len(measured) >= 25
    assert np.corrcoef(measured, truth)[0, 1] > 0.8
    assert np.median(np.abs(measured - truth) / truth) < 0.3
    means = [measured[grade == g].mean() for g in range(3) if (grade == g).any()]
    assert len(means) >= 2 and all(a > b for a, b in zip(means, means[1:]))


def test_missing_series_and_blank_labels_happen_like_in_the_real_data():
    missing = []
    for i in range(300):
        _, plans = synth.plan_study(5, i)
        missing += sorted(set(vocab.SERIES_ROLES) - {p.role for p in plans})
    assert 0.04 < len(missing) / 300 < 0.18
    assert missing.count(vocab.AXIAL_T2) > missing.count(vocab.SAGITTAL_T1)
    blank = [synth._blank_targets(5, i) for i in range(300)]
    assert 0.02 < np.mean([bool(b) for b in blank]) < 0.1
    assert all(b <= set(vocab.TARGETS) and len(b) <= 4 for b in blank)


# --- the reader understands the files without the CSV ---------------------------------------------------
def test_load_study_infers_every_role_without_the_csv(synth_cohort):
    from spinegrade.io.dicom import load_study

    _, series, _ = _tables(synth_cohort)
    for study_dir in sorted((synth_cohort / synth.IMAGES_DIR).iterdir()):
        study = load_study(study_dir, load_pixels=False)
        for s in study.series:
            assert s.role == _role(series, int(s.source_series_id or s.series_id)), (s.series_id, s.role_reason)


def test_cohort_passes_the_project_dataset_validation(synth_cohort):
    from spinegrade.data.rsna import RsnaDataset, validate_dataset

    assert validate_dataset(synth_cohort) == []
    ds = RsnaDataset(synth_cohort)
    assert ds.split == "train" and len(ds.study_ids) == 8 and ds.labels is not None and ds.coords is not None
