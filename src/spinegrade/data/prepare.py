"""Decode every series of a dataset once into a cache that training reads fast.

Layout (format 2): `<cache>/<study_id>/<series_id>.npy` holds the pixels as the files store them (n x rows x
cols, their integer type, e.g. uint16: the size of the uncompressed data) and `<series_id>.json` beside it
the geometry, instance numbers, role and why, SOP UIDs, transfer syntax, provenance, the series' intensity
range, and each slice's float transform (MONOCHROME1 inversion, rescale slope and intercept). `Cache` maps the
`.npy` read-only and gives the pixels as `StoredPixels`, float32 on indexing and equal bit for bit to what
`load_study` returns. The JSON is written last and marks the entry complete, so an interrupted run leaves
nothing that looks finished. `<cache>/<study_id>/_study.json` records the source signature of the whole study;
a re-run whose signature matches decodes nothing. A study cached in an older format (1: float32 pixels) is
decoded again, with a message; `Cache` refuses to read one rather than misread it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import DataError, SpinegradeError
from ..files import atomic_path, atomic_write_text
from ..geometry import SeriesGeometry
from ..inputs import series_intensity_range
from ..io.types import Series, SkippedFile, StoredPixels, Study

# 1: float32 pixels (spinegrade up to 0.x of issue 12); 2: stored integers + per-slice transform.
CACHE_FORMAT = 2
_STUDY_MARKER = "_study.json"
# The most decoding processes the automatic setting starts: each holds the study it decodes (up to a few hundred
# MB of pixels), and 8 processes already prepared 116 synthetic studies/s on a 16-core GPU machine (README).
MAX_AUTO_WORKERS = 16


def _stored(s: Series) -> StoredPixels:
    """The series' pixels as stored; a series built without them (float pixels only) is kept as float32 with
    an identity transform, which reads back the same."""
    if s.stored is not None:
        return s.stored
    if isinstance(s.pixels, StoredPixels):
        return s.pixels
    n = s.pixels.shape[0]
    return StoredPixels(np.asarray(s.pixels, dtype=np.float32), [np.nan] * n, [1.0] * n, [0.0] * n)


def _source_signature(study_dir: Path) -> dict:
    """Cheap fingerprint of a study folder (no decoding): file count, total bytes, newest mtime."""
    n = size = 0
    newest = 0.0
    for root, _dirs, files in os.walk(study_dir):
        for f in files:
            st = os.stat(os.path.join(root, f))
            n += 1
            size += st.st_size
            newest = max(newest, st.st_mtime)
    return {"files": n, "bytes": size, "mtime": round(newest, 3)}


def _series_meta(s: Series, source_root: Path, stored: StoredPixels) -> dict:
    root = source_root.resolve()
    # each folder resolved once, not each of its files: its path from the root and "/" ("" for the root itself),
    # or None when it lies outside
    folders: dict[str, str | None] = {}

    def within(full: Path) -> str | None:
        try:
            return str(full.relative_to(root))
        except ValueError:
            return None

    def rel(p: str) -> str:
        if os.path.islink(p):
            return within(Path(p).resolve()) or str(p)
        head, name = os.path.split(p)
        if head not in folders:
            r = within(Path(head).resolve())
            folders[head] = None if r is None else ("" if r == "." else r + "/")
        prefix = folders[head]
        return str(p) if prefix is None else prefix + name

    return {
        "format": CACHE_FORMAT,
        "spinegrade": __version__,
        "study_id": s.study_id,
        "series_id": s.series_id,
        "source_series_id": s.source_series_id or s.series_id,
        "geometry_known": bool(s.geometry_known),
        "role": s.role,
        "role_reason": s.role_reason,
        "description": s.description,
        "geometry": s.geometry.to_dict(),
        "instance_numbers": [int(v) for v in s.instance_numbers],
        "sop_instance_uids": list(s.sop_instance_uids),
        "files": [rel(f) for f in s.files],
        "transfer_syntax": s.transfer_syntax,
        "tags": s.tags,
        "notes": list(s.notes),
        "skipped": [{"path": rel(k.path), "reason": k.reason} for k in s.skipped],
        "dtype": str(stored.values.dtype),
        "shape": [int(v) for v in stored.shape],
        # NaN (not MONOCHROME1) is written as null: JSON has no NaN
        "invert": [None if np.isnan(v) else float(v) for v in stored.invert],
        "slope": [float(v) for v in stored.slope],
        "intercept": [float(v) for v in stored.intercept],
        "intensity": list(s.intensity if s.intensity is not None else series_intensity_range(stored)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_series(s: Series, cache_dir: Path, source_root: Path) -> None:
    """Write one series' stored pixels and sidecar into `<cache_dir>/<study_id>/` (atomically, JSON last)."""
    d = Path(cache_dir) / str(s.study_id)
    d.mkdir(parents=True, exist_ok=True)
    stored = _stored(s)
    with atomic_path(d / f"{s.series_id}.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(stored.values))
    atomic_write_text(d / f"{s.series_id}.json", json.dumps(_series_meta(s, source_root, stored), indent=1))


def _series_from_meta(meta: dict, pixels) -> Series:
    return Series(
        study_id=str(meta["study_id"]), series_id=str(meta["series_id"]), role=meta["role"],
        role_reason=meta["role_reason"], description=meta.get("description", ""),
        geometry=SeriesGeometry.from_dict(meta["geometry"]),
        instance_numbers=np.asarray(meta["instance_numbers"], dtype=np.int64), pixels=pixels,
        files=list(meta.get("files", [])), sop_instance_uids=list(meta.get("sop_instance_uids", [])),
        transfer_syntax=meta.get("transfer_syntax", ""), tags=dict(meta.get("tags", {})),
        skipped=[SkippedFile(k["path"], k["reason"]) for k in meta.get("skipped", [])],
        notes=list(meta.get("notes", [])),
        source_series_id=str(meta.get("source_series_id", meta["series_id"])),
        geometry_known=bool(meta.get("geometry_known", True)),
        stored=pixels if isinstance(pixels, StoredPixels) else None,
        intensity=tuple(meta["intensity"]) if meta.get("intensity") else None,
    )


@dataclass
class Cache:
    """Read access to a prepared cache."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def study_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / _STUDY_MARKER).exists())

    def has_study(self, study_id) -> bool:
        return (self.root / str(study_id) / _STUDY_MARKER).exists()

    def series_ids(self, study_id) -> list[str]:
        d = self.root / str(study_id)
        return sorted(p.stem for p in d.glob("*.json") if p.name != _STUDY_MARKER)

    def meta(self, study_id, series_id) -> dict:
        p = self.root / str(study_id) / f"{series_id}.json"
        try:
            meta = json.loads(p.read_text())
        except FileNotFoundError:
            raise DataError(f"{p}: not in the cache (run `spinegrade prepare` first)") from None
        if meta.get("format") != CACHE_FORMAT:
            raise DataError(f"{p}: cache format {meta.get('format')}, this spinegrade reads format {CACHE_FORMAT}: "
                            "run `spinegrade prepare` again to rebuild it")
        return meta

    def load_series(self, study_id, series_id, mmap: bool = True) -> Series:
        """The cached series. Its pixels are a StoredPixels (float32 on indexing, equal to the reader's) over
        the stored values, memory-mapped read-only unless mmap=False."""
        meta = self.meta(study_id, series_id)
        values = np.load(self.root / str(study_id) / f"{series_id}.npy", mmap_mode="r" if mmap else None)
        if list(values.shape) != meta["shape"] or str(values.dtype) != meta["dtype"]:
            raise DataError(f"{self.root / str(study_id) / series_id}.npy: {values.dtype} {list(values.shape)}, "
                            f"its sidecar says {meta['dtype']} {meta['shape']}: run `spinegrade prepare` again")
        invert = [np.nan if v is None else v for v in meta["invert"]]
        return _series_from_meta(meta, StoredPixels(values, invert, meta["slope"], meta["intercept"]))

    def load_study(self, study_id, mmap: bool = True) -> Study:
        sid = str(study_id)
        marker = json.loads((self.root / sid / _STUDY_MARKER).read_text())
        series = [self.load_series(sid, s, mmap=mmap) for s in self.series_ids(sid)]
        skipped = [SkippedFile(k["path"], k["reason"]) for k in marker.get("skipped", [])]
        return Study(study_id=sid, path=marker.get("source", ""), series=series, skipped=skipped)


# The pool of volume memory of this worker process (`_prepare_in_worker`).
_WORKER_VOLUMES = None


def _prepare_in_worker(study_dir: str, cache_dir: str, source_root: str, descriptions: dict | None) -> dict:
    """`_prepare_one` in a worker process, its volumes from the process's own pool (kept between its studies)."""
    global _WORKER_VOLUMES
    from ..io.dicom import VolumePool

    if _WORKER_VOLUMES is None:
        _WORKER_VOLUMES = VolumePool()
    return _prepare_one(study_dir, cache_dir, source_root, descriptions, _WORKER_VOLUMES)


def _prepare_one(study_dir: str, cache_dir: str, source_root: str, descriptions: dict | None,
                 volumes=None) -> dict:
    """Decode one study into the cache unless its signature is already there. `volumes`: a `VolumePool` the
    study's pixels are read into, released (for the next study) once they are written."""
    if volumes is None:
        from ..io.dicom import VolumePool

        volumes = VolumePool()
    try:
        return _prepare_study(study_dir, cache_dir, source_root, descriptions, volumes)
    finally:
        volumes.release()


def _prepare_study(study_dir: str, cache_dir: str, source_root: str, descriptions: dict | None, volumes) -> dict:
    from ..io.dicom import load_study, volumes_from

    study_dir_p, cache_p = Path(study_dir), Path(cache_dir)
    sid = study_dir_p.name
    sig = _source_signature(study_dir_p)
    marker = cache_p / sid / _STUDY_MARKER
    old_format = None
    if marker.exists():
        try:
            old = json.loads(marker.read_text())
            if old.get("signature") == sig and old.get("format") == CACHE_FORMAT:
                return {"study_id": sid, "decoded": 0, "skipped_existing": len(old.get("series", []))}
            if old.get("format") != CACHE_FORMAT:
                old_format = old.get("format", "unknown")
        except (OSError, ValueError):
            pass  # unreadable marker: decode again
    try:
        with volumes_from(volumes):
            study = load_study(study_dir_p, descriptions=descriptions, stored=True)
    except SpinegradeError as e:
        return {"study_id": sid, "error": str(e)}
    except Exception as e:  # a batch goes on: report the study, never crash the run
        return {"study_id": sid, "error": f"{study_dir_p}: {type(e).__name__}: {e}"}
    if marker.exists():
        # the study is decoded again: its old entries go first (marker first, so nothing looks finished), as
        # a series id may have gone and a series of an older format must not stay beside the new ones
        marker.unlink()
        for p in marker.parent.iterdir():
            if p.suffix in (".npy", ".json"):
                p.unlink()
    for s in study.series:
        write_series(s, cache_p, Path(source_root))
    atomic_write_text(marker, json.dumps({
        "format": CACHE_FORMAT, "study_id": sid, "source": str(study_dir_p), "signature": sig,
        "series": [s.series_id for s in study.series],
        "skipped": [{"path": k.path, "reason": k.reason} for k in study.skipped],
    }, indent=1))
    return {"study_id": sid, "decoded": len(study.series), "skipped_existing": 0, "old_format": old_format}


def _file_count(study_dir: str) -> int:
    """How many files a study folder holds (its folders listed, nothing opened or stat-ed)."""
    return sum(len(files) for _root, _dirs, files in os.walk(study_dir))


def auto_workers() -> int:
    """Decoding processes when none are asked for: one per usable core, at most MAX_AUTO_WORKERS."""
    from ..device import usable_cores

    return max(1, min(usable_cores(), MAX_AUTO_WORKERS))


def prepare_dataset(data: Path, cache: Path, workers: int | None = 1, export_png: Path | None = None,
                    images: str | None = None, study_ids: list | None = None, progress: bool = True,
                    png_task: str = "labelled") -> dict:
    """Decode a dataset (RSNA layout) into `cache`; optionally export PNG slices + index.csv.

    `workers`: decoding processes, each decoding whole studies (None, 0 or less: `auto_workers()`; never more
    than there are studies). Returns counts: decoded (series), skipped_existing (series), failed [{study_id, error}],
    png_rows, and workers (the processes used).
    """
    from ..progress import bar as progress_bar
    from .rsna import RsnaDataset

    ds = RsnaDataset(Path(data), split=_split_from_images(images))
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    ids = [int(s) for s in (study_ids if study_ids is not None else ds.study_ids)]
    jobs = [(str(ds.study_dir(s)), str(cache), str(ds.images_dir), _desc(ds, s)) for s in ids
            if ds.study_dir(s).is_dir()]
    workers = max(1, min(workers if workers and workers > 0 else auto_workers(), len(jobs)))
    if workers > 1:
        # the largest studies first: a worker taking a big study last would keep the others waiting for it
        jobs.sort(key=lambda j: -_file_count(j[0]))
    result = {"decoded": 0, "skipped_existing": 0, "failed": [], "studies": len(jobs), "rebuilt_old_format": [],
              "workers": workers}
    bar = progress_bar(total=len(jobs), desc="prepare", unit="studies", disable=not progress)

    def collect(r: dict) -> None:
        if "error" in r:
            result["failed"].append({"study_id": r["study_id"], "error": r["error"]})
        else:
            result["decoded"] += r["decoded"]
            result["skipped_existing"] += r["skipped_existing"]
            if r.get("old_format") is not None:
                result["rebuilt_old_format"].append(r["study_id"])
        bar.update(1)

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in as_completed([pool.submit(_prepare_in_worker, *j) for j in jobs]):
                collect(fut.result())
    else:
        from ..io.dicom import VolumePool

        volumes = VolumePool()  # this run's: its memory goes when the run ends
        for j in jobs:
            collect(_prepare_one(*j, volumes))
    bar.close()
    result["failed"].sort(key=lambda f: f["study_id"])
    if result["rebuilt_old_format"]:
        print(f"prepare: {len(result['rebuilt_old_format'])} studies in {cache} were cached in an older format "
              f"(float32 pixels); decoded them again into format {CACHE_FORMAT} (stored integers, half the "
              "size)", file=sys.stderr)
    if export_png is not None:
        from .export import export_png as _export

        result["png_rows"] = _export(ds, Cache(cache), Path(export_png), task=png_task)
    return result


def _split_from_images(images: str | None) -> str | None:
    if images is None:
        return None
    name = Path(images).name
    return name[: -len("_images")] if name.endswith("_images") else name


def _desc(ds, study_id) -> dict | None:
    d = ds.descriptions_for(study_id)
    return {str(k): v for k, v in d.items()} if d else None
