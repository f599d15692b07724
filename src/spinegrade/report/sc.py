"""DICOM out: the key images (`overlays.key_images`, the points and grades drawn on) as Secondary Capture.

A viewer shows an SR's points only if it implements TID 1500 regions; every viewer shows an image. So the node
can send, beside the SR, each rendered key image as an RGB Secondary Capture Image in the study of its source
slice: one new series, the annotations burned in (BurnedInAnnotation YES), the slice it was drawn from named in
SourceImageSequence and what is drawn listed in ImageComments.

Patient and study attributes are copied from the source slice's header, read the way `sr` reads it (the RSNA
files lack SOPClassUID in the dataset: the class falls back to the file meta, then MR Image Storage).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .. import DISCLAIMER, __version__
from ..files import atomic_path
from .overlays import KeyImage
from .sr import _evidence_item, _header

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# our edge letters are DICOM's but for the head-foot axis, where PatientOrientation says H and F
_TO_DICOM_LETTER = {"R": "R", "L": "L", "A": "A", "P": "P", "S": "H", "I": "F"}


def write_key_images_sc(images: list[KeyImage], study, folder: str | Path, *, series_number: int = 902,
                        prefix: str = "key_") -> list[Path]:
    """Write each key image as `<prefix><key>.dcm` in `folder` (one new series in the source study); the paths.

    `study` is the loaded `Study` the images were drawn from (its files are read for the references).
    """
    import highdicom as hd
    from PIL import Image
    from pydicom.dataset import Dataset

    folder = Path(folder)
    series_uid = hd.UID()
    paths = []
    for n, img in enumerate(images, start=1):
        series = study.get(img.series_id)
        fallback = series.sop_instance_uids[img.slice_index] if series.sop_instance_uids else ""
        ref = _evidence_item(_header(series.files[img.slice_index]), fallback, series.files[img.slice_index])
        orientation = (_orientation(img.edges["right"]), _orientation(img.edges["bottom"]))
        rgb = np.asarray(Image.open(io.BytesIO(img.png)).convert("RGB"))
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=n, manufacturer="spinegrade",
            patient_orientation=(orientation[0][0], orientation[1][0]),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        sc.PatientOrientation = list(orientation)  # oblique: "PH"; highdicom checks single letters only
        sc.Modality = "OT"
        sc.SeriesDescription = f"spinegrade key images ({DISCLAIMER})"[:64]
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.BurnedInAnnotation = "YES"
        sc.SoftwareVersions = __version__
        sc.DerivationDescription = f"spinegrade key image: {img.title}"[:1024]
        sc.ImageComments = "; ".join(m.text for m in img.marks)[:10240] + f". {DISCLAIMER}"
        source = Dataset()
        source.ReferencedSOPClassUID = ref.SOPClassUID
        source.ReferencedSOPInstanceUID = ref.SOPInstanceUID
        sc.SourceImageSequence = [source]
        out = folder / f"{prefix}{img.key}.dcm"
        with atomic_path(out) as tmp:
            sc.save_as(tmp, enforce_file_format=True)
        paths.append(out)
    return paths


def _orientation(letters: str) -> str:
    """One PatientOrientation value from an edge's direction letters (the strongest axis first)."""
    return "".join(_TO_DICOM_LETTER[c] for c in letters)
