"""Command line: parsing only. Each command calls one typed function from the stage module that owns it.

Heavy libraries (torch, MONAI, pydicom, highdicom) are imported inside the handlers so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import SpinegradeError


# --- info ----------------------------------------------------------------------------------------------
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print the task vocabulary and the registered models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)


def _cmd_info(a) -> int:
    from . import vocab

    d = vocab.describe()
    try:
        from .models.registry import list_models

        d["models"] = list_models()
    except ImportError:  # torch missing: the vocabulary is still useful
        d["models"] = []
    if a.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"spinegrade {__version__}")
    print("conditions:")
    for c in d["conditions"]:
        print(f"  {c['key']:<34} {c['name']:<34} family={c['family']:<13} view={c['view']}")
    print("levels:     " + ", ".join(f"{lv['key']} ({lv['name']})" for lv in d["levels"]))
    print("severities: " + ", ".join(f"{s['name']} [{s['key']}, weight {s['weight']:g}]" for s in d["severities"]))
    print("series roles: " + ", ".join(f"{r['key']} ({r['description']})" for r in d["series_roles"]))
    print(f"row id: {d['row_id_format']}   ({len(d['targets'])} targets per study)")
    print("metric terms: " + ", ".join(d["metric"]["terms"]))
    print("models: " + (", ".join(d["models"]) if d["models"] else "(none)"))
    return 0


# --- inspect -------------------------------------------------------------------------------------------
def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="list the series of a study folder: role and why, size, spacing, skipped files")
    p.add_argument("study", type=Path, help="study folder (<study>/<series>/*.dcm or a plain DICOM folder)")
    p.add_argument("--descriptions", type=Path, default=None,
                   help="a *_series_descriptions.csv to take the series roles from")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(a) -> int:
    from .io.inspect import inspect_study, format_inspection

    info = inspect_study(a.study, descriptions=a.descriptions)
    print(json.dumps(info, indent=2) if a.json else format_inspection(info))
    return 0


# --- synth ---------------------------------------------------------------------------------------------
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic cohort in the RSNA 2024 layout")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--studies", type=int, default=20, help="number of studies")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort)")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(a) -> int:
    from .data.synth import synthesize_cohort

    summary = synthesize_cohort(a.out, n_studies=a.studies, seed=a.seed, workers=a.workers)
    print(f"wrote {summary['n_studies']} studies ({summary['n_files']} DICOM files) to {a.out}")
    return 0


# --- prepare -------------------------------------------------------------------------------------------
def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="decode every series of a dataset once into a fast cache")
    p.add_argument("--data", type=Path, required=True, help="dataset root in the RSNA layout")
    p.add_argument("--cache", type=Path, required=True, help="cache folder to write")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument("--export-png", type=Path, default=None,
                   help="also write one 256x256 PNG per labelled instance + index.csv here")
    p.add_argument("--images", default=None, help="images folder name (default: train_images, else test_images)")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(a) -> int:
    from .data.prepare import prepare_dataset

    r = prepare_dataset(a.data, a.cache, workers=a.workers, export_png=a.export_png, images=a.images)
    print(f"prepared {r['decoded']} series, {r['skipped_existing']} already cached, "
          f"{len(r['failed'])} failed -> {a.cache}")
    for f in r["failed"]:
        print(f"  skipped study {f['study_id']}: {f['error']}", file=sys.stderr)
    if a.export_png:
        print(f"exported {r.get('png_rows', 0)} PNG rows -> {a.export_png / 'index.csv'}")
    return 0


# --- main ----------------------------------------------------------------------------------------------
_ADDERS = [_add_info, _add_inspect, _add_synth, _add_prepare]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spinegrade",
        description="Grade degenerative lumbar spine narrowing on MRI (RSNA 2024 format). "
                    "Research use only, not for diagnosis.",
    )
    p.add_argument("--version", action="version", version=f"spinegrade {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    try:
        return int(a.func(a) or 0)
    except SpinegradeError as e:
        print(f"spinegrade {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spinegrade {a.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
