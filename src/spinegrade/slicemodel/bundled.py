"""The models shipped inside the package, found and described without torch (`spinegrade info` lists them).

Each is a folder under `spinegrade/bundled/` holding a trained slice model (`localizer/`, `grader/`, ...), its
`MODEL_CARD.md` and a `bundle.json`: its task, the grades it gives or points it places, its cross-validated
figure, its terms of use, and whether `predict` uses it by default.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError

LOCALIZER = "localizer"
GRADER = "grader"
REFINER = "refiner"  # optional: a second look at each localiser point (refiner.py)
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"

BUNDLE = "bundle.json"
# The two RSNA studies the project shares as DICOM: kept out of every bundled model's training, so that the models
# can be checked on them honestly.
HELD_OUT_DICOM = ("100206310", "1002894806")  # a bundled model's description, read without torch: task, what it grades, figures, terms


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / LOCALIZER).is_dir() or (p / BUNDLE).is_file())


def bundle_info(name: str) -> dict:
    """A bundled model's bundle.json (name, task, grades, places, cv, terms, default), {} where it has none."""
    p = BUNDLED_DIR / name / BUNDLE
    return {"name": name, **json.loads(p.read_text())} if p.is_file() else {}


def default_bundled() -> dict[str, str]:
    """The bundled model `predict` uses for each task when no model is named: task -> name."""
    out: dict[str, str] = {}
    for name in bundled_models():
        info = bundle_info(name)
        if info.get("default"):
            out[info["task"]] = name
    return out


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A run folder, a folder of runs, or a bundled model's name -> its folder; DataError if none."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if (BUNDLED_DIR / str(name_or_path)).is_dir():
        return BUNDLED_DIR / str(name_or_path)
    raise DataError(f"{name_or_path}: not a run folder nor a bundled model (bundled: {', '.join(bundled_models()) or 'none'})")


def is_member(path: Path) -> bool:
    """A trained localiser + grader pair: their checkpoints, or only their exported networks."""
    from ..runtime import has_network

    return has_network(path / LOCALIZER / "best.pt") and has_network(path / GRADER / "best.pt")


def pack_run(run: Path, out: Path, extra: tuple[str, ...] = ("calibration.json", "split.csv"),
             onnx_only: bool = False, int8_graders: bool = False) -> None:
    """Copy a trained run's networks (localiser, grader, its refiner and further graders `grader-<tag>/` where it
    has them) into a bundled model folder (float weights halved, run-local paths
    dropped, each exported to ONNX beside it; with `onnx_only` the ONNX alone is kept, half the size) with its
    `extra` files. A network the run holds only as ONNX (a bundled model's fold, say) is copied as it is. With
    `int8_graders` (ONNX only) the graders' weights are stored as int8 (`export.quantize_weights`: half of
    float16; localiser and refiner, whose points need every pixel, stay in float16). Needs torch (a train
    install)."""
    import shutil

    import torch

    from ..export import export_checkpoint, quantize_weights
    from ..runtime import has_network

    if int8_graders and not onnx_only:
        raise ValueError("int8 graders are stored in ONNX only: pack with onnx_only")
    out.mkdir(parents=True, exist_ok=True)
    nets = [n for n in (LOCALIZER, REFINER, GRADER) if n != REFINER or has_network(run / n / "best.pt")]
    extra_graders = sorted(p.name for p in run.glob(f"{GRADER}-*") if has_network(p / "best.pt"))
    for name in nets + extra_graders:
        (out / name).mkdir(parents=True, exist_ok=True)
        if not (run / name / "best.pt").is_file():
            if not (run / name / "best.onnx").is_file():
                raise DataError(f"{run / name}: no trained network (best.pt or best.onnx)")
            shutil.copy(run / name / "best.onnx", out / name / "best.onnx")
            continue
        ck = torch.load(run / name / "best.pt", map_location="cpu", weights_only=True)
        ck["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
        ck.get("config", {}).pop("slices", None)
        torch.save(ck, out / name / "best.pt")
        export_checkpoint(out / name / "best.pt")
    for name in extra:
        shutil.copy(run / name, out / name)
    for name in extra_graders:  # each further grader's own temperature
        if (run / name / "calibration.json").is_file():
            shutil.copy(run / name / "calibration.json", out / name / "calibration.json")
    if onnx_only:
        for name in nets + extra_graders:
            (out / name / "best.pt").unlink(missing_ok=True)
    if int8_graders:
        for name in [GRADER] + extra_graders:
            quantize_weights(out / name / "best.onnx")


def target_prior(train_csv: Path, exclude) -> dict[str, list[float]]:
    """Weight-optimal constant per target (frequency x metric weight) from the challenge's train.csv, the studies
    `exclude` left out: what a bundled model answers for the targets it does not grade (prior.json)."""
    import pandas as pd

    from .. import vocab
    from ..metric import prior_probs

    df = pd.read_csv(train_csv, dtype={"study_id": str})
    df = df[~df["study_id"].isin(set(exclude))]
    out = {}
    for t in vocab.TARGETS:
        y = df[t].map(lambda s: vocab.parse_severity(s) if isinstance(s, str) and s.strip() else float("nan"))
        out[t] = [float(v) for v in prior_probs(y.to_numpy(), weighted=True)]
    return out
