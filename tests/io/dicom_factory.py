"""Write small synthetic MR DICOM files for the reader's tests: geometry tags, MR timing tags, pixel data, in
any transfer syntax the installed encoders can write.

pydicom encodes RLE Lossless, JPEG-LS and JPEG 2000 itself (`Dataset.compress`, with pyjpegls and
pylibjpeg-openjpeg); JPEG baseline and the JPEG Lossless processes go through python-gdcm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

# ImageOrientationPatient (row direction, column direction) of the three planes, as scanners write them.
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2.100"
# pydicom encodes these itself; the gdcm ones need python-gdcm.
PYDICOM_ENCODED = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
GDCM_ENCODED = (JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLossless)


def normal_of(orientation) -> np.ndarray:
    o = np.asarray(orientation, dtype=float)
    return np.cross(o[:3], o[3:])


def slice_pixels(rows: int = 32, cols: int = 40, value: int = 0, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth ramp plus noise, offset by `value` so each slice is recognisable (fits `bits` unsigned)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    top = 2 ** bits - 1
    base = (xx * 3 + yy * 2 + value) % (top // 2)
    return np.clip(base + rng.integers(0, 8, size=(rows, cols)), 0, top).astype(np.uint16 if bits > 8 else np.uint8)


def make_dataset(pixels: np.ndarray | None, *, orientation=AXIAL, position=(0.0, 0.0, 0.0),
                 pixel_spacing=(0.5, 0.5), instance: int | None = 1, series_uid: str = SERIES_UID,
                 study_uid: str = STUDY_UID, description: str | None = "T2", series_number: int | None = 1,
                 echo_time=None, repetition_time=None, inversion_time=None, photometric: str = "MONOCHROME2",
                 rescale: tuple[float, float] | None = None, bits_stored: int = 12, signed: bool = False,
                 omit: tuple[str, ...] = (), **extra) -> Dataset:
    """An MR image dataset with file meta (Explicit VR Little Endian); `omit` drops tags by keyword."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "SECRET-PATIENT-ID"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = study_uid + ".9"
    if series_number is not None:
        ds.SeriesNumber = series_number
    if description is not None:
        ds.SeriesDescription = description
    if instance is not None:
        ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [f"{v:.8g}" for v in orientation]
    ds.ImagePositionPatient = [f"{v:.8g}" for v in position]
    ds.PixelSpacing = [f"{v:.8g}" for v in pixel_spacing]
    ds.SliceThickness = "4"
    for kw, v in (("EchoTime", echo_time), ("RepetitionTime", repetition_time), ("InversionTime", inversion_time)):
        if v is not None:
            setattr(ds, kw, f"{v:g}")
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
    for kw, v in extra.items():
        setattr(ds, kw, v)
    if pixels is not None:
        arr = np.asarray(pixels)
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = min(bits_stored, ds.BitsAllocated)
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = arr.tobytes()
    else:
        ds.Rows, ds.Columns = 32, 40
    for kw in omit:
        if kw in ds:
            delattr(ds, kw)
    return ds


def write_dicom(path, ds: Dataset, transfer_syntax=ExplicitVRLittleEndian) -> Path:
    """Save a dataset in a transfer syntax (compressing its pixel data when the syntax is compressed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if transfer_syntax in GDCM_ENCODED:
        tmp = path.with_name(path.name + ".native")
        ds.save_as(tmp, enforce_file_format=True)
        _gdcm_transcode(tmp, path, transfer_syntax)
        tmp.unlink()
        return path
    if transfer_syntax in PYDICOM_ENCODED:
        ds.compress(transfer_syntax)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _gdcm_transcode(src: Path, dst: Path, transfer_syntax) -> None:
    import gdcm

    codes = {JPEGBaseline8Bit: gdcm.TransferSyntax.JPEGBaselineProcess1,
             JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
             JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14}
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"gdcm could not read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(codes[transfer_syntax]))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"gdcm could not encode {transfer_syntax.name}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm could not write {dst}")


def write_series(folder, n: int = 5, *, orientation=AXIAL, origin=(0.0, 0.0, 0.0), step: float = 4.0,
                 rows: int = 32, cols: int = 40, names=None, instances=None, transfer_syntax=ExplicitVRLittleEndian,
                 bits: int = 12, series_uid: str = SERIES_UID, pixels=None,
                 **kw) -> list[np.ndarray]:
    """Write n parallel slices `step` mm apart along the normal; slice k holds `pixels[k]`, by default
    `slice_pixels(value=100*k)`.

    `names` (file names) and `instances` (InstanceNumbers) default to k+1 for slice k along the normal.
    Returns the pixel arrays in slice order (along the normal).
    """
    folder = Path(folder)
    normal = normal_of(orientation)
    names = names or [f"{k + 1}.dcm" for k in range(n)]
    instances = instances or list(range(1, n + 1))
    out = []
    for k in range(n):
        px = pixels[k] if pixels is not None else slice_pixels(rows, cols, value=100 * k, bits=bits, seed=k)
        pos = np.asarray(origin, dtype=float) + k * step * normal
        ds = make_dataset(px, orientation=orientation, position=pos, instance=instances[k],
                          series_uid=series_uid, bits_stored=bits, **kw)
        write_dicom(folder / names[k], ds, transfer_syntax)
        out.append(px)
    return out


# Per-slice tags of a classic file, which an enhanced MR file keeps in its functional groups instead.
_PER_FRAME_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                       "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept", "RescaleType", "EchoTime",
                       "RepetitionTime", "FlipAngle", "InversionTime", "InstanceNumber", "SliceLocation")


def _item(**kw) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def to_enhanced_mr(files, out_path) -> Path:
    """Convert classic single-frame MR files (one series) into one Enhanced MR multi-frame file, as scanners
    export it: frames in InstanceNumber order, native pixels, position, orientation, spacing and rescale in
    the per-frame functional groups, MR timing in the shared ones."""
    import copy

    import pydicom
    from pydicom.uid import EnhancedMRImageStorage

    dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.get("InstanceNumber", 0)))
    first = dss[0]
    frames = np.stack([d.pixel_array for d in dss])
    base = copy.deepcopy(first)
    del base.PixelData
    for kw in _PER_FRAME_KEYWORDS:
        if kw in base:
            delattr(base, kw)
    base.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    base.SOPClassUID = base.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    base.InstanceNumber = 1
    base.NumberOfFrames = len(dss)
    measures = _item(PixelSpacing=first.PixelSpacing, **({"SliceThickness": first.SliceThickness}
                                                         if "SliceThickness" in first else {}))
    shared = _item(PixelMeasuresSequence=[measures])
    if "EchoTime" in first:
        shared.MREchoSequence = [_item(EffectiveEchoTime=first.EchoTime)]
    timing = {kw: first.get(kw) for kw in ("RepetitionTime", "FlipAngle") if kw in first}
    if timing:
        shared.MRTimingAndRelatedParametersSequence = [_item(**timing)]
    if "InversionTime" in first:
        shared.MRModifierSequence = [_item(InversionTimes=[first.InversionTime])]
    base.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for d in dss:
        item = _item(PlanePositionSequence=[_item(ImagePositionPatient=d.ImagePositionPatient)],
                     PlaneOrientationSequence=[_item(ImageOrientationPatient=d.ImageOrientationPatient)])
        if "RescaleSlope" in d or "RescaleIntercept" in d:
            item.PixelValueTransformationSequence = [_item(RescaleSlope=d.get("RescaleSlope", "1"),
                                                           RescaleIntercept=d.get("RescaleIntercept", "0"))]
        per_frame.append(item)
    base.PerFrameFunctionalGroupsSequence = per_frame
    base.PixelData = frames.tobytes()
    base["PixelData"].VR = "OW"
    base["PixelData"].is_undefined_length = False
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    base.save_as(out_path, enforce_file_format=True)
    return out_path


def add_clinical_sequences(ds: Dataset, undefined: bool, rich: bool = False) -> Dataset:
    """`ds` with the sequences a clinical header carries and the reader never reads, nested: a referenced image with
    its purpose code, an empty item, an empty sequence. `undefined`: undefined lengths, items ending with their
    delimitation items; else defined lengths. `rich` adds a request, a private sequence and private bytes, and what
    the reader reads from every file inside an item (InstanceNumber, PixelSpacing)."""
    from pydicom.sequence import Sequence

    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-D0123", "SRT", "Lumbar spine"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5"
    ref.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([ref, Dataset()])
    ds.ProcedureCodeSequence = Sequence([])
    if rich:
        inner.InstanceNumber, inner.PixelSpacing = "3", ["0.5", "0.5"]
        ref.PurposeOfReferenceCodeSequence.append(Dataset())
        ref.add_new(0x00291010, "OB", b"\x01\x02\x03\x04")
        ds.add_new(0x00291020, "SQ", Sequence([Dataset()]))
        request = Dataset()
        request.ScheduledProcedureStepID, request.RequestedProcedureID = "X1", "R9"
        ds.RequestAttributesSequence = Sequence([request])
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = undefined
            for item in elem.value:
                item.is_undefined_length_sequence_item = undefined
    return ds


def damage(good: bytes, edits, cut: int | None, tail: bytes = b"") -> bytes:
    """A file's bytes with `edits` ((offset, bytes) pairs, offsets taken modulo the length) written over them,
    then cut to `cut` bytes (modulo the length + 1) when given, then `tail` appended: the property tests'
    damaged file."""
    b = bytearray(good)
    for at, data in edits:
        at %= len(b)
        b[at:at + len(data)] = data
    if cut is not None:
        b = b[:cut % (len(b) + 1)]
    return bytes(b) + tail


def add_short_rle(series_dir) -> Path:
    """Beside a series' files, an RLE copy of its first whose frame decodes past its header's 31 rows: pylibjpeg-rle
    panics on it (its Rust panic message goes to stderr unless the reader keeps it off)."""
    import pydicom
    from pydicom.uid import RLELossless, generate_uid

    ds = pydicom.dcmread(min(Path(series_dir).glob("*.dcm")))
    ds.compress(RLELossless)
    ds.Rows, ds.SOPInstanceUID = 31, generate_uid()
    ds.save_as(Path(series_dir) / "short.dcm")
    return Path(series_dir) / "short.dcm"
