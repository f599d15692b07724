"""Property-based: the DICOM header parser, given a valid file with any bytes overwritten, truncated or
appended, returns a slice or a skipped file with a reason; it never raises and never decodes pixels."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_factory import damage, make_dataset, slice_pixels, write_dicom
from spinegrade.io.dicom import _pydicom_header, _read_header, load_series
from spinegrade.io.scan import FlatHeader
from spinegrade.io.types import SkippedFile

_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("hdr") / "a.dcm"
    write_dicom(path, make_dataset(slice_pixels(16, 16)))
    return path.read_bytes()


@_SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=6)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10_000)), tail=st.binary(max_size=32))
def test_damaged_files_give_a_slice_or_a_reason(tmp_path, good_bytes, edits, cut, tail):
    path = tmp_path / "f.dcm"
    path.write_bytes(damage(good_bytes, edits, cut, tail))
    r = _read_header(path, max_pixels=10**6)
    if isinstance(r, SkippedFile):
        assert r.path == str(path) and r.reason
    else:
        assert r.rows * r.cols <= 10**6
        if isinstance(r.ds, FlatHeader):
            # the fast route takes no file with an element pydicom cannot decode (its series tags rely on it)
            assert _pydicom_header(path)[1] == []
        else:
            for _ in r.ds:  # every element decodes: nothing left to raise later
                pass


@_SETTINGS
@given(rows=st.integers(0, 65535), cols=st.integers(0, 65535))
def test_claimed_sizes_beyond_the_budget_are_never_decoded(tmp_path, good_bytes, rows, cols):
    import pydicom

    path = tmp_path / "f.dcm"
    path.write_bytes(good_bytes)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(path)
    try:
        (s,) = load_series(tmp_path, max_pixels=4096)
        assert (rows, cols) == (16, 16) and s.n_slices == 1
    except Exception as e:  # noqa: BLE001 - the only way out is the reader's one-line error
        assert type(e).__name__ == "DataError" and str(tmp_path) in str(e)
