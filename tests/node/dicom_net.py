"""Small DICOM network helpers of the tests: repaired copies of the real studies, a test SCU, waiting."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def wait_until(cond, timeout: float = 60.0, step: float = 0.2) -> bool:
    """Poll `cond` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def repaired_copy(study_dir: Path, out: Path) -> list[Path]:
    """Copies of a real RSNA study's files as a PACS would hold them: the challenge stripped SOPClassUID and
    Modality from the datasets (only the file meta names a class, Enhanced MR), so a PACS could not C-STORE
    them onward. The originals are only read."""
    files = []
    for f in sorted(Path(study_dir).glob("*/*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.Modality = "MR"
        dst = out / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dst, enforce_file_format=True)
        files.append(dst)
    return files


def send_direct(datasets, port: int, ae_title: str = "SPINEGRADE", calling: str = "TESTSCU",
                release: bool = True):
    """C-STORE datasets to the node in one association from a test SCU; the statuses (and the association,
    left open when `release` is False)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 300  # a busy test machine answers slowly
    for cls, ts in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(cls, [ts])  # one context per syntax: each dataset goes as it is encoded
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    if release:
        assoc.release()
    return statuses, assoc


def synthetic_studies(cohort: Path, n: int) -> list[list]:
    """`n` studies as lists of datasets: the cohort's studies, then copies of them under new UIDs (a copy is
    a different study to a PACS), so that a few synthetic studies make any number."""
    from pydicom.uid import generate_uid

    folders = sorted((Path(cohort) / "train_images").iterdir())
    out = []
    for i in range(n):
        datasets = [pydicom.dcmread(f) for f in sorted(folders[i % len(folders)].rglob("*.dcm"))]
        if i >= len(folders):
            study, series = generate_uid(), {}
            for ds in datasets:
                ds.StudyInstanceUID = study
                ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid())
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(datasets)
    return out
