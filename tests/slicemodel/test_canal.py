"""The canal task: a Sagittal T2 folder read into levels, trained and evaluated on the slice-model machinery."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.errors import DataError
from spinegrade.slicemodel.canal import CANAL, OTHER_DISC, merge_discs, read_canal_slices
from spinegrade.slicemodel.foramina import FORAMINA
from spinegrade.slicemodel.model import SliceModel
from spinegrade.slicemodel.pipeline import evaluate_slices, slice_config
from spinegrade.slicemodel.task import task_of_folder

OUT_COLUMNS = ["path", "level", "x_disc", "y_disc", "x_canal", "y_canal", "stenosis"]


def _write(folder, rows, images=True):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for p in {r[0] for r in rows}:
        Image.fromarray(np.zeros((100, 80), np.uint8)).save(folder / p)
    pd.DataFrame(rows, columns=["path", "patient_id", "label", "x_center", "y_center", "width", "height"]).to_csv(
        folder / "boxes.csv", index=False)
    return folder


def test_levels_are_counted_up_from_the_lowest_disc(tmp_path):
    # seven discs top to bottom (y 10..70); a bulge drawn over the lowest; stenosis at the canal of the 2nd lowest
    rows = [("images/a.jpg", "7", "normal_disc", 40, 10 + 10 * k, 20, 6) for k in range(6)]
    rows += [("images/a.jpg", "7", "degenerative_disc", 41, 70, 20, 6),
             ("images/a.jpg", "7", "lumbar_disc_bulge", 44, 72, 26, 9),
             ("images/a.jpg", "7", "spinal_stenosis", 55, 60, 4, 5)]
    ps = read_canal_slices(_write(tmp_path / "f", rows))
    assert ps.slices[["rows", "cols"]].values.tolist() == [[100, 80]]
    pts = ps.points.set_index("level")
    assert list(pts.index) == list(vocab.LEVELS)
    assert pts.loc["l5_s1", ["x", "y"]].tolist() == [41, 70]  # the bulge merged: the core box's centre
    assert pts.loc["l1_l2", "y"] == 30 and pts.loc["l4_l5", "label"] == 1
    assert pts["label"].tolist() == [0, 0, 0, 1, 0]
    lm = ps.landmarks
    assert lm[lm["channel"] == 8][["x", "y"]].values.tolist() == [[55, 60]]  # canal point of L4/L5
    assert sorted(lm.loc[lm["channel"] == OTHER_DISC, "y"]) == [10, 20]  # thoracic discs: scored, never learned
    assert 0 not in [c for c, _, _ in ps.landmark_lists(vocab.LEVELS.index)[0] if c < 0]


def test_a_slice_with_fewer_discs_leaves_upper_levels_unlabelled(tmp_path):
    rows = [("images/b.jpg", "8", "normal_disc", 40, 40 + 12 * k, 20, 6) for k in range(3)]
    ps = read_canal_slices(_write(tmp_path / "f", rows))
    assert ps.labels.tolist() == [-1, -1, 0, 0, 0]
    assert len(ps.labelled()) == 3


def test_merge_keeps_neighbouring_discs_apart():
    discs = merge_discs([("normal_disc", 50, 100, 40, 12), ("normal_disc", 52, 130, 40, 12),
                         ("lumbar_disc_bulge", 54, 132, 50, 20)])
    assert discs == [(50.0, 100.0), (52.0, 130.0)]


def test_folder_kind_is_known_from_its_files(canal_folder, folder, tmp_path):
    assert task_of_folder(canal_folder) is CANAL and task_of_folder(folder) is FORAMINA
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a foramen slice folder"):
        task_of_folder(tmp_path / "empty")
    assert slice_config(canal_folder).task == "canal" and slice_config(folder).task == "foramina"


def test_bad_boxes_name_the_file_and_line(tmp_path):
    rows = [("images/a.jpg", "7", "normal_disc", 40, 10, 20, 6), ("images/a.jpg", "7", "normal_disc", "x", 30, 20, 6)]
    with pytest.raises(DataError, match=r"boxes.csv: line 3: x_center 'x'"):
        read_canal_slices(_write(tmp_path / "f", rows))


def test_trained_canal_model_finds_discs_and_evaluates_the_same_from_images_csv_alone(canal_run, canal_folder,
                                                                                       tmp_path):
    model = SliceModel.load(canal_run)
    assert model.task is CANAL and model.task.channels[5] == "canal_l1_l2"
    h = json.loads((canal_run / "summary.json").read_text())["heldout"]["predicted_points"]
    assert h["levels_right"] is not None and h["disc_px"]["n"] > 0
    blind = tmp_path / "blind"
    blind.mkdir()
    shutil.copytree(canal_folder / "images", blind / "images")
    shutil.copy(canal_folder / "images.csv", blind / "images.csv")
    a = evaluate_slices(canal_run, canal_folder, tmp_path / "a", all_rows=True, log=lambda *_: None)
    b = evaluate_slices(canal_run, blind, tmp_path / "b", all_rows=True, log=lambda *_: None)
    pa, pb = pd.read_csv(tmp_path / "a" / "predictions.csv"), pd.read_csv(tmp_path / "b" / "predictions.csv")
    assert list(pa.columns) == OUT_COLUMNS
    pd.testing.assert_frame_equal(pa, pb)
    n_img = len(pd.read_csv(canal_folder / "images.csv"))
    assert len(pa) == 5 * n_img and pa["stenosis"].between(0, 1).all()
    assert "stenosis_auc" in a and "disc_px" not in b
    # 96 px synthetic slices, a tiny run: its discs sit on discs (telling which disc is which takes longer)
    ps = read_canal_slices(canal_folder)
    discs = ps.landmarks[ps.landmarks["channel"] < 5]
    near = [np.hypot(*(discs.loc[discs["path"] == r.path, ["x", "y"]].to_numpy(float) - (r.x_disc, r.y_disc)).T).min()
            for r in pa.itertuples()]
    assert np.median(near) < 3 and np.mean(np.asarray(near) < 6) > 0.75


def test_scores_count_a_disc_one_level_off_as_wrong(tmp_path):
    rows = [("images/a.jpg", "7", "normal_disc", 40, 10 + 10 * k, 20, 6) for k in range(7)]
    rows += [("images/a.jpg", "7", "spinal_stenosis", 50, 60, 4, 5)]
    ps = read_canal_slices(_write(tmp_path / "f", rows))
    truth = ps.points
    exact = pd.DataFrame({"x_disc": truth["x"], "y_disc": truth["y"], "x_canal": 50.0, "y_canal": truth["y"],
                          "stenosis": [0.1, 0.2, 0.3, 0.9, 0.2]})
    s = CANAL.score(ps, exact)
    assert s["levels_right"] == 1 and s["disc_px"]["median"] == 0 and s["stenosis_auc"] == 1
    assert s["canal_px"]["n"] == 1 and s["canal_px"]["median"] == 0  # L4/L5's canal point (50, 60)
    up = exact.assign(y_disc=exact["y_disc"] - 10)  # every disc placed on the one above
    s = CANAL.score(ps, up)
    assert s["levels_right"] == 0 and s["disc_px"]["median"] == 10


def test_foramen_model_refuses_a_canal_folder(run, canal_folder, tmp_path):
    with pytest.raises(DataError, match="foramina model"):
        evaluate_slices(run, canal_folder, tmp_path / "x", log=lambda *_: None)


@pytest.mark.realdata
def test_the_real_sagittal_t2_folder_reads_into_levels(sagt2_set):
    ps = read_canal_slices(sagt2_set)
    assert len(ps.slices) == 412 and len(ps.points) == 5 * 412
    lab = ps.points.assign(y=ps.labels)
    assert (lab.groupby("level")["y"].apply(lambda s: (s >= 0).mean()) > 0.99).all()
    rate = lab[lab["y"] >= 0].groupby("level")["y"].mean()
    # the README's third of lumbar levels, most at the two lowest
    assert 0.25 < (lab["y"] == 1).sum() / (lab["y"] >= 0).sum() < 0.4
    assert set(rate.nlargest(2).index) == {"l4_l5", "l5_s1"}
    assert ps.landmarks["channel"].between(5, 9).sum() == (lab["y"] == 1).sum()


def _blobs(points, size=40):
    from spinegrade.localize.heatmap import gaussian_heatmaps

    return gaussian_heatmaps(np.array(points, dtype=float), size, 1.5)


def test_levels_are_read_in_order_and_counted_up_when_channels_disagree():
    from spinegrade.slicemodel.canal import decode_levels

    discs = [(15, 6 + 6 * k) for k in range(6)]  # six discs top to bottom; the lowest five are L1/L2..L5/S1
    canal = [(x + 4, y) for x, y in discs]
    hm = np.zeros((10, 40, 40))
    for li in range(5):  # each channel on its own disc, plus a faint other disc (the one above)
        hm[li] = np.maximum(_blobs([(*discs[li + 1], 1.0)])[0], _blobs([(*discs[0], 0.4)])[0])
        hm[5 + li] = _blobs([(*canal[li + 1], 0.8)])[0]
    out = decode_levels(hm)
    assert np.allclose(out[:5, :2], np.array(discs[1:]), atol=0.05)
    assert np.allclose(out[5:, :2], np.array(canal[1:]), atol=0.05)
    # L1/L2's and L2/L3's channels peak one disc too high (as another scanner's contrast made a model do):
    # in order but skipping a disc, so the discs are counted up from the lowest
    bad = hm.copy()
    bad[0] = _blobs([(*discs[0], 1.0)])[0] + 0.7 * _blobs([(*discs[2], 1.0)])[0]
    bad[1] = _blobs([(*discs[1], 1.0)])[0]
    out = decode_levels(bad)
    assert np.allclose(out[:5, :2], np.array(discs[1:]), atol=0.05)
    assert np.allclose(out[5:, :2], np.array(canal[1:]), atol=0.05)
