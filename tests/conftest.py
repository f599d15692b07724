"""Shared fixtures. Real RSNA data is read from ../shared/realdata and never copied into the repository."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Torch's idle threads spin-wait: on a 2-core machine one thread per process trains faster than two (measured
# 30 s against 134 s for the engine tests), and subprocesses (torchrun, resume) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("SPINEGRADE_REALDATA", REPO.parent / "shared" / "realdata"))
TWO_STUDIES = REALDATA / "rsna2024_dicom_train_2studies"
FORAMINA = REALDATA / "rsna2024_sagT1_foramina_vbs2004"  # real Sagittal T1 slices with foramen points
SAGT2 = REALDATA / "sudirman_sagT2_discs_yolospine"  # real mid-sagittal T2 slices with disc and stenosis boxes


REAL_STUDIES = (100206310, 1002894806)


def _filter_lines(src: Path, keep: set[str]) -> str:
    """The header and the rows whose first field is in `keep`, byte for byte as the challenge wrote them."""
    lines = src.read_text(encoding="utf-8").splitlines()
    return "\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0] in keep]) + "\n"


def build_real_dataset(realdata: Path, root: Path, link_files: bool = False) -> Path:
    """An RSNA-layout train folder from the real CSVs restricted to the two DICOM studies, images as symlinks.

    `link_files` links each .dcm (in real folders) instead of each study, so a test may break one file.
    """
    import pandas as pd

    from spinegrade.data.io_utils import write_csv_atomic

    keep = {str(s) for s in REAL_STUDIES}
    two = realdata / "rsna2024_dicom_train_2studies"
    root.mkdir(parents=True)
    (root / "train.csv").write_text(_filter_lines(realdata / "rsna2024_labels/train.csv", keep), encoding="utf-8")
    (root / "train_series_descriptions.csv").write_text(
        _filter_lines(realdata / "rsna2024_labels/train_series_descriptions.csv", keep), encoding="utf-8")
    coords = pd.read_csv(two / "DERIVED_coords_these_studies.csv", dtype=str, keep_default_na=False)
    write_csv_atomic(coords.iloc[:, :-2], root / "train_label_coordinates.csv")
    images = root / "train_images"
    for sid in REAL_STUDIES:
        src = two / "train_images" / str(sid)
        if not link_files:
            images.mkdir(exist_ok=True)
            (images / str(sid)).symlink_to(src, target_is_directory=True)
            continue
        for f in src.glob("*/*.dcm"):
            dst = images / str(sid) / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(f)
    return root


def need_realdata(path: Path = REALDATA) -> Path:
    """Return the path, or skip with a clear message (fail instead under CI's SPINEGRADE_REQUIRE_REALDATA)."""
    if not path.exists():
        msg = f"real RSNA data not found at {path} (put ../shared/realdata beside the repository)"
        if os.environ.get("SPINEGRADE_REQUIRE_REALDATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def realdata() -> Path:
    return need_realdata()


@pytest.fixture(scope="session")
def two_studies() -> Path:
    return need_realdata(TWO_STUDIES)


@pytest.fixture(scope="session")
def foramina_set() -> Path:
    return need_realdata(FORAMINA)


@pytest.fixture(scope="session")
def sagt2_set() -> Path:
    return need_realdata(SAGT2)


@pytest.fixture(scope="session")
def real_rsna(tmp_path_factory) -> Path:
    """The two real DICOM studies as an RSNA-layout train folder (CSV rows of just those studies)."""
    return build_real_dataset(need_realdata(), tmp_path_factory.mktemp("real") / "ds")


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory) -> Path:
    """A small synthetic cohort shared by the tests of a session (8 studies)."""
    from spinegrade.data.synth import synthesize_cohort

    out = tmp_path_factory.mktemp("synth") / "cohort"
    synthesize_cohort(out, n_studies=8, seed=1234)
    return out


@pytest.fixture(scope="session")
def tiny_run(synth_cohort, tmp_path_factory) -> Path:
    """A study-pipeline run trained for one epoch on the shared synthetic cohort: every stage present, so
    predict/report/serve run their real code paths (its grades are not meant to be good). Its graders crop
    32 px and its localisers see 48 px, not the defaults."""
    from spinegrade.pipeline.plan import build_plan
    from spinegrade.pipeline.study import train_study_pipeline

    root = tmp_path_factory.mktemp("tiny_run")
    # non-default crop and localiser sizes, so tests see that inference takes them from the run, not the code
    plan = build_plan(str(synth_cohort), cache=str(root / "cache"), folds=4, val_fold=0, prepare_workers=1,
                      epochs=1, device="cpu", crop_px=32, localizer_size=48)
    plan.localizer_loop.batch_size, plan.grader_loop.batch_size = 8, 32
    train_study_pipeline(plan, root / "run", log=lambda *_: None)
    return root / "run"


# Under a name of its own: `import conftest` finds whichever folder's conftest pytest loaded last (tests/serve's,
# say), so test modules import this one's helpers as `from root_conftest import ...`.
sys.modules["root_conftest"] = sys.modules[__name__]
