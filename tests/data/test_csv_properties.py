"""Property-based: the challenge CSV readers, given any text, return a table or raise one DataError naming the
file (never another exception), and read back what a valid table says."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spinegrade import vocab
from spinegrade.data.rsna import read_coordinates, read_labels, read_series_descriptions
from spinegrade.errors import DataError

_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_CELL = st.text(alphabet=string.printable + "éß研\x00", max_size=12)
_HEADERS = {
    read_series_descriptions: "study_id,series_id,series_description",
    read_coordinates: "study_id,series_id,instance_number,condition,level,x,y",
    read_labels: "study_id," + ",".join(vocab.TARGETS),
}


@pytest.mark.parametrize("reader", list(_HEADERS), ids=lambda r: r.__name__)
@_SETTINGS
@given(rows=st.lists(st.lists(_CELL, min_size=0, max_size=8), max_size=6), keep_header=st.booleans(),
       raw=st.binary(max_size=64))
def test_any_text_gives_a_table_or_one_data_error(tmp_path, reader, rows, keep_header, raw):
    path = tmp_path / "table.csv"
    lines = ([_HEADERS[reader]] if keep_header else []) + [",".join(r) for r in rows]
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + raw)
    try:
        reader(path)
    except DataError as e:
        assert str(path) in str(e)


@_SETTINGS
@given(st.lists(st.tuples(st.integers(1, 2**40), st.integers(1, 2**40),
                          st.sampled_from(["Sagittal T1", "Sagittal T2/STIR", "Axial T2"])),
                min_size=1, max_size=8, unique_by=lambda t: (t[0], t[1])))
def test_valid_descriptions_read_back(tmp_path, rows):
    path = tmp_path / "d.csv"
    path.write_text("study_id,series_id,series_description\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    df = read_series_descriptions(path)
    assert sorted(zip(df["study_id"], df["series_id"])) == sorted((a, b) for a, b, _ in rows)
