"""Key images as DICOM Secondary Capture: in the source study, the report's pixels, naming the slice shown."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from spinegrade import DISCLAIMER
from spinegrade.report.overlays import key_images
from spinegrade.report.sc import SECONDARY_CAPTURE, write_key_images_sc


def _check(study, result, folder):
    images = key_images(study, result)
    paths = write_key_images_sc(images, study, folder)
    assert [p.name for p in paths] == [f"key_{img.key}.dcm" for img in images] and len(paths) >= 4
    series = set()
    for img, path in zip(images, paths, strict=True):
        ds = pydicom.dcmread(path)
        src = study.get(img.series_id)
        source = pydicom.dcmread(src.files[img.slice_index], stop_before_pixels=True)
        assert ds.SOPClassUID == SECONDARY_CAPTURE == ds.file_meta.MediaStorageSOPClassUID
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        series.add(ds.SeriesInstanceUID)
        ref = ds.SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == (source.get("SOPClassUID") or source.file_meta.MediaStorageSOPClassUID)
        drawn = np.asarray(Image.open(io.BytesIO(img.png)).convert("RGB"))
        assert ds.PhotometricInterpretation == "RGB" and np.array_equal(ds.pixel_array, drawn)
        # the edges' patient directions, head/foot spelled as DICOM does
        assert list(ds.PatientOrientation) == [img.edges["right"].replace("S", "H").replace("I", "F"),
                                              img.edges["bottom"].replace("S", "H").replace("I", "F")]
        assert ds.BurnedInAnnotation == "YES" and DISCLAIMER in ds.ImageComments
        assert all(m.text in ds.ImageComments for m in img.marks) and img.title in ds.DerivationDescription
    assert len(series) == 1  # one series of key images per study


def test_synthetic_key_images_as_secondary_capture(synth_result, tmp_path):
    study, result = synth_result
    _check(study, result, tmp_path)


@pytest.mark.realdata
def test_real_key_images_as_secondary_capture(real_results, tmp_path):
    """The RSNA files name their class only in the file meta: the reference takes it from there."""
    study, result, _ = real_results[0]
    _check(study, result, tmp_path)
