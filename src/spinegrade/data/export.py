"""Export labelled slices from a prepared cache as 256x256 8-bit PNGs + index.csv (the seed project's format).

Two tasks:
- `labelled`: one PNG per labelled instance of the coordinate table, one index row per (condition, level)
  label on it (the index columns of the real `rsna2024_sagT1_foramina_vbs2004/points.csv`);
- `seed-axial`: the seed project's own dataset: the Axial T2 slice at each disc level (from the level's
  axial coordinates, else by projecting the sagittal spinal-canal point), labelled with that level's
  spinal canal grade.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import vocab
from ..geometry import nearest_slice_among
from ..files import atomic_path, write_csv_atomic

PNG_SIZE = 256
INDEX_COLUMNS = ["path", "study_id", "series_id", "instance_number", "condition", "level", "severity"]
TASKS = ("labelled", "seed-axial")


def to_uint8(img: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Window a slice to its own percentile range and scale to 0..255 (robust to outliers)."""
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, [lo_pct, hi_pct])
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    return (np.clip((img - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def save_png(img: np.ndarray, path: Path, size: int = PNG_SIZE) -> None:
    """Write a slice as a size x size 8-bit PNG (aspect not kept, as in the seed's format), atomically."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(to_uint8(img)).resize((size, size), Image.BILINEAR)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def _severity(ds, study_id: int, condition: str, level: str) -> str:
    if ds.labels is None or study_id not in ds.labels.index:
        return ""
    v = ds.labels.at[study_id, vocab.target(condition, level)]
    return "" if pd.isna(v) else vocab.SEVERITIES[int(v)]


def _labelled_rows(ds, cache, out: Path) -> list[dict]:
    rows: list[dict] = []
    coords = ds.coords
    if coords is None or coords.empty:
        return rows
    for study_id, sc in coords.groupby("study_id"):
        if not cache.has_study(study_id):
            continue
        study = cache.load_study(study_id)
        for (series_id, inst), grp in sc.groupby(["series_id", "instance_number"]):
            try:
                s, k = study.locate(series_id, int(inst))
            except KeyError:
                continue
            rel = Path("images") / str(study_id) / f"{series_id}_{int(inst)}.png"
            save_png(np.asarray(s.pixels[k]), out / rel)
            for r in grp.itertuples(index=False):
                rows.append({"path": rel.as_posix(), "study_id": int(study_id), "series_id": int(series_id),
                             "instance_number": int(inst), "condition": r.condition, "level": r.level,
                             "severity": _severity(ds, int(study_id), r.condition, r.level)})
    return rows


def seed_axial_slices(ds, study) -> dict[str, tuple]:
    """For each level with a usable axial slice: (axial series, slice index, source), where source says
    whether it came from the level's axial coordinates or the sagittal->axial projection."""
    coords = ds.coords_for(int(study.study_id)) if ds.coords is not None else pd.DataFrame()
    axials = study.by_role(vocab.AXIAL_T2)
    out: dict[str, tuple] = {}
    if not axials:
        return out
    for level in vocab.LEVELS:
        c = coords[coords["level"] == level] if len(coords) else coords
        located = []
        for r in (c[c["condition"].isin(vocab.FAMILY_CONDITIONS[vocab.SUBARTICULAR])].itertuples(index=False)
                  if len(c) else []):
            try:
                located.append(study.locate(r.series_id, int(r.instance_number)))
            except KeyError:
                continue
        if located:
            s = located[0][0]
            ks = [k for t, k in located if t is s]
            out[level] = (s, int(round(float(np.mean(ks)))), "coordinates")
            continue
        for r in (c[c["condition"] == vocab.CANAL].itertuples(index=False) if len(c) else []):
            loc = study.locate_row(r)
            if loc is None:
                continue
            best = nearest_slice_among(loc.patient, [a.geometry for a in axials])
            if best is not None:
                out[level] = (axials[best[0]], best[1], "projection")
            break
    return out


def _seed_axial_rows(ds, cache, out: Path) -> list[dict]:
    rows: list[dict] = []
    for study_id in ds.study_ids:
        if not cache.has_study(study_id):
            continue
        study = cache.load_study(study_id)
        for level, (s, k, source) in seed_axial_slices(ds, study).items():
            inst = int(s.instance_numbers[k])
            sid = s.source_series_id or s.series_id
            rel = Path("images") / str(study_id) / f"{sid}_{inst}.png"
            if not (out / rel).exists():
                save_png(np.asarray(s.pixels[k]), out / rel)
            rows.append({"path": rel.as_posix(), "study_id": int(study_id), "series_id": int(sid),
                         "instance_number": inst, "condition": vocab.CANAL, "level": level,
                         "severity": _severity(ds, int(study_id), vocab.CANAL, level),
                         "source": source})
    return rows


def export_png(ds, cache, out: Path, task: str = "labelled") -> int:
    """Write PNGs and `out/index.csv` for a task (see module doc); returns the number of index rows."""
    if task not in TASKS:
        raise ValueError(f"unknown export task {task!r}; expected one of {', '.join(TASKS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _labelled_rows(ds, cache, out) if task == "labelled" else _seed_axial_rows(ds, cache, out)
    cols = INDEX_COLUMNS + (["source"] if task == "seed-axial" else [])
    write_csv_atomic(pd.DataFrame(rows, columns=cols), out / "index.csv")
    return len(rows)
