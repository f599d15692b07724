"""`inspect_study` / `format_inspection` and the `spinegrade inspect` command on generated studies."""

from __future__ import annotations

import json

from dicom_factory import AXIAL, SAGITTAL, write_series
from pydicom.uid import RLELossless
from spinegrade.cli import main
from spinegrade.io.inspect import format_inspection, inspect_study


def _study(tmp_path):
    study = tmp_path / "777"
    write_series(study / "10", 4, orientation=SAGITTAL, description="T1", series_uid="1.2.3.10", step=3.5,
                 transfer_syntax=RLELossless)
    write_series(study / "20", 3, orientation=AXIAL, description="ax t2", series_uid="1.2.3.20",
                 instances=[7, 8, 9], pixel_spacing=(0.4, 0.45))
    (study / "20" / "0.dcm").write_bytes(b"")
    return study


def test_inspect_study_summarises_each_series(tmp_path):
    info = inspect_study(_study(tmp_path))
    json.dumps(info)
    assert info["study_id"] == "777" and info["n_series"] == 2 and info["skipped"] == []
    sag, ax = info["series"]
    assert sag["series_id"] == "10" and sag["role"] == "sagittal_t1" and sag["plane"] == "sagittal"
    assert (sag["n_slices"], sag["rows"], sag["cols"]) == (4, 32, 40)
    assert sag["slice_spacing"] == 3.5 and sag["slice_thickness"] == 4.0
    assert sag["transfer_syntaxes"] == [{"uid": str(RLELossless), "name": "RLE Lossless"}]
    assert sag["instance_range"] == [1, 4] and sag["geometry_known"] is True
    assert len(sag["orientation"]) == 6
    assert ax["pixel_spacing"] == [0.4, 0.45] and ax["instance_range"] == [7, 9]
    assert ax["skipped"] == [{"path": "20/0.dcm", "reason": "empty file (0 bytes)"}]
    assert "SECRET" not in json.dumps(info) and "Test^Patient" not in json.dumps(info)


def test_format_inspection_is_a_table_with_reasons(tmp_path):
    text = format_inspection(inspect_study(_study(tmp_path)))
    lines = text.splitlines()
    assert lines[0].startswith("study 777: 2 series")
    assert lines[1].split()[:4] == ["series", "role", "plane", "slices"]
    row = next(line for line in lines if line.strip().startswith("10 "))
    assert row.split()[:6] == ["10", "sagittal_t1", "sagittal", "4", "32x40", "0.5x0.5"]
    assert "role: sagittal plane; description 'T1'" in text
    assert "skipped 20/0.dcm: empty file (0 bytes)" in text


def test_cli_inspect_json_and_table(tmp_path, capsys):
    study = _study(tmp_path)
    assert main(["inspect", str(study), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [s["role"] for s in info["series"]] == ["sagittal_t1", "axial_t2"]
    csv = tmp_path / "d.csv"
    csv.write_text("study_id,series_id,series_description\n777,10,Sagittal T2/STIR\n")
    assert main(["inspect", str(study), "--descriptions", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "sagittal_t2" in out and "from d.csv" in out
