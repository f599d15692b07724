"""Stored pixels: the files' integers and each slice's transform give the reader's float32 pixels exactly,
also after a round trip through the prepare cache."""

from __future__ import annotations

import numpy as np
from dicom_factory import write_series as write_dicom_series
from pydicom.uid import RLELossless

from spinegrade.data.prepare import Cache, write_series
from spinegrade.io.dicom import VolumePool, load_study, volumes_from


def test_monochrome1_and_per_slice_rescale_read_back_exactly(tmp_path):
    study = tmp_path / "study"
    write_dicom_series(study / "1", 3, photometric="MONOCHROME1", rescale=(2.5, -100.0), bits=12)
    write_dicom_series(study / "1", 2, photometric="MONOCHROME1", rescale=(0.75, 3.0), bits=12, origin=(0, 0, 12),
                       names=["x1.dcm", "x2.dcm"], instances=[4, 5])
    (s,) = load_study(study).series
    (stored,) = load_study(study, stored=True).series
    assert not stored.stored.uniform  # two rescales in one series
    write_series(stored, tmp_path / "cache", study)
    back = Cache(tmp_path / "cache").load_series("study", "1")
    assert back.stored.values.dtype == np.uint16
    assert np.array_equal(np.asarray(back.pixels), s.pixels)
    assert np.array_equal(back.pixels[1:4], s.pixels[1:4]) and np.array_equal(back.pixels[[4, 0]], s.pixels[[4, 0]])
    raw = np.asarray(back.stored.values, dtype=np.float32)  # 12 bits stored: MONOCHROME1 inverts about 4095
    assert np.array_equal(s.pixels[0], (np.float32(4095) - raw[0]) * np.float32(2.5) + np.float32(-100.0))
    assert np.array_equal(s.pixels[3], (np.float32(4095) - raw[3]) * np.float32(0.75) + np.float32(3.0))


def test_a_slice_that_fails_to_decode_leaves_a_volume_of_the_others(tmp_path):
    # the volume is allocated for every slice and filled as they decode: one fewer gives a volume of the rest
    px = write_dicom_series(tmp_path / "study" / "1", 3, transfer_syntax=RLELossless)
    path = tmp_path / "study" / "1" / "2.dcm"
    raw = bytearray(path.read_bytes())
    raw[-400:-300] = b"\x00" * 100  # damages the RLE segment but keeps the file's length and end marker
    path.write_bytes(bytes(raw))
    (s,) = load_study(tmp_path / "study", stored=True).series
    assert [k.path.rsplit("/", 1)[-1] for k in s.skipped] == ["2.dcm"]
    values = s.stored.values
    assert values.dtype == np.uint16 and values.flags.c_contiguous and values.base is None
    assert np.array_equal(values, np.stack([px[0], px[2]]))


def test_slices_of_two_integer_types_stack_as_numpy_stacks_them(tmp_path):
    # unsigned then signed slices in one stack (never seen in a real series): the type numpy's stack promotes to
    study = tmp_path / "study"
    a = write_dicom_series(study / "1", 3)
    b = write_dicom_series(study / "1", 2, signed=True, origin=(0, 0, 12), names=["x1.dcm", "x2.dcm"],
                           instances=[4, 5])
    (s,) = load_study(study, stored=True).series
    assert s.stored.values.dtype == np.int32
    assert np.array_equal(s.stored.values, np.stack([*a, *(x.view(np.int16) for x in b)]))


def test_volumes_from_a_pool_reuse_its_memory_and_hold_the_same_values(two_studies):
    first, second = sorted((two_studies / "train_images").iterdir())
    plain = load_study(second, stored=True)
    pool = VolumePool()
    with volumes_from(pool):
        lent = [s.stored.values for s in load_study(first, stored=True).series]
    pool.release()
    with volumes_from(pool):
        again = load_study(second, stored=True)
    assert [s.series_id for s in again.series] == [s.series_id for s in plain.series]
    for s, p in zip(again.series, plain.series):
        assert s.stored.values.dtype == p.stored.values.dtype and s.stored.values.flags.c_contiguous
        assert np.array_equal(s.stored.values, p.stored.values)
    # the second study's volumes are in the first one's memory
    assert any(np.shares_memory(s.stored.values, v) for s in again.series for v in lent)
    # outside the block the reader allocates its own
    assert not any(np.shares_memory(s.stored.values, v) for s in load_study(second, stored=True).series
                   for v in lent)
