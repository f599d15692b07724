"""prepare: parallel decoding into the cache, re-runs that decode nothing, bad studies skipped, PNG export."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spinegrade import vocab
from spinegrade.cli import main
from spinegrade.data.prepare import Cache, prepare_dataset
from spinegrade.data.synth import synthesize_cohort
from spinegrade.device import usable_cores
from spinegrade.io.dicom import load_study


@pytest.fixture(scope="module")
def cohort20(tmp_path_factory):
    out = tmp_path_factory.mktemp("c20") / "data"
    synthesize_cohort(out, n_studies=20, seed=77)
    return out


def _mtimes(cache):
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}


def test_prepare_20_studies_two_workers_then_rerun_decodes_nothing(cohort20, tmp_path):
    cache = tmp_path / "cache"
    r = prepare_dataset(cohort20, cache, workers=2, progress=False)
    assert r["failed"] == [] and r["studies"] == 20 and r["decoded"] >= 40 and r["skipped_existing"] == 0
    before = _mtimes(cache)
    r2 = prepare_dataset(cohort20, cache, workers=2, progress=False)
    assert r2["decoded"] == 0 and r2["skipped_existing"] == r["decoded"]
    assert _mtimes(cache) == before  # nothing rewritten
    c = Cache(cache)
    assert len(c.study_ids()) == 20
    for sid in c.study_ids()[:3]:
        direct = load_study(cohort20 / "train_images" / sid)
        cached = c.load_study(sid)
        assert [s.series_id for s in cached.series] == sorted(s.series_id for s in direct.series)
        for s in direct.series:
            cs = cached.get(s.series_id)
            assert isinstance(cs.stored.values, np.memmap) and cs.stored.values.dtype == np.uint16
            assert np.array_equal(np.asarray(cs.pixels), s.pixels)  # exact, not approximately
            assert np.array_equal(cs.pixels[1], s.pixels[1]) and cs.pixels[1].dtype == np.float32
            assert np.array_equal(cs.instance_numbers, s.instance_numbers)
            assert np.allclose(cs.geometry.positions, s.geometry.positions)
            assert (cs.role, cs.source_series_id) == (s.role, s.source_series_id or s.series_id)


@pytest.mark.parametrize("cores, expect", [(3, 3), (64, 8)])  # 64 cores: 16 at most, and 8 studies
def test_prepare_starts_one_process_per_core_unless_told_and_caches_the_same(synth_cohort, tmp_path, monkeypatch,
                                                                              cores, expect):
    import spinegrade.device

    monkeypatch.setattr(spinegrade.device, "usable_cores", lambda: cores)
    auto = prepare_dataset(synth_cohort, tmp_path / "auto", workers=None, progress=False)
    one = prepare_dataset(synth_cohort, tmp_path / "one", workers=1, progress=False)
    assert auto["workers"] == expect and one["workers"] == 1
    assert auto["failed"] == one["failed"] == [] and auto["decoded"] == one["decoded"] > 0
    a, b = Cache(tmp_path / "auto"), Cache(tmp_path / "one")
    assert a.study_ids() == b.study_ids() and len(a.study_ids()) == 8
    for sid in a.study_ids():
        for x, y in zip(a.load_study(sid).series, b.load_study(sid).series, strict=True):
            assert x.series_id == y.series_id and np.array_equal(x.stored.values, y.stored.values)


def test_changed_study_is_decoded_again_and_bad_study_skipped(synth_cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_cohort, data)
    cache = tmp_path / "cache"
    first = prepare_dataset(data, cache, progress=False)
    studies = sorted(p.name for p in (data / "train_images").iterdir())
    # break one study completely (no readable DICOM), touch another
    bad = data / "train_images" / studies[0]
    for f in bad.rglob("*.dcm"):
        f.write_bytes(b"not dicom")
    r = prepare_dataset(data, cache, progress=False)
    assert [f["study_id"] for f in r["failed"]] == [studies[0]]
    assert "no readable DICOM" in r["failed"][0]["error"] and studies[0] in r["failed"][0]["error"]
    assert r["decoded"] == 0 and r["skipped_existing"] == first["decoded"] - len(Cache(cache).series_ids(studies[0]))


def test_cli_prepare_reports_and_exports_png(synth_cohort, tmp_path, capsys):
    cache, png = tmp_path / "cache", tmp_path / "png"
    assert main(["prepare", "--data", str(synth_cohort), "--cache", str(cache), "--export-png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "prepared" in out and "index.csv" in out
    assert f"({min(usable_cores(), 16, 8)} decoding processes)" in out  # by default one per core (8 studies)
    idx = pd.read_csv(png / "index.csv")
    assert list(idx.columns) == ["path", "study_id", "series_id", "instance_number", "condition", "level", "severity"]
    coords = pd.read_csv(synth_cohort / "train_label_coordinates.csv")
    assert len(idx) == len(coords)  # every labelled instance row is exported
    assert set(idx["condition"]) <= set(vocab.CONDITIONS) and set(idx["level"]) <= set(vocab.LEVELS)
    im = Image.open(png / idx["path"].iloc[0])
    assert im.size == (256, 256) and im.mode == "L"
    # severity matches train.csv
    labels = pd.read_csv(synth_cohort / "train.csv").set_index("study_id")
    r = idx.iloc[0]
    assert r["severity"] == labels.at[r["study_id"], f"{r['condition']}_{r['level']}"]


def test_seed_axial_export_on_real_studies(real_rsna, tmp_path):
    """The seed's dataset (axial T2 slice per level, spinal canal grade) from the two real studies."""
    png = tmp_path / "png"
    prepare_dataset(real_rsna, tmp_path / "cache", export_png=png, png_task="seed-axial", progress=False)
    idx = pd.read_csv(png / "index.csv")
    assert len(idx) == 10 and set(idx["source"]) == {"coordinates"}
    coords = pd.read_csv(real_rsna / "train_label_coordinates.csv")
    labels = pd.read_csv(real_rsna / "train.csv").set_index("study_id")
    for r in idx.itertuples():
        sub = coords[(coords.study_id == r.study_id) & (coords.condition == "Left Subarticular Stenosis")
                     & (coords.level == vocab.LEVEL_NAMES[r.level])]
        assert abs(r.instance_number - int(sub.instance_number.iloc[0])) <= 1
        assert r.severity == labels.at[r.study_id, f"spinal_canal_stenosis_{r.level}"]
        assert Image.open(png / r.path).size == (256, 256)


def test_seed_axial_export_by_projection_on_real_studies(real_rsna, tmp_path):
    """Without axial coordinates the sagittal->axial projection picks (nearly) the same slices."""
    data = tmp_path / "data"
    shutil.copytree(real_rsna, data, symlinks=True)
    coords = pd.read_csv(data / "train_label_coordinates.csv")
    truth = coords[coords.condition == "Left Subarticular Stenosis"]
    coords[~coords.condition.str.contains("Subarticular")].to_csv(data / "train_label_coordinates.csv", index=False)
    png = tmp_path / "png"
    prepare_dataset(data, tmp_path / "cache", export_png=png, png_task="seed-axial", progress=False)
    idx = pd.read_csv(png / "index.csv")
    assert len(idx) == 10 and set(idx["source"]) == {"projection"}
    for r in idx.itertuples():
        t = truth[(truth.study_id == r.study_id) & (truth.level == vocab.LEVEL_NAMES[r.level])]
        assert abs(r.instance_number - int(t.instance_number.iloc[0])) <= 1


# --- the cache format: stored integers, read back exactly -------------------------------------------------
def _cache_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_real_studies_cache_reads_back_exactly_at_the_size_of_16_bit_pixels(real_rsna, tmp_path):
    cache = tmp_path / "cache"
    r = prepare_dataset(real_rsna, cache, progress=False)
    assert r["failed"] == [] and r["decoded"] > 0
    c = Cache(cache)
    for sid in c.study_ids():
        direct = load_study(real_rsna / "train_images" / sid)
        cached = c.load_study(sid)
        px16 = 0
        for s in direct.series:
            cs = cached.get(s.series_id)
            assert cs.stored.values.dtype == np.uint16 and isinstance(cs.stored.values, np.memmap)
            assert np.array_equal(np.asarray(cs.pixels), s.pixels)  # the decoder's float32 pixels, bit for bit
            k = s.n_slices // 2
            assert np.array_equal(cs.pixels[k], s.pixels[k])
            assert np.array_equal(cs.pixels[k, 10:20, 5:9], s.pixels[k, 10:20, 5:9])
            px16 += s.pixels.size * 2
        assert _cache_bytes(cache / sid) <= 1.2 * px16


def _as_old_format(cache, sid) -> None:
    """Rewrite a cached study as the previous version wrote it: float32 pixels, format 1."""
    import json

    d = cache / sid
    for meta_path in d.glob("*.json"):
        meta = json.loads(meta_path.read_text())
        meta["format"] = 1
        if meta_path.name != "_study.json":
            pixels = np.asarray(Cache(cache).load_series(sid, meta_path.stem).pixels, dtype=np.float32)
            np.save(d / f"{meta_path.stem}.npy", pixels)
            for k in ("invert", "slope", "intercept", "intensity"):
                meta.pop(k)
            meta["dtype"] = "float32"
        meta_path.write_text(json.dumps(meta))


def test_old_format_cache_is_refused_then_rebuilt_with_a_message(synth_cohort, tmp_path, capsys):
    from spinegrade.errors import DataError

    cache = tmp_path / "cache"
    first = prepare_dataset(synth_cohort, cache, progress=False)
    sid = Cache(cache).study_ids()[0]
    before = {s.series_id: np.asarray(s.pixels) for s in Cache(cache).load_study(sid).series}
    _as_old_format(cache, sid)
    with pytest.raises(DataError, match=r"cache format 1, this spinegrade reads format 2: run `spinegrade prepare`"):
        Cache(cache).load_study(sid)
    capsys.readouterr()
    r = prepare_dataset(synth_cohort, cache, progress=False)
    assert r["rebuilt_old_format"] == [sid] and r["decoded"] == len(before)
    assert r["skipped_existing"] == first["decoded"] - len(before)
    assert "1 studies" in capsys.readouterr().err
    after = Cache(cache).load_study(sid)
    assert {s.series_id for s in after.series} == set(before)
    for s in after.series:
        assert s.stored.values.dtype == np.uint16 and np.array_equal(np.asarray(s.pixels), before[s.series_id])


def test_each_file_parsed_once_and_a_rerun_decodes_nothing(synth_cohort, tmp_path, monkeypatch):
    import pydicom

    from spinegrade.io import dicom

    calls = {"scan": 0, "parse": 0, "decode": 0}
    scan, parse, decode = dicom.scan.scan, pydicom.dcmread, dicom._decode_file

    def counted(name, fn):
        def call(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return call

    monkeypatch.setattr(dicom.scan, "scan", counted("scan", scan))
    monkeypatch.setattr(pydicom, "dcmread", counted("parse", parse))
    monkeypatch.setattr(dicom, "_decode_file", counted("decode", decode))
    n_files = len(list((synth_cohort / "train_images").rglob("*.dcm")))
    cache = tmp_path / "cache"
    r = prepare_dataset(synth_cohort, cache, workers=1, progress=False)
    # every file is scanned once and decoded once; the synthetic files all take the fast route, so pydicom
    # parses none of them (their series' tags too come from the scan)
    assert r["failed"] == [] and calls == {"scan": n_files, "parse": 0, "decode": n_files}
    calls.update(scan=0, parse=0, decode=0)
    r2 = prepare_dataset(synth_cohort, cache, workers=1, progress=False)
    assert r2["decoded"] == 0 and calls == {"scan": 0, "parse": 0, "decode": 0}
