"""What `spinegrade inspect` shows: each series of a study folder, its role and why, size, spacing, skipped files.

Headers only (no pixel decoding), so it is quick on a whole study. Patient names and ids are never read
into the output: only study and series ids, which name the folders anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import UID

from .dicom import load_study
from .types import Series, SkippedFile


def inspect_study(path, descriptions=None) -> dict:
    """A JSON-ready summary of a study folder (see `format_inspection` for the table)."""
    study = load_study(path, descriptions=descriptions, load_pixels=False)
    root = Path(study.path)
    return {
        "study_id": study.study_id,
        "path": str(root),
        "n_series": len(study.series),
        "series": [_series_info(s, root) for s in study.series],
        "skipped": [_skipped_info(k, root) for k in study.skipped],
    }


def format_inspection(info: dict) -> str:
    """A readable table of an `inspect_study` result, with reasons, notes and skipped files under each row."""
    lines = [f"study {info['study_id']}: {info['n_series']} series  ({info['path']})"]
    header = ("series", "role", "plane", "slices", "size", "pixel mm", "gap mm", "transfer syntax", "instances")
    rows = []
    for s in info["series"]:
        spacing = s["pixel_spacing"]
        lo, hi = s["instance_range"]
        rows.append((
            s["series_id"], s["role"], s["plane"], str(s["n_slices"]), f"{s['rows']}x{s['cols']}",
            f"{spacing[0]:.3g}x{spacing[1]:.3g}",
            f"{s['slice_spacing']:.3g}" if s["slice_spacing"] is not None else "-",
            ", ".join(t["name"] for t in s["transfer_syntaxes"]) or "-", f"{lo}-{hi}",
        ))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for s, r in zip(info["series"], rows):
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
        lines.append(f"      role: {s['role_reason']}")
        if s["description"]:
            lines.append(f"      description: {s['description']}")
        lines += [f"      note: {n}" for n in s["notes"]]
        lines += [f"      skipped {k['path']}: {k['reason']}" for k in s["skipped"]]
    if info["skipped"]:
        lines.append(f"skipped outside any series ({len(info['skipped'])}):")
        lines += [f"  {k['path']}: {k['reason']}" for k in info["skipped"]]
    return "\n".join(lines)


def _series_info(s: Series, root: Path) -> dict:
    g = s.geometry
    thickness = s.tags.get("SliceThickness")
    return {
        "series_id": s.series_id,
        "source_series_id": s.source_series_id or s.series_id,
        "role": s.role,
        "role_reason": s.role_reason,
        "description": s.description,
        "plane": g.plane if s.geometry_known else "unknown",
        "n_slices": s.n_slices,
        "rows": s.shape[0],
        "cols": s.shape[1],
        "pixel_spacing": [round(v, 6) for v in s.pixel_spacing],
        "slice_spacing": round(g.slice_spacing, 6) if s.geometry_known and s.n_slices > 1 else None,
        "slice_thickness": float(thickness) if thickness is not None else None,
        "orientation": [round(float(v), 6) for v in s.orientation] if s.geometry_known else None,
        "geometry_known": s.geometry_known,
        "transfer_syntaxes": [{"uid": t, "name": UID(t).name} for t in s.transfer_syntax.split(", ") if t],
        "instance_range": [int(np.min(s.instance_numbers)), int(np.max(s.instance_numbers))],
        "notes": list(s.notes),
        "skipped": [_skipped_info(k, root) for k in s.skipped],
    }


def _skipped_info(k: SkippedFile, root: Path) -> dict:
    p = Path(k.path)
    try:
        rel = p.relative_to(root)
    except ValueError:
        rel = p
    return {"path": rel.as_posix(), "reason": k.reason}
