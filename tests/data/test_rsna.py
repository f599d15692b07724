"""The RSNA layer on the real challenge CSVs and two real studies (from ../shared/realdata, never copied),
plus small hand-written CSVs for the error paths, so those run even without the real data."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.data.io_utils import atomic_path, atomic_write_bytes, atomic_write_text, write_csv_atomic
from spinegrade.data.rsna import (
    RsnaDataset,
    make_folds,
    read_coordinates,
    read_labels,
    read_series_descriptions,
    split_studies,
    validate_dataset,
)
from spinegrade.errors import DataError

from root_conftest import REAL_STUDIES as STUDIES, build_real_dataset
SPINAL = [vocab.target("spinal_canal_stenosis", lv) for lv in vocab.LEVELS]
FIX01B = "rsna2024_coords_fix01b_hengck23/DATA_PROCESSED_DIR/train_label_coordinates.fix01b.csv"
# Study 100206310's train.csv row as class indices (0 Normal/Mild, 1 Moderate, 2 Severe), in TARGETS order.
LABELS_100206310 = [0, 0, 1, 2, 0,  0, 1, 1, 2, 1,  1, 1, 2, 1, 0,  0, 0, 1, 2, 1,  0, 0, 1, 1, 1]


# --- helpers -------------------------------------------------------------------------------------------

def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _labels_csv(rows: list[tuple[object, list[str]]]) -> str:
    lines = [",".join(("study_id",) + vocab.TARGETS)]
    lines += [",".join([str(sid)] + cells) for sid, cells in rows]
    return "\n".join(lines) + "\n"


def _edit_cell(path: Path, line: int, column: str, value: str) -> None:
    """Set one cell of a CSV, `line` numbered as an editor shows it (header = 1)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[line - 1][rows[0].index(column)] = value
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


@pytest.fixture(scope="module")
def real_labels(realdata) -> pd.DataFrame:
    return read_labels(realdata / "rsna2024_labels/train.csv")


@pytest.fixture(scope="module")
def fix01b(realdata) -> pd.DataFrame:
    return read_coordinates(realdata / FIX01B)


@pytest.fixture
def two(realdata, tmp_path) -> Path:
    return build_real_dataset(realdata, tmp_path / "ds")


# --- readers on the real tables ------------------------------------------------------------------------

def test_read_labels_real(real_labels):
    df = real_labels
    assert df.shape == (1975, 25)
    assert list(df.columns) == list(vocab.TARGETS)
    assert df.index.name == "study_id" and df.index.dtype == np.int64
    assert df.index.is_unique and df.index.is_monotonic_increasing
    assert set(df.dtypes) == {pd.Int8Dtype()}
    counts = df.stack(future_stack=True).value_counts(dropna=False)
    assert counts[0] == 37754 and counts[1] == 7960 and counts[2] == 3089
    assert int(df.isna().sum().sum()) == 572
    assert df.loc[100206310].tolist() == LABELS_100206310
    # The label mix DOMAIN.md quotes for the spinal canal: 87.8 / 7.5 / 4.8 %.
    spinal = df[SPINAL].stack().value_counts(normalize=True)
    assert spinal.round(3).tolist() == [0.878, 0.075, 0.048]


def test_read_series_descriptions_real(realdata):
    s = read_series_descriptions(realdata / "rsna2024_labels/train_series_descriptions.csv")
    assert list(s.columns) == ["study_id", "series_id", "role", "description"]
    assert len(s) == 6294 and s["study_id"].nunique() == 1975
    assert s["role"].value_counts().to_dict() == {
        vocab.AXIAL_T2: 2340, vocab.SAGITTAL_T1: 1980, vocab.SAGITTAL_T2: 1974}
    row = s[s["series_id"] == 1792451510].iloc[0]
    assert (row["study_id"], row["role"], row["description"]) == (100206310, vocab.SAGITTAL_T2, "Sagittal T2/STIR")
    test = read_series_descriptions(realdata / "rsna2024_labels/test_series_descriptions.csv")
    assert test["study_id"].unique().tolist() == [44036939] and len(test) == 3


def test_read_coordinates_snake_case_table(fix01b, real_labels):
    c = fix01b
    assert len(c) == 48809
    assert list(c.columns) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y", "fix"]
    assert c["fix"].value_counts().to_dict() == {0: 48668, 1: 141}
    assert set(c["condition"]) == set(vocab.CONDITIONS) and set(c["level"]) == set(vocab.LEVELS)
    assert c["instance_number"].dtype == np.int64 and c["x"].dtype == np.float64
    # One labelled study has no coordinates at all; every coordinate belongs to a labelled study.
    assert set(real_labels.index) - set(c["study_id"]) == {3008676218}
    assert set(c["study_id"]) <= set(real_labels.index)


def test_read_coordinates_challenge_spelling_agrees_with_fix01b(realdata, fix01b):
    split = sorted((realdata / "rsna2024_coords_original_liamirpy/Data_Condition_Splitting").glob("*.csv"))
    orig = read_coordinates(split)  # the three files concatenated: Kaggle's original table
    assert len(orig) == 48692
    assert set(orig["condition"]) == set(vocab.CONDITIONS)
    assert orig.loc[0, ["condition", "level"]].tolist() == ["right_neural_foraminal_narrowing", "l4_l5"]
    # The two DICOM studies' 50 original rows are unchanged (fix=0) in hengck23's table.
    derived = read_coordinates(realdata / "rsna2024_dicom_train_2studies/DERIVED_coords_these_studies.csv")
    keys = ["study_id", "series_id", "instance_number", "condition", "level"]
    m = derived.merge(fix01b, on=keys, how="left", suffixes=("", "_fix"))
    assert len(m) == 50 and (m["fix"] == 0).all()
    np.testing.assert_allclose(m[["x", "y"]].to_numpy(), m[["x_fix", "y_fix"]].to_numpy(), atol=1e-6)


# --- readers: errors name the file, the line and the value ---------------------------------------------

def test_bad_severity_names_file_line_and_value(tmp_path):
    ok = ["Normal/Mild"] * 25
    bad = ["Normal/Mild"] * 7 + ["Sever"] + ["Normal/Mild"] * 17
    p = _write(tmp_path / "train.csv", _labels_csv([(1, ok), (2, bad)]))
    with pytest.raises(DataError, match=r"train\.csv:3: column left_neural_foraminal_narrowing_l3_l4: "
                                        r"unknown severity 'Sever'"):
        read_labels(p)
    # A blank line before the bad row still counts, as in an editor.
    p = _write(tmp_path / "train2.csv", _labels_csv([(1, ok)]) + "\n" + _labels_csv([(2, bad)]).split("\n", 1)[1])
    with pytest.raises(DataError, match=r"train2\.csv:4:"):
        read_labels(p)


def test_labels_blank_cells_other_spellings_and_order(tmp_path):
    cells = ["normal_mild", "", "moderate", "Severe", " Moderate "] + ["Normal/Mild"] * 20
    p = _write(tmp_path / "train.csv", _labels_csv([(20, cells), (10, ["Severe"] * 25)]))
    df = read_labels(p)
    assert df.index.tolist() == [10, 20]
    assert df.loc[20, list(vocab.TARGETS[:5])].tolist() == [0, pd.NA, 1, 2, 1]
    assert int(df.loc[10].sum()) == 50
    # Columns in another order, plus a column that is not a target: the result is the same.
    shuffled = pd.read_csv(p, dtype=str, keep_default_na=False)
    shuffled = shuffled[["study_id"] + list(reversed(vocab.TARGETS))].assign(note="x")
    write_csv_atomic(shuffled, tmp_path / "shuffled.csv")
    pd.testing.assert_frame_equal(read_labels(tmp_path / "shuffled.csv"), df)


def test_labels_missing_column_and_duplicate_study(tmp_path):
    text = _labels_csv([(1, ["Normal/Mild"] * 25)]).replace("spinal_canal_stenosis_l4_l5", "spinal_l4l5")
    with pytest.raises(DataError, match=r"missing column\(s\) spinal_canal_stenosis_l4_l5; unexpected.*spinal_l4l5"):
        read_labels(_write(tmp_path / "a.csv", text))
    text = _labels_csv([(7, ["Moderate"] * 25), (8, ["Moderate"] * 25), (7, ["Severe"] * 25)])
    with pytest.raises(DataError, match=r"b\.csv:4: study_id 7 appears again \(first on line 2\)"):
        read_labels(_write(tmp_path / "b.csv", text))
    with pytest.raises(DataError, match=r"c\.csv:2: study_id must be a whole number, got 'abc'"):
        read_labels(_write(tmp_path / "c.csv", _labels_csv([("abc", ["Moderate"] * 25)])))
    with pytest.raises(DataError, match=r"d\.csv:2: 3 fields, but the header \(line 1\) has 26"):
        read_labels(_write(tmp_path / "d.csv", _labels_csv([]) + "1,Moderate,Severe\n"))
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_labels(tmp_path / "nope.csv")


def test_series_descriptions_errors(tmp_path):
    head = "study_id,series_id,series_description\n"
    ok = read_series_descriptions(_write(tmp_path / "ok.csv", head + "5,9,Sagittal T1\n5,3,Axial T2\n"))
    assert ok[["series_id", "role"]].values.tolist() == [[3, vocab.AXIAL_T2], [9, vocab.SAGITTAL_T1]]
    with pytest.raises(DataError, match=r"bad\.csv:3: column series_description: .*'Coronal T2'"):
        read_series_descriptions(_write(tmp_path / "bad.csv", head + "5,9,Sagittal T1\n5,3,Coronal T2\n"))
    with pytest.raises(DataError, match=r"dup\.csv:3: study_id/series_id 5/9 appears again"):
        read_series_descriptions(_write(tmp_path / "dup.csv", head + "5,9,Sagittal T1\n5,9,Axial T2\n"))


def test_coordinates_errors_and_extra_columns(tmp_path):
    head = "study_id,series_id,instance_number,condition,level,x,y,note\n"
    c = read_coordinates(_write(tmp_path / "ok.csv", head + "1,2,3,Spinal Canal Stenosis,L4/L5,1.5,2,a\n"
                                                             "1,2,4.0,left_subarticular_stenosis,l5_s1,3,4,\n"))
    assert c[["instance_number", "condition", "level"]].values.tolist() == [
        [3, "spinal_canal_stenosis", "l4_l5"], [4, "left_subarticular_stenosis", "l5_s1"]]
    assert c["x"].tolist() == [1.5, 3.0] and c["note"].iloc[0] == "a" and pd.isna(c["note"].iloc[1])
    with pytest.raises(DataError, match=r"x\.csv:2: x must be a finite number, got 'left'"):
        read_coordinates(_write(tmp_path / "x.csv", head + "1,2,3,Spinal Canal Stenosis,L4/L5,left,2,\n"))
    with pytest.raises(DataError, match=r"lv\.csv:3: column level: unknown level 'L6/L7'"):
        read_coordinates(_write(tmp_path / "lv.csv", head + "1,2,3,Spinal Canal Stenosis,L4/L5,1,2,\n"
                                                             "1,2,3,Spinal Canal Stenosis,L6/L7,1,2,\n"))
    with pytest.raises(DataError, match=r"in\.csv:2: instance_number must be a whole number, got '3.5'"):
        read_coordinates(_write(tmp_path / "in.csv", head + "1,2,3.5,Spinal Canal Stenosis,L4/L5,1,2,\n"))


# --- the dataset folder --------------------------------------------------------------------------------

def test_dataset_on_two_real_studies(two):
    ds = RsnaDataset(two)
    assert ds.split == "train" and ds.study_ids == list(STUDIES) and len(ds) == 2
    assert ds.images_dir == two / "train_images" and ds.study_dir(100206310).is_dir()
    assert ds.labels.shape == (2, 25)
    assert ds.label_vector(100206310) == LABELS_100206310
    assert ds.descriptions_for(100206310) == {
        1012284084: vocab.AXIAL_T2, 1792451510: vocab.SAGITTAL_T2, 2092806862: vocab.SAGITTAL_T1}
    assert ds.series_of(1002894806)["series_id"].tolist() == [801316590, 866293114, 1252873726]
    c = ds.coords_for(100206310)
    assert len(c) == 25 and set(c["study_id"]) == {100206310}
    assert list(ds.coords.columns) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    spinal = c[c["condition"] == "spinal_canal_stenosis"]
    assert spinal["series_id"].unique().tolist() == [1792451510] and spinal["instance_number"].tolist() == [9] * 5

    recs = list(ds.iter_studies())
    assert [r.study_id for r in recs] == list(STUDIES)
    r = recs[1]
    assert r.path == two / "train_images" / "1002894806"
    assert r.series == {vocab.SAGITTAL_T2: [801316590], vocab.SAGITTAL_T1: [866293114],
                        vocab.AXIAL_T2: [1252873726]}
    assert r.labels == ds.label_vector(1002894806) and r.labels[:5] == [0, 0, 0, 1, 0]
    assert len(r.coords) == 25
    # Every coordinate's instance file exists, as the challenge names them.
    for rec in recs:
        for row in rec.coords.itertuples():
            assert (rec.path / str(row.series_id) / f"{row.instance_number}.dcm").is_file()


def test_dataset_corrected_coordinates_and_unknown_series(realdata, two):
    ds = RsnaDataset(two, coordinates=realdata / FIX01B)
    assert len(ds.coords) == 48809 and ds.coords_path == realdata / FIX01B
    assert ds.coords_for(100206310)["fix"].tolist() == [0] * 25
    assert ds.coords_for(123).empty
    # A series folder the CSV does not describe is offered as "unknown" (its role comes from the images).
    two_files = build_real_dataset(realdata, two.parent / "files", link_files=True)
    (two_files / "train_images/100206310/42").mkdir()
    rec = next(RsnaDataset(two_files).iter_studies([100206310]))
    assert rec.series[vocab.UNKNOWN_ROLE] == [42] and rec.series[vocab.AXIAL_T2] == [1012284084]


def test_dataset_test_split_without_labels(realdata, tmp_path):
    root = tmp_path / "kaggle_test"
    root.mkdir()
    (root / "test_series_descriptions.csv").write_bytes(
        (realdata / "rsna2024_labels/test_series_descriptions.csv").read_bytes())
    ds = RsnaDataset(root)
    assert ds.split == "test" and ds.labels is None and ds.coords is None and not ds.has_images
    assert ds.study_ids == [44036939]
    assert ds.descriptions_for(44036939) == {
        2828203845: vocab.SAGITTAL_T1, 3481971518: vocab.AXIAL_T2, 3844393089: vocab.SAGITTAL_T2}
    with pytest.raises(KeyError, match="44036939 has no labels"):
        ds.label_vector(44036939)
    rec = next(ds.iter_studies())
    assert rec.labels is None and rec.path is None and rec.coords.empty
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an RSNA dataset folder"):
        RsnaDataset(tmp_path / "empty")


# --- validate_dataset ----------------------------------------------------------------------------------

def test_validate_clean_two_studies(two):
    assert validate_dataset(two) == []
    assert validate_dataset(two, check_images=False) == []


def test_validate_reports_bad_severity_with_file_and_line(two):
    _edit_cell(two / "train.csv", 3, "spinal_canal_stenosis_l2_l3", "Modrate")
    problems = validate_dataset(two)
    assert len(problems) == 1
    assert problems[0].startswith(f"{two / 'train.csv'}:3: column spinal_canal_stenosis_l2_l3: ")
    assert "'Modrate'" in problems[0]
    with pytest.raises(DataError, match=r"train\.csv:3:"):
        RsnaDataset(two)


def test_validate_reports_missing_instance_and_undescribed_series(two):
    coords = two / "train_label_coordinates.csv"
    _edit_cell(coords, 2, "instance_number", "999")  # 100206310's first row: Sagittal T1 2092806862
    with open(two / "train.csv", "a") as fh:  # a labelled study without images or descriptions
        fh.write("4003253," + ",".join(["Normal/Mild"] * 25) + "\n")
    problems = validate_dataset(two)
    assert any(p.startswith(f"{coords}: 1 instance files named by coordinates do not exist")
               and "100206310/2092806862/999.dcm" in p for p in problems), problems
    assert any("1 of 3 labelled studies have no image folder: 4003253" in p for p in problems), problems
    assert any("1 labelled studies have no series in train_series_descriptions.csv: 4003253" in p
               for p in problems), problems
    assert len(problems) == 3


def test_validate_reports_zero_byte_files(realdata, tmp_path):
    root = build_real_dataset(realdata, tmp_path / "ds", link_files=True)
    assert validate_dataset(root) == []
    series = root / "train_images/1002894806/801316590"  # Sagittal T2/STIR
    inst = int(read_coordinates(root / "train_label_coordinates.csv")
               .query("series_id == 801316590")["instance_number"].iloc[0])
    for name in (f"{inst}.dcm", "17.dcm"):
        (series / name).unlink()
        (series / name).touch()
    (root / "train_images/1002894806/5550001").mkdir()  # a series folder with no description
    problems = validate_dataset(root)
    zero = [p for p in problems if "zero-byte .dcm files" in p]
    first, second = sorted((inst, 17))  # listed in instance order
    assert zero == [f"{root / 'train_images'}: 2 zero-byte .dcm files: "
                    f"1002894806/801316590/{first}.dcm, 1002894806/801316590/{second}.dcm"]
    assert any(f"1 instance files named by coordinates are zero-byte: 1002894806/801316590/{inst}.dcm" in p
               for p in problems), problems
    assert any("1 series folders have no row in train_series_descriptions.csv: 1002894806/5550001" in p
               for p in problems), problems
    assert len(problems) == 3


# --- folds ---------------------------------------------------------------------------------------------

def test_folds_on_real_labels(real_labels):
    folds = make_folds(real_labels, n_folds=5, seed=0)
    assert folds.index.equals(real_labels.index) and folds.name == "fold"  # every study, exactly once
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 2
    filled = real_labels.fillna(0)
    any_severe_spinal = (filled[SPINAL] == 2).any(axis=1)
    overall = any_severe_spinal.mean()
    assert overall == pytest.approx(0.185, abs=0.001)
    per_fold = any_severe_spinal.groupby(folds).mean()
    assert (per_fold - overall).abs().max() < 0.01, per_fold  # a random split misses by ~0.02
    # Row-level class mix of each condition family stays within a point of the whole set.
    for fam, conds in vocab.FAMILY_CONDITIONS.items():
        cols = [vocab.target(c, lv) for c in conds for lv in vocab.LEVELS]
        severe = (real_labels[cols] == 2).mean(axis=1)
        per_fold = severe.groupby(folds).mean()
        assert (per_fold - severe.mean()).abs().max() < 0.01, (fam, per_fold)


def test_folds_deterministic_and_order_free(real_labels):
    a = make_folds(real_labels, seed=0)
    assert a.equals(make_folds(real_labels, seed=0))
    shuffled = real_labels.sample(frac=1.0, random_state=3)
    assert make_folds(shuffled, seed=0).equals(a)
    b = make_folds(real_labels, seed=1)
    assert (a != b).mean() > 0.5  # another seed is another split
    train, val = split_studies(real_labels, n_folds=5, val_fold=2, seed=0)
    assert val == sorted(a.index[a == 2].tolist())
    assert not set(train) & set(val) and len(train) + len(val) == 1975 and train == sorted(train)
    with pytest.raises(ValueError, match="val_fold"):
        split_studies(real_labels, n_folds=5, val_fold=5)


def test_folds_with_rare_strata_are_complete_and_quiet():
    rng = np.random.default_rng(0)
    grades = np.zeros((23, 25), dtype=int)
    grades[0, :5] = 2  # one study with a severe canal: a stratum of one
    grades[1:4, 5:8] = 1
    grades[4, rng.integers(0, 25, 12)] = 1
    labels = pd.DataFrame(grades, columns=list(vocab.TARGETS),
                          index=pd.Index(range(100, 123), name="study_id")).astype("Int8")
    labels.iloc[5, 3] = pd.NA
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn warns when a class has fewer members than folds
        folds = make_folds(labels, n_folds=5, seed=0)
    assert folds.index.tolist() == list(range(100, 123))
    assert sorted(folds.value_counts().tolist()) == [4, 4, 5, 5, 5]
    with pytest.raises(DataError, match="3 labelled studies cannot fill 5 folds"):
        make_folds(labels.iloc[:3])


# --- atomic writes -------------------------------------------------------------------------------------

def test_atomic_writes(tmp_path):
    df = pd.DataFrame({"row_id": ["1_a", "1_b"], "p": [0.25, 0.75]})
    out = write_csv_atomic(df, tmp_path / "sub" / "out.csv")
    assert out.read_text() == "row_id,p\n1_a,0.25\n1_b,0.75\n"
    assert atomic_write_text(tmp_path / "t.json", '{"a": 1}\n').read_text() == '{"a": 1}\n'
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"

    target = tmp_path / "keep.png"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            # Same folder and suffix, so writers that pick the format from the name still work.
            assert tmp.parent == target.parent and tmp.suffix == ".png" and tmp != target
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(target):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "keep.png", "sub", "t.json"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.csv"]
