"""Decide which series is Sagittal T1, Sagittal T2/STIR or Axial T2, and say why.

In order of trust: a series-descriptions table when one is given (the challenge CSV); else the acquisition
plane from ImageOrientationPatient, and for sagittal series the weighting from the acquisition tags
(InversionTime for STIR, EchoTime, RepetitionTime), then words of the SeriesDescription/ProtocolName; then
the other sagittal series of the study (one T1 and one T2 is the usual protocol); last the image contrast.

The real RSNA files carry no EchoTime/RepetitionTime and a SeriesDescription of only "T1" or "T2", so the
words rule decides them; it does not rely on the challenge's wording "Sagittal T2/STIR".
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .. import vocab
from ..errors import DataError
from ..geometry import plane_of
from .types import Series

# Spin-echo weighting thresholds (ms). T1: TE ~10-30, TR ~400-800; T2: TE ~80-120, TR > 2500. TE between
# 40 and 60 (or short TE with long TR: proton density) says neither.
T1_MAX_TE = 40.0
T2_MIN_TE = 60.0
T1_MAX_TR = 1000.0
T2_MIN_TR = 2000.0
PD_MIN_TR = 1800.0
# STIR nulls fat with TI ~ 0.69 x T1(fat): 100-250 ms at 1.5-3 T.
STIR_TI_RANGE = (80.0, 300.0)
# Last resort, for two sagittal series that nothing else separates: on T2 the fluid (CSF, discs) is the
# brightest tissue and small, so the top of the intensity histogram stands far above the bulk of the
# tissue; on T1 the brightest tissue is fat, which is plentiful. Measured on the mid-sagittal slices of the
# two real RSNA studies (p99.5/p90 of foreground): T2 2.50 and 2.23, T1 1.54 and 1.37. Real Sagittal T1
# slices alone range 1.2-2.6 (300 of the RSNA PNGs), so only the comparison of two series of one study is
# used, never an absolute threshold, and only when they differ by this factor.
CONTRAST_MIN_RATIO = 1.2


def assign_roles(series: list[Series], descriptions=None, study_id=None,
                 read_slice: Callable[[str], np.ndarray] | None = None) -> None:
    """Set `role` and `role_reason` on every series of one study (in place).

    `descriptions`: None, a path to a `*_series_descriptions.csv` (study_id, series_id, series_description),
    or a mapping series_id -> description. Series it does not list are inferred from the images.
    `read_slice(path) -> 2D array` reads a slice of a series loaded without pixels (the DICOM reader passes
    its own, so this module does not import it back); without it such a series is not compared by contrast.
    """
    table, source = _description_table(descriptions, study_id)
    for s in series:
        sid = s.source_series_id or s.series_id
        text = table.get(sid) if table is not None else None
        if text is not None:
            try:
                s.role, s.role_reason = vocab.parse_role(text), f"from {source} ({text!r})"
                continue
            except ValueError:
                s.role, s.role_reason = infer_role(s)
                s.role_reason = f"{source} says {text!r}, not a known description; {s.role_reason}"
                continue
        s.role, s.role_reason = infer_role(s)
        if table is not None:
            s.role_reason = f"not in {source}; {s.role_reason}"
    _settle_sagittals(series, read_slice)


def infer_role(s: Series) -> tuple[str, str]:
    """The role of one series from its geometry and tags alone, and the reason in words."""
    if not s.geometry_known:
        return vocab.UNKNOWN_ROLE, "no ImageOrientationPatient/ImagePositionPatient: plane unknown"
    plane = plane_of(s.orientation)
    if plane == "axial":
        te = _num(s.tags, "EchoTime")
        extra = f", EchoTime {te:g} ms" if te is not None else ""
        if te is not None and te < T1_MAX_TE:
            extra += " (short: may be T1-weighted; the only axial role is T2)"
        return vocab.AXIAL_T2, f"axial plane (ImageOrientationPatient){extra}"
    if plane == "coronal":
        return vocab.UNKNOWN_ROLE, "coronal plane: no coronal role in this task"
    role, why = sagittal_weighting(s.tags, s.description)
    if role is None:
        return vocab.UNKNOWN_ROLE, f"sagittal plane; weighting undecided: {why}"
    return role, f"sagittal plane; {why}"


def sagittal_weighting(tags: Mapping, description: str = "") -> tuple[str | None, str]:
    """T1 or T2/STIR for a sagittal series from its acquisition tags, then its description words.

    Returns (role or None, reason). Tags win over words: they are what the scanner did, words are what
    someone typed.
    """
    ti, te, tr = _num(tags, "InversionTime"), _num(tags, "EchoTime"), _num(tags, "RepetitionTime")
    if ti is not None and STIR_TI_RANGE[0] <= ti <= STIR_TI_RANGE[1]:
        return vocab.SAGITTAL_T2, f"InversionTime {ti:g} ms nulls fat (STIR)"
    if te is not None:
        if te > T2_MIN_TE:
            return vocab.SAGITTAL_T2, f"long EchoTime {te:g} ms (T2-weighted)"
        if te < T1_MAX_TE and (tr is None or tr < PD_MIN_TR):
            return vocab.SAGITTAL_T1, f"short EchoTime {te:g} ms" + (f", RepetitionTime {tr:g} ms" if tr else "") \
                + " (T1-weighted)"
    elif tr is not None:
        if tr < T1_MAX_TR:
            return vocab.SAGITTAL_T1, f"short RepetitionTime {tr:g} ms (T1-weighted)"
        if tr > T2_MIN_TR:
            return vocab.SAGITTAL_T2, f"long RepetitionTime {tr:g} ms (T2-weighted)"
    words = " / ".join(w for w in (description, str(tags.get("ProtocolName", ""))) if w.strip())
    role = _role_from_words(words)
    timing = _timing_text(te, tr, ti)
    if role is not None:
        return role, f"description {words!r}" + (f" ({timing} undecided)" if timing else "")
    parts = [timing + " say neither T1 nor T2" if timing else "no EchoTime/RepetitionTime/InversionTime",
             f"description {words!r} names neither" if words else "no description"]
    return None, "; ".join(parts)


def fluid_contrast(pixels: np.ndarray) -> float:
    """How far the brightest tissue stands above the bulk (p99.5 / p90 of foreground); higher on T2."""
    a = np.asarray(pixels, dtype=np.float32)
    fg = a[a > 0.1 * np.percentile(a, 99)]
    if fg.size == 0:
        return float("nan")
    p90 = float(np.percentile(fg, 90))
    return float(np.percentile(fg, 99.5)) / p90 if p90 > 0 else float("nan")


# --- descriptions table ------------------------------------------------------------------------------------
def _description_table(descriptions, study_id) -> tuple[dict[str, str] | None, str]:
    """series_id -> description for this study, and a name for the source (for the reasons)."""
    if descriptions is None:
        return None, ""
    if isinstance(descriptions, Mapping):
        return {str(k).strip(): str(v) for k, v in descriptions.items()}, "the given series descriptions"
    path = Path(descriptions)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise DataError(f"{path}: cannot read the series descriptions ({e.strerror or e})") from None
    need = {"series_id", "series_description"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{path}: not a series descriptions CSV (needs columns study_id, series_id, "
                        "series_description)")
    table = {}
    for r in rows:
        if study_id is not None and "study_id" in r and str(r["study_id"]).strip() != str(study_id):
            continue
        table[str(r["series_id"]).strip()] = str(r["series_description"])
    return table, path.name


# --- words and tags ----------------------------------------------------------------------------------------
_T1_WORD = re.compile(r"(?<![0-9])t1(?![0-9])")
_T2_WORD = re.compile(r"(?<![0-9])t2(?![0-9])")
_STIR_WORD = re.compile(r"stir|tirm")


def _role_from_words(text: str) -> str | None:
    """T1 or T2 from words like 'T1', 'sag_t2_tse', 'STIR', 'TIRM'; None when absent or contradictory."""
    t = text.lower()
    t2 = bool(_T2_WORD.search(t) or _STIR_WORD.search(t))
    t1 = bool(_T1_WORD.search(t))
    if t1 == t2:
        return None
    return vocab.SAGITTAL_T2 if t2 else vocab.SAGITTAL_T1


def _num(tags: Mapping, key: str) -> float | None:
    v = tags.get(key)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def _timing_text(te, tr, ti) -> str:
    parts = [f"{name} {v:g} ms" for name, v in (("EchoTime", te), ("RepetitionTime", tr), ("InversionTime", ti))
             if v is not None]
    return ", ".join(parts)


# --- the study as a whole ----------------------------------------------------------------------------------
def _settle_sagittals(series: list[Series], read_slice=None) -> None:
    """Two sagittal series with one undecided: it takes the complementary role; both undecided: contrast."""
    sag = [s for s in series if s.geometry_known and plane_of(s.orientation) == "sagittal"]
    if len(sag) != 2:
        return
    a, b = sag
    undecided = [s for s in sag if s.role == vocab.UNKNOWN_ROLE]
    pair = {vocab.SAGITTAL_T1: vocab.SAGITTAL_T2, vocab.SAGITTAL_T2: vocab.SAGITTAL_T1}
    if len(undecided) == 1:
        s = undecided[0]
        other = b if s is a else a
        if other.role in pair:
            s.role = pair[other.role]
            s.role_reason += (f"; the other sagittal series ({other.series_id}) is {other.role}, "
                              f"so this one is {s.role}")
    elif len(undecided) == 2:
        ca, cb = _series_contrast(a, read_slice), _series_contrast(b, read_slice)
        if not (np.isfinite(ca) and np.isfinite(cb)) or max(ca, cb) < CONTRAST_MIN_RATIO * min(ca, cb):
            return
        t2, t1 = (a, b) if ca > cb else (b, a)
        c2, c1 = max(ca, cb), min(ca, cb)
        t2.role, t1.role = vocab.SAGITTAL_T2, vocab.SAGITTAL_T1
        t2.role_reason += (f"; image contrast: fluid stands out more ({c2:.2f} vs {c1:.2f} in "
                           f"{t1.series_id}), as on T2")
        t1.role_reason += (f"; image contrast: fluid stands out less ({c1:.2f} vs {c2:.2f} in "
                           f"{t2.series_id}), as on T1")


def _series_contrast(s: Series, read_slice=None) -> float:
    """fluid_contrast of the three middle slices (read from disk when the series was loaded without pixels)."""
    n = s.n_slices
    idx = list(range(max(0, n // 2 - 1), min(n, n // 2 + 2)))
    if s.pixels is not None:
        planes = np.asarray(s.pixels[idx])  # only these slices: cached pixels convert on indexing
    elif read_slice is None:
        return float("nan")
    else:
        try:
            planes = np.stack([read_slice(s.files[i]) for i in idx])
        except (DataError, IndexError, ValueError):
            return float("nan")
    return fluid_contrast(planes)
