"""Several graders behind one localiser (`grader-<tag>/` beside `grader/`): added only from a run of the same
split, averaged per member with each its own crop and temperature, packed and run on ONNX Runtime, and the
study-level stage undoing their mean temperature."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from spinegrade import vocab
from spinegrade.errors import DataError
from spinegrade.export import export_checkpoint
from spinegrade.runtime import runtime
from spinegrade.slicemodel.bundled import GRADER, pack_run
from spinegrade.slicemodel.foramina import read_point_slices
from spinegrade.slicemodel.model import CALIBRATION, SPLIT, SliceModel, run_temperature
from spinegrade.slicemodel.pipeline import add_grader, predict_rows

KEYS = list(vocab.SEVERITY_KEYS)


def _other_grader(run, dst, crop_px: int, temperature: float):
    """A copy of `run` whose grader reads a wider crop and is calibrated otherwise (a 'different' grader)."""
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("*.onnx"))
    ck = torch.load(dst / GRADER / "best.pt", map_location="cpu", weights_only=True)
    ck["spec"]["crop_px"] = crop_px
    torch.save(ck, dst / GRADER / "best.pt")
    export_checkpoint(dst / GRADER / "best.pt")
    (dst / CALIBRATION).write_text(json.dumps({"temperature": temperature}))
    return dst


@pytest.fixture(scope="module")
def pair(run, tmp_path_factory):
    base = tmp_path_factory.mktemp("ens")
    main = base / "main"
    shutil.copytree(run, main)
    other = _other_grader(run, base / "other", crop_px=40, temperature=2.0)
    add_grader(main, other, "wide")
    return run, other, main


def test_a_member_averages_its_graders_each_with_its_crop_and_temperature(pair, folder):
    run, other, main = pair
    model = SliceModel.load(main, "cpu")
    m = model.members[0]
    assert [g[1].crop_px for g in m.graders()] == [32, 40]
    assert m.graders()[1][2] == 2.0 and m.stage_temperature == pytest.approx((m.temperature + 2.0) / 2)
    assert run_temperature(main) == pytest.approx(m.stage_temperature)
    ps = read_point_slices(folder)
    sub = ps.subset_studies(sorted(set(ps.points["study_id"]))[:3])
    a = predict_rows(SliceModel.load(run, "cpu"), sub)[KEYS].to_numpy()
    b = predict_rows(SliceModel.load(other, "cpu"), sub)[KEYS].to_numpy()
    both = predict_rows(model, sub)
    assert not np.allclose(a, b, atol=1e-3)  # the two graders answer differently
    assert np.allclose(both[KEYS].to_numpy(), (a + b) / 2, atol=1e-9)
    # one localiser: the points are the first run's
    assert np.allclose(both[["x_pred", "y_pred"]], predict_rows(SliceModel.load(run, "cpu"), sub)[["x_pred", "y_pred"]])
    # packed ONNX-only, the added grader goes with its temperature and grades the same
    pack_run(main, main.parent / "packed", onnx_only=True)
    packed = main.parent / "packed"
    assert (packed / "grader-wide" / "best.onnx").is_file() and (packed / "grader-wide" / CALIBRATION).is_file()
    assert not (packed / "grader-wide" / "best.pt").exists()
    onnx = predict_rows(SliceModel.load(packed, runtime("cpu", "onnx")), sub)
    assert np.abs(onnx[KEYS].to_numpy() - both[KEYS].to_numpy()).max() < 2e-3


def test_graders_packed_in_int8_are_half_the_size_and_grade_as_in_float(pair, folder, tmp_path):
    """`int8_graders`: every grader's weight matrices stored as int8 (one scale per output channel), the
    localiser untouched; from a run with checkpoints and again from one that has only ONNX (a bundled model's
    fold); the grades stay within 0.01 of the float16 package's and the points do not move."""
    import onnx

    from spinegrade.export import INT8_WEIGHTS, WEIGHTS_KEY, quantize_weights

    _, _, main = pair
    half, int8, again = tmp_path / "half", tmp_path / "int8", tmp_path / "again"
    pack_run(main, half, onnx_only=True)
    pack_run(main, int8, onnx_only=True, int8_graders=True)
    pack_run(half, again, onnx_only=True, int8_graders=True)  # the source holds ONNX only
    with pytest.raises(ValueError, match="onnx_only"):
        pack_run(main, tmp_path / "no", int8_graders=True)
    for name in ("grader", "grader-wide"):
        f = int8 / name / "best.onnx"
        assert f.stat().st_size < 0.6 * (half / name / "best.onnx").stat().st_size
        m = onnx.load(str(f))
        assert {p.key: p.value for p in m.metadata_props}[WEIGHTS_KEY] == INT8_WEIGHTS
        assert sum(n.op_type == "DequantizeLinear" for n in m.graph.node) >= 3
        assert (again / name / "best.onnx").read_bytes() == f.read_bytes()
        with pytest.raises(DataError, match="int8 already"):
            quantize_weights(f)
    loc = (int8 / "localizer" / "best.onnx").read_bytes()
    assert loc == (half / "localizer" / "best.onnx").read_bytes()
    ps = read_point_slices(folder)
    sub = ps.subset_studies(sorted(set(ps.points["study_id"]))[:3])
    a = predict_rows(SliceModel.load(half, runtime("cpu", "onnx")), sub)
    b = predict_rows(SliceModel.load(int8, runtime("cpu", "onnx")), sub)
    assert np.array_equal(a[["x_pred", "y_pred"]].to_numpy(), b[["x_pred", "y_pred"]].to_numpy())
    diff = np.abs(a[KEYS].to_numpy() - b[KEYS].to_numpy())
    assert 0 < diff.max() < 0.01


def test_a_grader_is_added_only_from_a_run_of_the_same_studies(pair, tmp_path):
    run, other, main = pair
    with pytest.raises(DataError, match="exists already"):
        add_grader(main, other, "wide")
    with pytest.raises(DataError, match="tag"):
        add_grader(main, other, "../x")
    moved = tmp_path / "moved"
    shutil.copytree(other, moved)
    split = (moved / SPLIT).read_text().splitlines()
    (moved / SPLIT).write_text("\n".join(split[:1] + split[2:]) + "\n")
    with pytest.raises(DataError, match="trained on other studies"):
        add_grader(main, moved, "other")
    with pytest.raises(DataError, match="not a trained slice run"):
        add_grader(main, tmp_path, "none")
    assert not list(main.glob(".grader-*")) and sorted(p.name for p in main.glob("grader-*")) == ["grader-wide"]


def test_the_pretrained_grader_is_added_only_when_asked(folder, canal_folder):
    """`train --slices --pretrained-grader` (v6's recipe): the four graders and a fifth, EfficientNet-Lite0 from
    ImageNet weights on the first's crop and schedule; the plain recipe stays without it (no extra needed)."""
    from spinegrade.slicemodel.grader import GraderSpec
    from spinegrade.slicemodel.pipeline import SliceConfig, slice_config

    plain = slice_config(folder, device="cpu")
    assert [x["tag"] for x in plain.extra_graders] == ["ctx", "g12", "two30"]
    cfg = slice_config(folder, device="cpu", pretrained_grader=True)
    specs = {tag: (spec, loop) for tag, spec, loop in cfg.extra_grader_specs()}
    assert list(specs) == ["ctx", "g12", "two30", "lite"]
    lite, loop = specs["lite"]
    assert (lite.network, lite.pretrained, dict(lite.network_kwargs)) == ("efficientnet-lite0", True, {})
    assert (lite.crop_px, lite.crop_frac, loop.epochs) == (cfg.grader.crop_px, cfg.grader.crop_frac,
                                                           cfg.grader_loop.epochs)
    assert isinstance(lite, GraderSpec) and not cfg.grader.pretrained  # the first grader stays as it was
    back = SliceConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))  # a run's config.json
    tag, spec, _ = back.extra_grader_specs()[-1]
    assert (tag, spec.network, spec.pretrained) == ("lite", "efficientnet-lite0", True)
    with pytest.raises(DataError, match="one-grader"):
        slice_config(folder, extra_graders=False, pretrained_grader=True)
    with pytest.raises(DataError, match="canal"):
        slice_config(canal_folder, pretrained_grader=True)


def test_train_grader_into_trains_on_the_runs_split_and_adds_it(run, folder, tmp_path):
    from spinegrade.slicemodel.pipeline import train_grader_into
    from spinegrade.train.config import LoopConfig

    main = tmp_path / "main"
    shutil.copytree(run, main)
    cfg = json.loads((main / "config.json").read_text())
    dst = train_grader_into(main, "short", loop=LoopConfig(epochs=2, batch_size=16, lr=3e-3, patience=0),
                            log=lambda *_: None)
    assert dst == main / "grader-short" and not list(main.glob(".grader-*"))
    records = [json.loads(x) for x in (dst / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2  # its own loop, not the run's
    t = json.loads((dst / CALIBRATION).read_text())
    assert 0.05 < t["temperature"] < 20 and t["n_rows"] > 0
    assert json.loads((main / "config.json").read_text()) == cfg  # the run itself is unchanged
    m = SliceModel.load(main, "cpu").members[0]
    assert len(m.graders()) == 2 and m.graders()[1][2] == pytest.approx(t["temperature"])
    with pytest.raises(DataError, match="exists already"):
        train_grader_into(main, "short", log=lambda *_: None)


def test_assembled_run_is_scored_on_its_held_out_fold_with_all_its_graders(pair, tmp_path):
    from spinegrade.slicemodel.pipeline import assemble_graders, rescore_heldout

    run, other, main = pair
    out = assemble_graders(run, tmp_path / "asm", {"wide": other})
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("grader")) == ["grader", "grader-wide"]
    assert not (out / "heldout").exists() and not (out / "summary.json").exists()
    assert assemble_graders(run, out, {"other": other}) == out and not (out / "grader-other").exists()
    res = rescore_heldout(out, log=lambda *_: None, oracle=False)
    assert set(res) == {"predicted_points"}
    single = json.loads((run / "summary.json").read_text())["heldout"]["predicted_points"]
    assert res["predicted_points"]["weighted_log_loss"] != single["weighted_log_loss"]
    assert res["predicted_points"]["localisation_px250"] == single["localisation_px250"]  # the same localiser
    assert json.loads((out / "summary.json").read_text())["heldout"] == res


def test_the_foramen_recipe_trains_four_graders_and_short_runs_stay_short(folder):
    from spinegrade.slicemodel.pipeline import SliceConfig, slice_config

    cfg = slice_config(folder, device="cpu")
    specs = {t: (g, lp) for t, g, lp in cfg.extra_grader_specs()}
    assert set(specs) == {"ctx", "g12", "two30"}
    assert (specs["ctx"][0].crop_px, specs["ctx"][0].crop_frac, specs["ctx"][1].epochs) == (80, 0.22, 8)
    assert specs["g12"][0] == cfg.grader and specs["g12"][1].epochs == 12
    assert specs["two30"][0].context_frac == 0.3 and specs["two30"][0].in_channels == 2
    short = slice_config(folder, device="cpu", grader_epochs=2)
    assert [lp.epochs for _, _, lp in short.extra_grader_specs()] == [2, 3, 2]
    assert slice_config(folder, extra_graders=False).extra_graders == ()
    back = SliceConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.extra_grader_specs() == cfg.extra_grader_specs()
    for bad in ([{"tag": "a"}, {"tag": "a"}], [{"tag": "../x"}], [{"tag": "a", "grader": {"nope": 1}}],
                [{"tag": "a", "grader": {"crop_px": 4}}], [{"tag": "a", "loop": {"epochs": 0}}],
                [{"tag": "a", "grader": {"context_frac": 0.1}}], [{"tag": "a", "grader": {"label_smoothing": 1}}]):
        with pytest.raises(DataError, match="extra grader"):
            SliceConfig.from_dict({**cfg.to_dict(), "extra_graders": bad}).validate()
    assert SliceConfig.from_dict({"slices": "x"}).extra_graders == ()  # a run written before them: none


def test_train_slices_trains_the_extra_graders_and_scores_the_held_out_fold_with_all(folder, tmp_path):
    from spinegrade.slicemodel.pipeline import SliceConfig, train_slices
    from spinegrade.train.config import LoopConfig

    from .conftest import SMALL

    cfg = SliceConfig(slices=str(folder), folds=3, val_fold=0, device="cpu", inner_val=0.2,
                      extra_graders=({"tag": "wide", "grader": {"crop_px": 40}, "loop": {"epochs_scale": 0.5}},),
                      **{**SMALL, "localizer_loop": LoopConfig(epochs=2, batch_size=8, lr=3e-3, patience=0)})
    out = tmp_path / "run"
    summary = train_slices(cfg, out, log=lambda *_: None)
    extra = out / "grader-wide"
    assert (extra / "best.pt").is_file() and (extra / "best.onnx").is_file() and (extra / CALIBRATION).is_file()
    assert len((extra / "metrics.jsonl").read_text().splitlines()) == 3  # half the first grader's 6 epochs
    assert not list(out.glob(".grader-*"))
    m = SliceModel.load(out, "cpu").members[0]
    assert [g[1].crop_px for g in m.graders()] == [32, 40]
    # the held-out figure is the three-network model's: scoring it again gives the same
    again = json.loads(json.dumps(summary["heldout"]["predicted_points"]))
    from spinegrade.slicemodel.pipeline import rescore_heldout

    assert rescore_heldout(out, log=lambda *_: None, oracle=False)["predicted_points"] == again
    # "uncalibrated" is every grader at temperature 1, not only the first
    from spinegrade.slicemodel.foramina import read_point_slices
    from spinegrade.slicemodel.pipeline import predict_rows, split_roles

    model = SliceModel.load(out, "cpu")
    m = model.members[0]
    m.temperature, m.extra_graders = 1.0, [(net, spec, 1.0) for net, spec, _ in m.extra_graders]
    roles = split_roles(out, read_point_slices(folder), ("train", "test"))
    raw = model.task.score(roles["test"], predict_rows(model, roles["test"]), roles["train"])
    assert summary["heldout"]["predicted_points_uncalibrated"]["weighted_log_loss"] == pytest.approx(
        raw["weighted_log_loss"], abs=1e-9)


def test_a_two_scale_grader_reads_the_crop_and_its_context_and_runs_packed(run, folder, tmp_path):
    import dataclasses

    from spinegrade.slicemodel.data import load_images, normalise_intensity
    from spinegrade.slicemodel.grader import CropDataset, crop_batch
    from spinegrade.slicemodel.pipeline import train_grader_into
    from spinegrade.train.config import LoopConfig

    main = tmp_path / "main"
    shutil.copytree(run, main)
    base = SliceModel.load(main, "cpu").members[0].gspec
    spec = dataclasses.replace(base, context_frac=0.45)
    with pytest.raises(DataError, match="context 0.1: a fraction of the slice larger than the crop"):
        train_grader_into(main, "bad", dataclasses.replace(base, context_frac=0.1), log=lambda *_: None)
    train_grader_into(main, "two", spec, LoopConfig(epochs=2, batch_size=16, lr=3e-3, patience=0),
                      log=lambda *_: None)
    m = SliceModel.load(main, "cpu").members[0]
    gspec = m.graders()[1][1]
    assert gspec.context_frac == 0.45 and gspec.in_channels == 2
    ps = read_point_slices(folder)
    r = ps.points.iloc[0]
    img = load_images(ps.subset_studies([r.study_id]), log=lambda *_: None)[r.path]
    img01 = normalise_intensity(img)
    f = ps.frame(r.path, gspec.crop_px, img.shape)
    centre = [f.stored_to_original(r.x, r.y)]
    two = crop_batch(img01, f, gspec, centre)
    assert two.shape == (1, 2, gspec.crop_px, gspec.crop_px)
    assert np.allclose(two[:, :1], crop_batch(img01, f, base, centre))  # channel 0: the grader's own crop
    wide = crop_batch(img01, f, dataclasses.replace(base, crop_frac=0.45), centre)
    assert np.allclose(two[:, 1:], wide) and not np.allclose(two[:, :1], wide)  # channel 1: the same centre, wider
    one = ps.subset_studies([r.study_id])  # training reads the same two channels (unaugmented: at the true point)
    item = CropDataset(one, {r.path: img}, gspec, augment=False)[0]["image"].numpy()
    assert item.shape == two.shape[1:] and np.allclose(item, two[0], atol=1e-4)
    sub = ps.subset_studies(sorted(set(ps.points["study_id"]))[:2])
    torch_probs = predict_rows(SliceModel.load(main, "cpu"), sub)[KEYS].to_numpy()
    pack_run(main, tmp_path / "packed", onnx_only=True)
    onnx_probs = predict_rows(SliceModel.load(tmp_path / "packed", "cpu"), sub)[KEYS].to_numpy()
    assert np.allclose(torch_probs, onnx_probs, atol=2e-3)


def test_a_subsampled_run_trains_its_grader_on_a_fraction_of_the_training_studies(run, folder, tmp_path):
    from spinegrade.slicemodel.pipeline import rescore_heldout, subsample_run, train_run_grader

    out = subsample_run(run, tmp_path / "half", 0.5, seed=3)
    src = pd.read_csv(run / SPLIT, dtype={"study_id": str})
    sub = pd.read_csv(out / SPLIT, dtype={"study_id": str})
    assert sub["study_id"].tolist() == src["study_id"].tolist()
    was_train = (src["role"] == "train").to_numpy()
    assert (sub["role"][~was_train] == src["role"][~was_train]).all()  # inner-validation and held-out kept
    kept = sub["study_id"][sub["role"] == "train"]
    assert set(sub["role"][was_train]) == {"train", "unused"} and len(kept) == round(was_train.sum() / 2)
    cfg, base = json.loads((out / "config.json").read_text()), json.loads((run / "config.json").read_text())
    assert cfg["grader_loop"]["epochs"] == 2 * base["grader_loop"]["epochs"] and cfg["extra_graders"] == []
    assert (out / "localizer").is_dir() and not (out / "grader").exists()
    assert subsample_run(run, tmp_path / "half", 0.5, seed=3) == out  # made again alike: kept
    with pytest.raises(DataError, match="another run, fraction or seed"):
        subsample_run(run, tmp_path / "half", 0.5, seed=4)
    with pytest.raises(DataError, match="fraction"):
        subsample_run(run, tmp_path / "none", 0.0)
    other = pd.read_csv(subsample_run(run, tmp_path / "other", 0.5, seed=4) / SPLIT, dtype={"study_id": str})
    assert set(other["study_id"][other["role"] == "train"]) != set(kept)  # the seed chooses the studies

    said = []
    train_run_grader(out, log=said.append)
    n_rows = len(read_point_slices(folder).subset_studies(kept).labelled())
    assert f"grader on {len(kept)} training studies ({n_rows} rows)" in said
    records = [json.loads(x) for x in (out / "grader" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == cfg["grader_loop"]["epochs"]
    assert 0.05 < json.loads((out / CALIBRATION).read_text())["temperature"] < 20
    model = SliceModel.load(out, "cpu")
    assert model.train_studies == set(src["study_id"][src["role"] != "test"])  # the localiser saw the unused ones
    res = rescore_heldout(out, log=lambda *_: None, oracle=False)["predicted_points"]
    assert res["n_rows"] > 0 and 0 < res["weighted_log_loss"] < 5
    again = []
    assert train_run_grader(out, log=again.append) == out and again == []  # trained: kept as it is
